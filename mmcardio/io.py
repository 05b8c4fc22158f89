"""Atomic writes: a crash or a bad input never leaves a half-written file or folder behind.

Files are written beside their place and renamed over it. A folder that already exists is
swapped with its replacement in one step (Linux `renameat2(RENAME_EXCHANGE)`); where the
system cannot swap, the old folder is moved aside first, and a kill between the two renames
is repaired by the next write of that path. Temporaries of dead processes are removed then.
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
        if path.is_dir() and not path.is_symlink():
            _replace_folder(tmp, path, work / (path.name + ".old"))
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
        shutil.rmtree(work, ignore_errors=True)


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
