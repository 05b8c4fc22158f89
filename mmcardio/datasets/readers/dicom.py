"""DICOM files: which record a file holds, reading it safely, and decoding its pixels.

Series of CT/MR images become a `Volume` in `dicom_series`; DICOM's LPS patient axes are
converted to RAS+ with `LPS_TO_RAS`, by readers and writers alike.
"""
from __future__ import annotations

import logging
import mmap
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from mmcardio.datasets.readers.limits import check_claim, require_file
from mmcardio.errors import ReaderError
from mmcardio.modality import Modality

__all__ = ["DICOM_READ_ERRORS", "LPS_TO_RAS", "dcmread_bounded", "decode_pixels", "dicom_float", "dicom_int",
           "dicom_kind", "read_dicom_file"]

log = logging.getLogger(__name__)

#: Flips DICOM's LPS patient axes to nibabel's RAS+ (negate x and y).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

WAVEFORM_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.9."
ULTRASOUND_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.3",    # Ultrasound Multi-frame Image Storage (retired)
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.6",    # Ultrasound Image Storage (retired)
}
VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",    # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",    # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
}
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: What pydicom raises on corrupt, truncated or nonsensical files and values (an IS of "inf" is
#: an OverflowError, an undecodable text a UnicodeDecodeError, a ValueError subclass).
DICOM_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, NotImplementedError,
                     OverflowError, struct.error, BytesLengthException)
#: DICOM Modality -> our modality, and the units a rescaled value has.
VOLUME_MODALITIES = {"CT": (Modality.CT, "HU"), "MR": (Modality.CMR, "a.u.")}


def dcmread_bounded(path: Path, **kwargs) -> Dataset:
    """`pydicom.dcmread` over a read-only memory map of the file. pydicom reads an element by
    asking for its stated length, and a file object allocates that length before reading
    (a corrupt length of 0xFFFFFFF0 allocated 4 GB for a 40 kB CT slice); a map hands back
    only the bytes that exist, and pages in only those read. kwargs: dcmread's."""
    with open(path, "rb") as fh:
        if not fh.seek(0, 2):
            raise ReaderError("empty file (0 bytes)", path)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            ds = pydicom.dcmread(mapped, **kwargs)
            ds.filename = str(path)  # as dcmread(path) would set it
            return ds


def read_dicom_file(path: str | Path, *, header_only: bool = False, check_values: bool = True) -> Dataset:
    """Read one DICOM file; any failure (not DICOM, truncated, corrupt) is a `ReaderError`.

    check_values: convert every value now (see below). A series reader that has checked a
    file's header already reads its pixels with False: converting each of hundreds of slice
    headers twice took a quarter of the time of reading a CT series."""
    path = Path(path)
    require_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = dcmread_bounded(path, stop_before_pixels=header_only)
            # pydicom converts values on first access: convert them all now, so that a corrupt
            # value fails here with the file's name rather than later in a caller.
            if check_values:
                list(ds.iterall())
        except InvalidDicomError as err:
            raise ReaderError(f"not a DICOM file ({err})", path) from err
        except DICOM_READ_ERRORS as err:
            raise ReaderError(f"corrupt or truncated DICOM file ({type(err).__name__}: {err})", path) from err
    messages = [str(w.message) for w in caught]
    truncated = [message for message in messages if "end of file" in message.lower()]
    if truncated:
        raise ReaderError(f"truncated DICOM file ({truncated[0]})", path)
    for message in messages:  # pydicom's notes on non-conformant values: useful when debugging only
        log.debug("%s: %s", path, message)
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if not isinstance(syntax, str) or not syntax.strip():  # absent, empty, or several values
        raise ReaderError(f"DICOM file meta has no TransferSyntaxUID (0002,0010) (found {syntax!r}): truncated, "
                          "corrupt or not Part 10", path, "TransferSyntaxUID")
    if "SOPClassUID" not in ds:
        raise ReaderError("DICOM dataset has no SOPClassUID (0008,0016): truncated or incomplete header",
                          path, "SOPClassUID")
    return ds


def dicom_kind(path: str | Path) -> str:
    """"ecg", "video" or "volume" for a DICOM file, from its header alone.

    Waveform SOP classes (or a WaveformSequence) are ECGs; ultrasound images (or any US
    multi-frame) are echo cines; CT/MR images are volumes. Anything else is a `ReaderError`.
    """
    ds = read_dicom_file(path, header_only=True)
    sop = str(ds.SOPClassUID)
    modality = str(ds.get("Modality", "")).upper()
    if sop.startswith(WAVEFORM_SOP_PREFIX) or "WaveformSequence" in ds:
        return "ecg"
    if sop in ULTRASOUND_SOP_CLASSES or (modality == "US" and dicom_int(ds.get("NumberOfFrames"), 1) > 1):
        return "video"
    if sop in VOLUME_SOP_CLASSES or modality in VOLUME_MODALITIES:
        return "volume"
    raise ReaderError(
        f"DICOM {UID(sop).name} (SOP class {sop}, modality {modality or 'none'}) is not an ECG "
        "waveform, an ultrasound cine or a CT/MR image", path, "SOPClassUID")


def decode_pixels(ds: Dataset, path: str | Path) -> tuple[np.ndarray, str]:
    """All frames as stored, and the photometric interpretation of the returned values.

    Colour is left as decoded (the codec may already have turned YBR into RGB; the returned
    interpretation says which), so callers convert with pydicom's own colour functions.
    """
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        raise ReaderError("no Pixel Data (7FE0,0010): not an image, or the file is truncated", path, "PixelData")
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise ReaderError(f"pydicom cannot decode pixel data in transfer syntax {syntax.name} ({syntax})",
                          path, "TransferSyntaxUID") from err
    if not decoder.is_available:
        raise ReaderError(f"decoding {syntax.name} needs a plugin that is not installed: "
                          f"{'; '.join(decoder.missing_dependencies)}", path, "TransferSyntaxUID")
    _check_pixel_claim(ds, path)
    try:
        array, meta = decoder.as_array(ds, raw=True)
    except (ValueError, AttributeError, KeyError, TypeError, RuntimeError, OSError, StopIteration) as err:
        raise ReaderError(f"pixel data cannot be decoded, the file may be truncated or corrupt "
                          f"({type(err).__name__}: {err})", path, "PixelData") from err
    return array, str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))


def _check_pixel_claim(ds: Dataset, path: str | Path) -> None:
    """Refuse frames x rows x columns that the pixel data cannot hold, before decoding them."""
    frames, rows, columns = (dicom_int(ds.get(k), 1) for k in ("NumberOfFrames", "Rows", "Columns"))
    samples, bits = dicom_int(ds.get("SamplesPerPixel"), 1), dicom_int(ds.get("BitsAllocated"), 8)
    pixels = frames * rows * columns * samples
    keyword = next(k for k in PIXEL_KEYWORDS if k in ds)
    # native pixel data holds every bit (compressed, encapsulated data has no such bound);
    # compared in decoded bytes, as 1-bit pixels decode to a byte each
    encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    stored = None if encapsulated else len(ds[keyword].value or b"")
    check_claim(path, "NumberOfFrames", pixels * max(bits, 8) // 8,
                None if stored is None else stored * 8 // max(bits, 1) * max(bits, 8) // 8,
                f"{frames} frames of {rows}x{columns}x{samples} at {bits} bits")
    if encapsulated:
        _check_encapsulated_claim(ds[keyword].value or b"", frames, rows, columns, path)


ITEM, SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)
#: JPEG start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC) and JPEG-LS's SOF55.
JPEG_SOF_MARKERS = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}


def _check_encapsulated_claim(data: bytes, frames: int, rows: int, columns: int, path: str | Path) -> None:
    """Compressed pixel data bounds no size, but it has structure: every frame takes at least
    one fragment (PS3.5 A.4), and a JPEG, JPEG-LS or JPEG 2000 frame states its own size.
    Checked before decoding: the decoder allocates every claimed frame before it finds out
    (a cine claiming 65535 x 160 pixels per frame allocated 0.9 GB)."""
    fragments, first = _fragments(data, path)
    if frames > fragments:
        raise ReaderError(f"NumberOfFrames is {frames} but the compressed pixel data holds {fragments} "
                          "fragments, and each frame takes at least one: a truncated file or a corrupt header",
                          path, "NumberOfFrames")
    shape = codestream_shape(first)
    if shape is not None and shape != (rows, columns):
        raise ReaderError(f"Rows x Columns is {rows}x{columns} but the compressed frame is {shape[0]}x{shape[1]}",
                          path, "Rows")


def _fragments(data: bytes, path: str | Path) -> tuple[int, bytes]:
    """The number of fragments after the Basic Offset Table, and the first one's leading bytes."""
    position, count, first = 0, -1, b""  # the first item is the offset table, not a fragment
    while position + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, position)
        if (group, element) == SEQUENCE_END:
            break
        if (group, element) != ITEM or length == 0xFFFFFFFF:
            raise ReaderError(f"encapsulated pixel data is malformed: expected an item at byte {position}",
                              path, "PixelData")
        if count == 0:
            first = data[position + 8:position + 8 + min(length, 2**16)]
        count, position = count + 1, position + 8 + length
    return max(count, 0), first


def codestream_shape(head: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG / JPEG-LS start-of-frame or a JPEG 2000 SIZ marker states; None
    when `head` holds neither (RLE, or a height left to a later DNL marker)."""
    siz = head.find(b"\xff\x4f\xff\x51")  # JPEG 2000: SOC then SIZ, also inside a JP2 box
    if siz >= 0 and len(head) >= siz + 28:
        width, height, x0, y0 = struct.unpack_from(">IIII", head, siz + 8)
        return height - y0, width - x0
    if not head.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 9 <= len(head):
        if head[position] != 0xFF:
            return None
        marker = head[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in JPEG_SOF_MARKERS:
            height, width = struct.unpack_from(">HH", head, position + 5)
            return (height, width) if height else None
        position += 2 + struct.unpack_from(">H", head, position + 2)[0]
    return None


def dicom_float(value) -> float | None:
    """A DS/IS value as a float; None when absent or not a number."""
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def dicom_int(value, default):
    """An IS value as an int; `default` when absent or not a whole number."""
    try:
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return default
