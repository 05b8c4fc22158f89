"""Atomic writes: a crash or a bad input never leaves a half-written file or folder behind.

Files are written beside their place and renamed over it. A folder that already exists is
swapped with its replacement in one step (Linux `renameat2(RENAME_EXCHANGE)`); where the
system cannot swap, the old folder is moved aside first, and a kill between the two renames
is repaired by the next write of that path. Temporaries of dead processes are removed then.

A completed write is durable: what was written is flushed to disk (`fsync_tree`) before the
rename, and the parent folder after it, so a power cut cannot leave a renamed but empty file.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_FSYNC_FILE_FLAGS = os.O_RDWR if os.name == "nt" else os.O_RDONLY  # Windows flushes writable handles only


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    Works for files and folders (the temporary path does not exist yet; create what you need).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temporaries(path)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", dir=path.parent))
    tmp = work / path.name
    try:
        yield tmp
        fsync_tree(tmp)
        if path.is_dir() and not path.is_symlink():
            _replace_folder(tmp, path, work / (path.name + ".old"))
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fsync_tree(path: Path) -> None:
    """Flush a written file to disk, or every file of a written folder and its folders
    (symbolic links are left alone: what they point to was not written here)."""
    if not path.is_dir() or path.is_symlink():
        _fsync(path, _FSYNC_FILE_FLAGS)
        return
    for root, _, files in os.walk(path):
        for name in files:
            if not os.path.islink(file := os.path.join(root, name)):
                _fsync(file, _FSYNC_FILE_FLAGS)
        fsync_dir(root)


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk; Windows cannot open
    a folder, and its renames are journaled by NTFS."""
    if os.name != "nt":
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: str | Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_folder(new: Path, path: Path, aside: Path) -> None:
    """Put folder `new` at `path` (which exists): one atomic swap, or two renames."""
    if _exchange(new, path):
        return
    os.replace(path, aside)  # from here until the next line, `path` is missing: see below
    os.replace(new, path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    rename = getattr(_libc(), "renameat2", None)
    if rename is None:
        return False
    if rename(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # file system or kernel without it
        return False
    raise OSError(code, os.strerror(code), str(b))


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _clean_stale_temporaries(path: Path) -> None:
    """Remove `path`'s temporaries left by dead processes; finish a folder swap that a kill
    cut between its two renames (the new folder was complete, the old one set aside)."""
    for work in path.parent.glob(f".{path.name}.*"):
        pid = work.name.removeprefix(f".{path.name}.").split(".", 1)[0]
        if not work.is_dir() or not pid.isdigit() or _alive(int(pid)):
            continue
        if not path.exists() and (work / (path.name + ".old")).exists() and (work / path.name).exists():
            os.replace(work / path.name, path)
            fsync_dir(path.parent)
        shutil.rmtree(work, ignore_errors=True)


def remove_stale_temporaries(folder: str | Path) -> None:
    """`_clean_stale_temporaries` for every path of `folder`: for a folder of many files, where
    a kill after a rename left the temporary of a file that will not be written again."""
    folder = Path(folder)
    for work in folder.glob(".*.*.*") if folder.is_dir() else []:
        parts = work.name[1:].rsplit(".", 2)  # NAME.PID.RANDOM (mkdtemp's suffix has no dot)
        if len(parts) == 3 and parts[1].isdigit():
            _clean_stale_temporaries(folder / parts[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
