"""What a file's header claims, checked before a reader allocates it; and that it is a file.

A 368-byte NIfTI may claim 1500x1000x1000 voxels and a WFDB header 10^12 samples: decoding
first would allocate gigabytes (or die in a MemoryError) before finding out. Readers call
`check_claim` with the bytes the header claims and the bytes the file can hold, and refuse
what the file cannot back or what is over the decoded-size limit.
"""
from __future__ import annotations

import os
from pathlib import Path

from mmcardio.errors import ReaderError

#: Environment variable that sets the decoded-size limit in bytes (default 4 GiB: a 1000-frame
#: 1024x768 RGB cine is 2.4 GB; a 512x512x600 CT 0.6 GB).
MAX_DECODED_BYTES_ENV = "MMCARDIO_MAX_DECODED_BYTES"
DEFAULT_MAX_DECODED_BYTES = 4 * 2**30
#: The most DEFLATE (gzip, zlib) can compress: about 1032 to 1, so a .nii.gz of n bytes never
#: holds more than 1032 n bytes of voxels.
DEFLATE_MAX_RATIO = 1032


def exists(path: Path) -> bool:
    """`path.exists()`, with a name the system refuses to look up (longer than NAME_MAX, as a
    manifest cell can hold) a ReaderError rather than an OSError."""
    try:
        return path.exists()
    except OSError as err:
        raise ReaderError(f"cannot look up this path ({err.strerror})", str(path)[:300] + "...") from None


def require_file(path: Path) -> None:
    """Refuse a missing path, and anything but a regular file: reading a device (/dev/zero)
    or a pipe never ends."""
    if not exists(path):
        raise ReaderError("file does not exist", path)
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "a device, pipe or socket"
        raise ReaderError(f"is {kind}, not a regular file", path)


def max_decoded_bytes() -> int:
    """The decoded-size limit in bytes (`MMCARDIO_MAX_DECODED_BYTES`, else 4 GiB)."""
    value = os.environ.get(MAX_DECODED_BYTES_ENV)
    if value is None:
        return DEFAULT_MAX_DECODED_BYTES
    try:
        limit = int(float(value))
    except ValueError:
        raise ReaderError(f"expected a number of bytes, got {value!r}", field=MAX_DECODED_BYTES_ENV) from None
    if limit <= 0:
        raise ReaderError(f"expected a positive number of bytes, got {value!r}", field=MAX_DECODED_BYTES_ENV)
    return limit


def check_claim(path: str | Path, field: str, claimed_bytes: int, available_bytes: int | None,
                what: str) -> None:
    """Refuse a header whose data (`claimed_bytes`, decoded) is more than the file can hold
    (`available_bytes`; None when the format's compression leaves no bound) or the limit.

    what: the claim in words for the message, e.g. "100000 frames of 240x320 RGB".
    """
    if claimed_bytes < 0:
        raise ReaderError(f"header claims a negative size ({what})", path, field)
    if available_bytes is not None and claimed_bytes > available_bytes:
        raise ReaderError(f"header claims {what} ({_size(claimed_bytes)}) but the data holds at most "
                          f"{_size(available_bytes)}: a truncated file or a corrupt header", path, field)
    limit = max_decoded_bytes()
    if claimed_bytes > limit:
        raise ReaderError(f"header claims {what} ({_size(claimed_bytes)}), over the decoded-size limit "
                          f"of {_size(limit)}; raise {MAX_DECODED_BYTES_ENV} to read it", path, field)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:,} bytes"
