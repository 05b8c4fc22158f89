"""MetaImage (.mhd header + .raw/.zraw data, or one .mha file) -> array and spacing.

Written by hand because no installed library reads MetaImage: SimpleITK and ITK, which do,
are hundreds of megabytes for a format whose header is a dozen "Key = value" lines. Only
what image data needs is read: ObjectType, NDims, DimSize, ElementSpacing, ElementType,
ElementNumberOfChannels, ElementDataFile (a file, or LOCAL for data after the header),
HeaderSize, CompressedData (zlib) and the byte order (ElementByteOrderMSB or its alias
BinaryDataByteOrderMSB). The array comes back in C order with the axes reversed, [..., y, x]
(as SimpleITK's GetArrayFromImage gives it): DimSize lists x first and x varies fastest.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmcardio.datasets.readers.limits import DEFLATE_MAX_RATIO, check_claim, require_file
from mmcardio.errors import ReaderError

__all__ = ["MetaImage", "read_metaimage"]

ELEMENT_TYPES = {
    "MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4",
    "MET_INT": "i4", "MET_ULONG_LONG": "u8", "MET_LONG_LONG": "i8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
#: A header is a few hundred bytes; reading more than this as text means it is not a header.
MAX_HEADER_BYTES = 64 * 1024


@dataclass
class MetaImage:
    """array: [..., y, x] (DimSize reversed); spacing: ElementSpacing in DimSize's order (x first)."""

    array: np.ndarray
    spacing: tuple[float, ...]


def read_metaimage(path: str | Path) -> MetaImage:
    """Read a MetaImage file; errors name the file and the header key."""
    path = Path(path)
    require_file(path)
    header, header_bytes = _header(path)
    shape = _numbers(header, "DimSize", path)
    ndims = _numbers(header, "NDims", path)[0]
    if len(shape) != ndims or min(shape) < 1:
        raise ReaderError(f"expected {ndims} positive sizes (NDims), got {shape}", path, "DimSize")
    spacing = tuple(_numbers(header, "ElementSpacing", path, float)) if "ElementSpacing" in header else (1.0,) * ndims
    if len(spacing) != ndims:
        raise ReaderError(f"expected {ndims} spacings (NDims), got {spacing}", path, "ElementSpacing")
    if header.get("ElementNumberOfChannels", "1").strip() != "1":
        raise ReaderError("only single-channel images are read", path, "ElementNumberOfChannels")
    dtype = _dtype(header, path)
    data = _data(path, header, header_bytes, math.prod(shape) * dtype.itemsize)
    array = np.frombuffer(data, dtype=dtype).reshape(shape[::-1])
    return MetaImage(array=array.astype(dtype.newbyteorder("=")), spacing=spacing)  # a writable copy


def _header(path: Path) -> tuple[dict[str, str], int]:
    """The "Key = value" lines up to ElementDataFile (the last key), and the bytes they take."""
    with open(path, "rb") as fh:
        head = fh.read(MAX_HEADER_BYTES)
    header: dict[str, str] = {}
    consumed = 0
    for raw in head.splitlines(keepends=True):
        consumed += len(raw)
        if not raw.strip():
            continue
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            raise ReaderError(f"not a MetaImage header line: {raw[:60]!r}", path)
        header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            return header, consumed
    raise ReaderError("no ElementDataFile line: not a MetaImage header, or truncated", path, "ElementDataFile")


def _numbers(header: dict[str, str], key: str, path: Path, kind: type = int) -> list:
    try:
        return [kind(v) for v in header[key].split()]
    except KeyError:
        raise ReaderError("missing from the header", path, key) from None
    except ValueError:
        raise ReaderError(f"expected {kind.__name__} numbers, got {header[key]!r}", path, key) from None


def _dtype(header: dict[str, str], path: Path) -> np.dtype:
    kind = header.get("ElementType")
    if kind not in ELEMENT_TYPES:
        raise ReaderError(f"expected one of {sorted(ELEMENT_TYPES)}, got {kind!r}", path, "ElementType")
    msb = header.get("ElementByteOrderMSB", header.get("BinaryDataByteOrderMSB", "False"))
    return np.dtype((">" if msb.lower() == "true" else "<") + ELEMENT_TYPES[kind])


def _data(path: Path, header: dict[str, str], header_bytes: int, claimed: int) -> bytes:
    """The image bytes: from the data file (or after the header when LOCAL), inflated if
    CompressedData; the claim is checked against what the file can hold before reading."""
    name = header["ElementDataFile"]
    if name.upper() == "LIST" or "%" in name:
        raise ReaderError(f"image slices in several files ({name!r}) are not read", path, "ElementDataFile")
    source, offset = (path, header_bytes) if name.upper() == "LOCAL" else (path.parent / name, 0)
    if not source.is_file():
        raise ReaderError(f"the data file {source} does not exist", path, "ElementDataFile")
    size = source.stat().st_size
    skip = _numbers(header, "HeaderSize", path)[0] if "HeaderSize" in header else 0
    offset = size - claimed if skip == -1 else offset + skip  # -1: the data are the file's last bytes
    stored = size - offset
    compressed = header.get("CompressedData", "False").lower() == "true"
    if offset < 0:
        raise ReaderError(f"the data file holds {size} bytes, the header claims {claimed}", source, "DimSize")
    check_claim(path, "DimSize", claimed, stored * DEFLATE_MAX_RATIO if compressed else stored,
                f"{header['DimSize']} elements of {header['ElementType']}")
    with open(source, "rb") as fh:
        fh.seek(offset)
        data = fh.read(stored)
    if compressed:
        try:
            data = zlib.decompressobj().decompress(data, claimed)  # no more than claimed: a bomb stops here
        except zlib.error as err:
            raise ReaderError(f"compressed data do not inflate ({err})", source, "CompressedData") from None
    if len(data) < claimed:
        raise ReaderError(f"{len(data)} bytes of data, the header claims {claimed}: truncated", source, "DimSize")
    return data[:claimed]
