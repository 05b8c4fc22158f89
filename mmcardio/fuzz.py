"""Mutation fuzzing of every reader and of manifest validation: bad input must give a typed
record or an `MMCardioError` with a message, in bounded time and memory.

Seeds are real files: those the package's own writers produce (WFDB, DICOM ECG / ultrasound /
CT series, MUSE, CardioSoft and HL7 aECG XML, NumPy and CSV ECGs, NIfTI, MP4, AVI, CSV and
JSONL manifests) and those pydicom ships (a 12-lead ECG waveform, a JPEG ultrasound cine, a CT
and an MR slice). `mutate` applies one to three mutations drawn from a `random.Random`: byte
flips, truncation, chunk insertion / deletion / duplication, and mutations that know the
format (a DICOM element's value or length, a NIfTI header field, an MP4 box or AVI chunk
integer, an XML element's text or attribute, an entity declaration, a number in a text
header, a manifest cell). The same code feeds the bounded hypothesis test
(`st.randoms(use_true_random=False)`, so failures shrink) and the long run (`scripts/fuzz.py`,
a seeded `random.Random` per input, so input i of seed s is rebuilt exactly from (s, i)).

`run_reader` reads one input with one reader and classifies the outcome (`OUTCOMES`).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import random
import re
import struct
import time
import traceback
import tracemalloc
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmcardio.errors import MMCardioError

__all__ = ["FORMATS", "OUTCOMES", "READERS", "Outcome", "Seed", "build_seeds", "input_rng", "materialize",
           "mutate", "run_reader"]

#: How a read ends. Only the first two are acceptable.
OUTCOMES = ("ok", "mmcardio_error", "escaped", "timeout", "memory")
#: A read that allocates more than this (tracemalloc peak) is a blow-up, whatever it returns.
DEFAULT_MEMORY_LIMIT_BYTES = 512 * 2**20


# --- seeds ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seed:
    """A real input: its files (name -> bytes), the path the readers open ("." for the
    folder), the readers that take it and the kind of mutations that understand it."""

    name: str
    kind: str
    files: dict[str, bytes]
    entry: str
    readers: tuple[str, ...]


def build_seeds(scratch: Path) -> dict[str, Seed]:
    """Every seed, by name, written through `scratch` (a folder the caller owns)."""
    scratch.mkdir(parents=True, exist_ok=True)
    seeds = [*_ecg_seeds(scratch), *_dicom_seeds(scratch), *_image_seeds(scratch), *_manifest_seeds(scratch)]
    return {seed.name: seed for seed in seeds}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _small_ecg(seconds: float = 2.0, fs: float = 250.0):
    from mmcardio.records import ECG, STANDARD_LEADS

    t = np.arange(int(seconds * fs)) / fs
    signal = np.stack([np.sin(2 * np.pi * (1.0 + i / 7) * t) * (0.5 + i / 20) for i in range(12)])
    return ECG(signal=signal.astype(np.float32), fs=fs, lead_names=list(STANDARD_LEADS))


ECG_READERS = ("read_ecg", "read", "read_ecg_window")


def _ecg_seeds(scratch: Path) -> list[Seed]:
    from pydicom import examples

    from mmcardio.datasets.writers.ecg import write_ecg

    ecg, seeds = _small_ecg(), []
    for fmt, name in (("muse", "muse.xml"), ("cardiosoft", "cardiosoft.xml"), ("aecg", "aecg.xml")):
        path = write_ecg(ecg, scratch / fmt / name, format=fmt)
        seeds.append(Seed(fmt, "xml", {name: path.read_bytes()}, name, ECG_READERS))
    write_ecg(ecg, scratch / "wfdb" / "rec.hea")
    seeds.append(Seed("wfdb", "wfdb", _files(scratch / "wfdb"), "rec.hea", ECG_READERS))
    path = write_ecg(ecg, scratch / "dicom-ecg" / "ecg.dcm")
    seeds.append(Seed("dicom-ecg", "dicom", {"ecg.dcm": path.read_bytes()}, "ecg.dcm", ECG_READERS))
    waveform = examples.get_path("waveform").read_bytes()
    seeds.append(Seed("dicom-ecg-pydicom", "dicom", {"waveform.dcm": waveform}, "waveform.dcm", ECG_READERS))
    for fmt in ("npy", "csv"):
        path = write_ecg(ecg, scratch / fmt / f"ecg.{fmt}")
        seeds.append(Seed(f"ecg-{fmt}", "text" if fmt == "csv" else "bytes", {path.name: path.read_bytes()},
                          path.name, ("read_ecg_fs250", "read_ecg_window_fs250")))
    return seeds


def _dicom_seeds(scratch: Path) -> list[Seed]:
    from pydicom import examples

    from mmcardio.datasets.writers.dicom import write_dicom_series, write_dicom_video
    from mmcardio.records import Video, Volume

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 16, 24, 3), dtype=np.uint8)
    cine = write_dicom_video(Video(frames=frames, fps=30.0, pixel_spacing_mm=(0.3, 0.3)), scratch / "us.dcm")
    volume = Volume(array=rng.normal(0, 100, (3, 8, 8)).round(), spacing_mm=(2.0, 1.0, 1.0),
                    affine=np.diag([2.0, 1.0, 1.0, 1.0]), units="HU")
    series = write_dicom_series(volume, scratch / "series", modality="CT")
    video_readers, volume_readers = ("read_video", "read"), ("read_volume", "read")
    return [
        Seed("dicom-us", "dicom", {"us.dcm": cine.read_bytes()}, "us.dcm", video_readers),
        Seed("dicom-us-pydicom", "dicom", {"us.dcm": examples.get_path("ybr_color").read_bytes()}, "us.dcm",
             video_readers),
        Seed("dicom-ct-pydicom", "dicom", {"ct.dcm": examples.get_path("ct").read_bytes()}, "ct.dcm", volume_readers),
        Seed("dicom-mr-pydicom", "dicom", {"mr.dcm": examples.get_path("mr").read_bytes()}, "mr.dcm", volume_readers),
        Seed("dicom-series", "dicom", _files(series), ".", volume_readers),
    ]


def _image_seeds(scratch: Path) -> list[Seed]:
    from mmcardio.datasets.writers.nifti import write_nifti
    from mmcardio.datasets.writers.video import write_video
    from mmcardio.records import Video, Volume

    rng = np.random.default_rng(1)
    volume = Volume(array=rng.normal(0, 100, (4, 8, 8)).astype(np.float32), spacing_mm=(2.0, 1.0, 1.0),
                    affine=np.diag([2.0, 1.0, 1.0, 1.0]), units="HU", modality="ct")
    cine = Volume(array=rng.integers(0, 255, (3, 1, 16, 16)).astype(np.uint8), spacing_mm=(1.0, 0.5, 0.5),
                  affine=np.diag([1.0, 0.5, 0.5, 1.0]), frame_times_ms=[0.0, 40.0, 80.0], units="a.u.",
                  modality="echo")
    seeds = []
    for name, record, readers in (("ct.nii", volume, ("read_volume", "read")),
                                  ("ct.nii.gz", volume, ("read_volume", "read")),
                                  ("p_4CH_sequence.nii.gz", cine, ("read_video", "read_volume", "read"))):
        path = write_nifti(record, scratch / name)
        kind = "nifti-gz" if name.endswith(".gz") else "nifti"
        seed_name = "nifti-cine" if "sequence" in name else kind
        seeds.append(Seed(seed_name, kind, {name: path.read_bytes()}, name, readers))
    video = Video(frames=rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), fps=25.0)
    for suffix in ("mp4", "avi"):
        path = write_video(video, scratch / f"clip.{suffix}")
        seeds.append(Seed(suffix, suffix, {path.name: path.read_bytes()}, path.name, ("read_video", "read")))
    return seeds


def _manifest_seeds(scratch: Path) -> list[Seed]:
    from mmcardio.datasets.writers.ecg import write_ecg
    from mmcardio.datasets.writers.nifti import write_nifti
    from mmcardio.datasets.writers.video import write_video
    from mmcardio.records import Measurement, Video
    from mmcardio.study import EchoClip, Study, write_manifest

    folder = scratch / "manifest"
    write_ecg(_small_ecg(1.0), folder / "ecg.hea")
    write_video(Video(frames=np.full((2, 16, 16), 90, np.uint8), fps=25.0), folder / "a4c.mp4")
    write_nifti(np.arange(64, dtype=np.float32).reshape(4, 4, 4), folder / "cmr.nii.gz")
    studies = [
        Study("s1", "p1", "train", ecg=folder / "ecg.hea", report="Sinus rhythm.", age=61.0, sex="F",
              labels={"afib": 0}, measurements={"lvef": Measurement(55.0, "%")}, ecg_lead_map={"ECG1": "II"}),
        Study("s2", "p2", "val", echo=[EchoClip(folder / "a4c.mp4", "A4C")], masks={"echo:A4C": folder / "a4c.mp4"},
              report="Normal LV size.", reports={"echo": "Normal LV."}, translations={"zh": {"report": "正常"}}),
        Study("s3", "p3", "test", cmr=folder / "cmr.nii.gz", report="No scar.", sex="M"),
    ]
    seeds = []
    for suffix in ("csv", "jsonl"):
        write_manifest(studies, folder / f"manifest.{suffix}")
        files = {name: data for name, data in _files(folder).items() if not name.startswith("manifest.")}
        files[f"manifest.{suffix}"] = (folder / f"manifest.{suffix}").read_bytes()
        seeds.append(Seed(f"manifest-{suffix}", f"manifest-{suffix}", files, f"manifest.{suffix}",
                          ("read_manifest", "validate")))
    return seeds


# --- mutations ------------------------------------------------------------------------------------

INTERESTING_INTS = (0, 1, -1, 2, 3, 7, 8, 16, 255, 256, 32767, 32768, 65535, 65536, 2**31 - 1, 2**31,
                    2**32 - 1, 10**6, 10**9, 10**12, -2**31, -32768)
INTERESTING_FLOATS = (0.0, -0.0, 1e-300, 1e-9, -1.0, 1e9, 1e12, 1e308, math.inf, -math.inf, math.nan)
INTERESTING_TEXT = ("0", "-1", "1", "1e9", "1e12", "1e308", "1e309", "-1e308", "NaN", "nan", "inf", "-inf", "",
                    " ", "abc", "1,5", "0x10", "9" * 400, "-0", "\u0663", "1e-320", "4294967296", "-2147483649",
                    "12 13", "\\", "1\\2\\3", "\x00", "\u00e9\u00e8", "1.5.5", "+")


def interesting_text(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return repr(rng.choice(INTERESTING_FLOATS) * rng.choice((1, -1)))
    return rng.choice(INTERESTING_TEXT + tuple(str(n) for n in INTERESTING_INTS))


Files = dict[str, bytes]
Mutation = Callable[[bytes, random.Random], bytes | None]  # None: does not apply to these bytes


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.choice((0, 1, 4, 128, 132, len(data) // 2, rng.randrange(len(data) + 1), max(len(data) - 1, 0)))]


def _insert(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    chunk = rng.choice((b"\x00" * rng.randint(1, 64), b"\xff" * rng.randint(1, 64),
                        bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))), data[at:at + rng.randint(1, 256)]))
    return data[:at] + chunk + data[at:]


def _delete(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[at + rng.choice((1, 2, 4, 8, 64, 1024)):]


def _overwrite_int(data: bytes, rng: random.Random) -> bytes | None:
    if len(data) < 8:
        return None
    width, order = rng.choice((1, 2, 4, 8)), rng.choice("<>")
    at = rng.randrange(len(data) - width + 1)
    value = rng.choice(INTERESTING_INTS) % 2 ** (8 * width)
    return data[:at] + value.to_bytes(width, "little" if order == "<" else "big") + data[at + width:]


BYTE_MUTATIONS: tuple[Mutation, ...] = (_flip, _truncate, _insert, _delete, _overwrite_int)

NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _text_number(data: bytes, rng: random.Random) -> bytes | None:
    """A number in a text format (a header, XML, a manifest) replaced by an interesting one."""
    matches = list(NUMBER.finditer(data[:200_000]))
    if not matches:
        return None
    match = rng.choice(matches)
    return data[: match.start()] + interesting_text(rng).encode("utf-8") + data[match.end():]


def _text_line(data: bytes, rng: random.Random) -> bytes | None:
    """A line deleted, duplicated or swapped with another."""
    lines = data.split(b"\n")
    if len(lines) < 2:
        return None
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    action = rng.randrange(3)
    if action == 0:
        del lines[i]
    elif action == 1:
        lines.insert(i, lines[j])
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


WFDB_FORMATS = (b"8", b"16", b"24", b"32", b"61", b"80", b"160", b"212", b"310", b"311", b"508", b"516", b"0", b"999")


def _wfdb_token(data: bytes, rng: random.Random) -> bytes | None:
    """A token of a WFDB header line (record line or signal line) replaced: a storage format,
    a gain with units ("200(0)/mV"), or an interesting number."""
    lines = data.split(b"\n")
    candidates = [i for i, line in enumerate(lines) if line.strip() and not line.startswith(b"#")]
    if not candidates:
        return None
    i = rng.choice(candidates)
    tokens = lines[i].split(b" ")
    k = rng.randrange(len(tokens))
    choice = rng.randrange(3)
    if choice == 0:
        tokens[k] = rng.choice(WFDB_FORMATS)
    elif choice == 1:
        tokens[k] = interesting_text(rng).encode() + rng.choice((b"", b"(0)/mV", b"/uV", b"(-5)", b"x"))
    else:
        del tokens[k]
    lines[i] = b" ".join(tokens)
    return b"\n".join(lines)


# DICOM: a walk of Explicit VR Little Endian elements, into sequences and encapsulated fragments.

LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
VRS = LONG_LENGTH_VRS | {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
                         b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
BINARY_VRS = {b"US": "H", b"SS": "h", b"UL": "I", b"SL": "i", b"FL": "f", b"FD": "d", b"AT": "H"}
UNDEFINED = 0xFFFFFFFF
#: Elements whose values claim sizes, counts, rates or geometry: where bad headers do harm.
DICOM_CLAIMS = {
    (0x0028, 0x0008), (0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0100), (0x0028, 0x0101),
    (0x0028, 0x0102), (0x0028, 0x0103), (0x0028, 0x0002), (0x0028, 0x0006), (0x0028, 0x0004),
    (0x003A, 0x0005), (0x003A, 0x0010), (0x003A, 0x001A), (0x5400, 0x1004), (0x5400, 0x1006),
    (0x003A, 0x0210), (0x003A, 0x0212), (0x003A, 0x0213), (0x5400, 0x1010), (0x7FE0, 0x0010),
    (0x0018, 0x1063), (0x0018, 0x1065), (0x0018, 0x0040), (0x0028, 0x0030), (0x0020, 0x0032),
    (0x0020, 0x0037), (0x0028, 0x1052), (0x0028, 0x1053), (0x0018, 0x0050), (0x0002, 0x0010),
    (0x0008, 0x0016), (0x0008, 0x0060), (0x0018, 0x602C), (0x0018, 0x602E), (0x0018, 0x6024),
    (0x0018, 0x6026), (0x0020, 0x000E), (0x0008, 0x0100), (0x0008, 0x0102), (0x003A, 0x0203),
}


@dataclass(frozen=True)
class DicomElement:
    tag: tuple[int, int]
    vr: bytes
    length_at: int
    length_size: int
    value_at: int
    length: int


def dicom_elements(data: bytes) -> list[DicomElement]:
    """The elements of an Explicit VR Little Endian Part 10 file, in file order (a walk that
    stops where the bytes stop making sense; items and fragments are listed with vr b"")."""
    out: list[DicomElement] = []
    _walk_dataset(data, 132 if data[128:132] == b"DICM" else 0, len(data), out, 0)
    return out


def _walk_dataset(data: bytes, pos: int, end: int, out: list[DicomElement], depth: int) -> int:
    while pos + 8 <= end:
        group, number = struct.unpack_from("<HH", data, pos)
        if group == 0xFFFE:  # an item delimitation ends an undefined-length item
            return pos + 8
        vr = data[pos + 4:pos + 6]
        if vr not in VRS:
            return end
        long_length = vr in LONG_LENGTH_VRS
        length_at, size = (pos + 8, 4) if long_length else (pos + 6, 2)
        value_at = length_at + size
        if value_at > end:
            return end
        length = struct.unpack_from("<I" if long_length else "<H", data, length_at)[0]
        out.append(DicomElement((group, number), vr, length_at, size, value_at, length))
        if vr == b"SQ" or length == UNDEFINED:
            stop = end if length == UNDEFINED else min(end, value_at + length)
            after = _walk_items(data, value_at, stop, out, vr == b"SQ", depth + 1)
            pos = after if length == UNDEFINED else max(stop, value_at)
        else:
            pos = value_at + length
    return pos


def _walk_items(data: bytes, pos: int, end: int, out: list[DicomElement], datasets: bool, depth: int) -> int:
    if depth > 16:
        return end
    while pos + 8 <= end:
        group, number, length = struct.unpack_from("<HHI", data, pos)
        out.append(DicomElement((group, number), b"", pos + 4, 4, pos + 8, length))
        if (group, number) == (0xFFFE, 0xE0DD):  # sequence delimitation
            return pos + 8
        if (group, number) != (0xFFFE, 0xE000):
            return end
        if not datasets:  # an encapsulated fragment: raw bytes
            pos += 8 + (0 if length == UNDEFINED else length)
            continue
        stop = end if length == UNDEFINED else min(end, pos + 8 + length)
        after = _walk_dataset(data, pos + 8, stop, out, depth)
        pos = after if length == UNDEFINED else stop
    return pos


def _dicom_element(data: bytes, rng: random.Random) -> bytes | None:
    """One DICOM element mutated: its value (a claim, preferably), its length, or the element
    removed."""
    elements = dicom_elements(data)
    if not elements:
        return None
    claims = [e for e in elements if e.tag in DICOM_CLAIMS]
    element = rng.choice(claims if claims and rng.random() < 0.75 else elements)
    action = rng.randrange(4)
    if action == 0:
        return _dicom_length(data, element, rng)
    if action == 1 and element.vr:
        end = element.value_at + (0 if element.length == UNDEFINED else element.length)
        return data[: element.length_at - (8 if element.length_size == 4 else 6)] + data[end:]
    return _dicom_value(data, element, rng)


def _dicom_length(data: bytes, element: DicomElement, rng: random.Random) -> bytes:
    limit = 2 ** (8 * element.length_size)
    length = rng.choice((0, 1, 2, element.length + 1, element.length + 2, element.length * 2,
                         element.length * 1000, limit - 1, limit - 2, rng.randrange(limit))) % limit
    packed = length.to_bytes(element.length_size, "little")
    return data[: element.length_at] + packed + data[element.length_at + element.length_size:]


def _dicom_value(data: bytes, element: DicomElement, rng: random.Random) -> bytes | None:
    if element.length == UNDEFINED or element.vr in (b"SQ", b"") or element.length > 4096:
        return _dicom_length(data, element, rng)
    start, stop = element.value_at, element.value_at + element.length
    if element.vr in BINARY_VRS:
        code = BINARY_VRS[element.vr]
        width = struct.calcsize(code)
        if element.length < width:
            return None
        at = start + width * rng.randrange(element.length // width)
        if code in "fd":
            value = _pack_float(code, rng.choice(INTERESTING_FLOATS))
        else:
            value = (rng.choice(INTERESTING_INTS) % 2 ** (8 * width)).to_bytes(width, "little")
        return data[:at] + value + data[at + width:]
    if element.vr in (b"OB", b"OW", b"UN", b"OF", b"OD", b"OL"):
        return data[:start] + _flip(data[start:stop], rng) + data[stop:]
    text = interesting_text(rng).encode("utf-8", errors="replace")
    if element.vr in (b"DS", b"IS") and rng.random() < 0.3:  # one value of a multi-valued number
        values = data[start:stop].split(b"\\")
        values[rng.randrange(len(values))] = text
        text = b"\\".join(values)
    text += b" " * (len(text) % 2)
    if element.length_size == 2 and len(text) > 0xFFFF:
        return None
    length = len(text).to_bytes(element.length_size, "little")
    return data[: element.length_at] + length + text + data[stop:]


def _pack_float(code: str, value: float) -> bytes:
    """Little-endian float32 ("f") or float64 ("d"); beyond float32's range is infinity."""
    if code == "f" and math.isfinite(value) and abs(value) > 3.4e38:
        value = math.copysign(math.inf, value)
    return struct.pack("<" + code, value)


# NIfTI-1 header fields: (offset, struct code, count).
NIFTI1_FIELDS = {
    "sizeof_hdr": (0, "i", 1), "dim": (40, "h", 8), "intent_code": (68, "h", 1), "datatype": (70, "h", 1),
    "bitpix": (72, "h", 1), "slice_start": (74, "h", 1), "pixdim": (76, "f", 8), "vox_offset": (108, "f", 1),
    "scl_slope": (112, "f", 1), "scl_inter": (116, "f", 1), "slice_end": (120, "h", 1), "slice_code": (122, "b", 1),
    "xyzt_units": (123, "B", 1), "toffset": (136, "f", 1), "qform_code": (252, "h", 1), "sform_code": (254, "h", 1),
    "quatern": (256, "f", 6), "srow": (280, "f", 12), "magic": (344, "B", 4),
}


def _nifti_field(data: bytes, rng: random.Random) -> bytes | None:
    """A NIfTI-1 header field (dimensions, datatype, spacing, offset, units...) set to an
    interesting value."""
    if len(data) < 348:
        return None
    offset, code, count = NIFTI1_FIELDS[rng.choice(sorted(NIFTI1_FIELDS))]
    at = offset + struct.calcsize(code) * rng.randrange(count)
    if code == "f":
        packed = _pack_float("f", rng.choice(INTERESTING_FLOATS))
    else:
        width = struct.calcsize(code)
        value = rng.choice(INTERESTING_INTS + (4, 5, 6, 7, 16, 64, 512, 1024, 2048)) % 2 ** (8 * width)
        packed = value.to_bytes(width, "little")
    return data[:at] + packed + data[at + len(packed):]


def _gzipped(mutation: Mutation) -> Mutation:
    """`mutation` applied to the decompressed bytes of a .gz file, recompressed."""
    def apply(data: bytes, rng: random.Random) -> bytes | None:
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError, ValueError, zlib.error):
            return None
        mutated = mutation(raw, rng)
        return None if mutated is None else gzip.compress(mutated, compresslevel=1, mtime=0)
    apply.__name__ = f"gz_{mutation.__name__.lstrip('_')}"
    return apply


MP4_BOXES = (b"mvhd", b"tkhd", b"mdhd", b"stsz", b"stco", b"stts", b"stsc", b"stss", b"avc1", b"avcC", b"hdlr",
             b"moov", b"trak", b"mdat", b"ftyp", b"elst", b"ctts")
AVI_CHUNKS = (b"avih", b"strh", b"strf", b"movi", b"idx1", b"LIST", b"RIFF", b"00dc", b"JUNK", b"indx")


def _container_int(data: bytes, rng: random.Random) -> bytes | None:
    """An integer in an MP4 box (big-endian) or AVI chunk (little-endian): a size, a count,
    a width, a duration..."""
    is_avi = data[:4] == b"RIFF"
    markers = AVI_CHUNKS if is_avi else MP4_BOXES
    found = [m.start() for marker in markers for m in re.finditer(re.escape(marker), data)]
    if not found:
        return None
    at = rng.choice(found) + rng.choice((-4, 4, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44)) if is_avi else \
        rng.choice(found) + rng.choice((-4, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 76, 80))
    if not 0 <= at <= len(data) - 4:
        return None
    value = rng.choice(INTERESTING_INTS) % 2**32
    return data[:at] + value.to_bytes(4, "little" if is_avi else "big") + data[at + 4:]


BILLION_LAUGHS = ('<!DOCTYPE {root} [<!ENTITY a "aaaaaaaaaa">' + "".join(
    f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)) + "]>")
EXTERNAL_ENTITY = '<!DOCTYPE {root} [<!ENTITY a SYSTEM "file:///etc/passwd">]>'
PARAMETER_ENTITY = '<!DOCTYPE {root} [<!ENTITY % a SYSTEM "http://127.0.0.1:9/evil.dtd"> %a;]>'


def _parse_xml(data: bytes) -> ET.Element | None:
    try:
        return ET.fromstring(data)
    except (ET.ParseError, LookupError, ValueError):  # LookupError: a mutated encoding name
        return None


def _xml_bytes(root: ET.Element, doctype: str = "") -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{doctype}'.encode() + ET.tostring(root)


def _xml_tree(data: bytes, rng: random.Random) -> bytes | None:
    """An element's text or attribute swapped for an interesting value, an element removed or
    duplicated, or an entity declared and used (the reader must refuse these)."""
    root = _parse_xml(data)
    if root is None:
        return None
    elements = list(root.iter())
    element = rng.choice(elements)
    action = rng.randrange(6)
    if action == 0 or (action == 1 and not element.attrib):
        element.text = interesting_text(rng)
    elif action == 1:
        element.set(rng.choice(sorted(element.attrib)), interesting_text(rng))
    elif action in (2, 3):
        parents = [(p, c) for p in elements for c in p]
        if not parents:
            return None
        parent, child = rng.choice(parents)
        if action == 2:
            parent.remove(child)
        else:
            parent.append(child)  # the same element twice: a duplicated lead or waveform
    else:
        name = root.tag.rsplit("}", 1)[-1]
        template = rng.choice((BILLION_LAUGHS, EXTERNAL_ENTITY, PARAMETER_ENTITY))
        element.text = (element.text or "") + "\x00ENTITY\x00"
        text = _xml_bytes(root).split(b"?>", 1)[1]
        reference = b"&j;" if template is BILLION_LAUGHS else b"&a;"
        body = text.replace(b"\x00ENTITY\x00", reference).replace(b"&#0;ENTITY&#0;", reference)
        return b'<?xml version="1.0"?>\n' + template.format(root=name).encode() + body
    return _xml_bytes(root)


def _manifest_cell(data: bytes, rng: random.Random) -> bytes | None:
    """A manifest cell (CSV text, or a native JSONL value) set to a malformed or hostile value:
    broken JSON, JSON of the wrong shape, deep nesting, paths leaving the data root, huge or
    non-finite numbers; or a column dropped."""
    is_csv = not data.lstrip().startswith(b"{")
    try:
        text = data.decode("utf-8")
        rows = list(csv.DictReader(io.StringIO(text))) if is_csv else \
            [json.loads(line) for line in text.splitlines() if line.strip()]
    except (UnicodeDecodeError, ValueError, RecursionError, csv.Error):
        return None
    if not rows or not isinstance(rows[0], dict) or not rows[0]:
        return None
    row = rng.choice(rows)
    names = sorted(k for k in row if isinstance(k, str))  # a CSV row longer than its header has a None key
    if not names:
        return None
    column = rng.choice(names)
    if rng.random() < 0.1:
        for r in rows:
            r.pop(column, None)
    else:
        value = rng.choice(MANIFEST_CELLS)
        row[column] = value if is_csv or rng.random() < 0.5 else _native(value)
    if is_csv:
        out = io.StringIO()
        columns = list(dict.fromkeys(k for r in rows for k in r if k is not None))
        writer = csv.DictWriter(out, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode("utf-8")
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _native(cell: str):
    try:
        return json.loads(cell)
    except (ValueError, RecursionError):
        return cell


MANIFEST_CELLS = (
    "{", '{"a": ', "[1, 2", "null", "[]", "{}", '"text"', "123", "1e309", "NaN", "-1", "true", "[[[[[[[[]]]]]]]]",
    "[" * 5000 + "]" * 5000, '{"path": 5}', '[{"path": ""}]', '[{"view": "A4C"}]', '[{"path": "a4c.mp4", "view": 5}]',
    '{"echo:A4C": ["x"]}', '{"echo:A4C": "../../../etc/passwd"}', '{"afib": "yes"}', '{"afib": 2}', '{"afib": 1e400}',
    '{"afib": 1.5}', '{"lvef": {"value": "55", "unit": "%"}}', '{"lvef": {"value": NaN, "unit": "%"}}',
    '{"lvef": 5}', '{"ECG1": "II", "ECG2": "XX"}', '{"zh": {"report": 5}}', '{"zh": "text"}', '{"ecg": ["a"]}',
    "../../../etc/passwd", "/etc/passwd", "/dev/zero", "/proc/self/mem", ".", "..", "", " ", "x" * 5000,
    "a\x00b", "nonexistent.hea", "A4C=;=x;", "=", "A4C=/etc/hosts", "A4C=../a4c.mp4", "\U0001F600", "\u202e",
    "ecg.hea", "ecg", "a4c.mp4", "cmr.nii.gz", "manifest.csv", "9" * 400, "-1e400", "inf", "1e-400", "150",
    "train", "TEST", "xx", "EN", "english", "F", "female", "?", "s1", "p1",
)

#: Mutations by seed kind: (structure-aware, weight) then the byte mutations.
KIND_MUTATIONS: dict[str, tuple[Mutation, ...]] = {
    "dicom": (_dicom_element, _dicom_element, _dicom_element),
    "xml": (_xml_tree, _xml_tree, _text_number),
    "wfdb": (_wfdb_token, _text_number, _text_line),
    "nifti": (_nifti_field, _nifti_field),
    "nifti-gz": (_gzipped(_nifti_field), _gzipped(_nifti_field), _gzipped(_truncate)),
    "mp4": (_container_int, _container_int),
    "avi": (_container_int, _container_int),
    "manifest-csv": (_manifest_cell, _manifest_cell, _manifest_cell, _text_number),
    "manifest-jsonl": (_manifest_cell, _manifest_cell, _manifest_cell, _text_number),
    "text": (_text_number, _text_line),
    "bytes": (),
}


def mutate(seed: Seed, rng: random.Random) -> tuple[Files, list[str]]:
    """The seed's files with one to three mutations applied (mostly to the file the readers
    open), and the mutations in words."""
    files = dict(seed.files)
    applied: list[str] = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        name = _target_file(seed, files, rng)
        mutation = _pick_mutation(seed, name, rng)
        mutated = mutation(files[name], rng)
        if mutated is None:  # the structure-aware mutation does not apply any more: bytes then
            mutation = rng.choice(BYTE_MUTATIONS)
            mutated = mutation(files[name], rng)
        if mutated is not None:
            files[name] = mutated
            applied.append(f"{mutation.__name__.lstrip('_')}({name})")
    return files, applied


def _target_file(seed: Seed, files: Files, rng: random.Random) -> str:
    if seed.entry in files and rng.random() < 0.85:
        return seed.entry
    return rng.choice(sorted(files))


def _pick_mutation(seed: Seed, name: str, rng: random.Random) -> Mutation:
    if name != seed.entry and seed.kind != "dicom":  # a .dat, or a file a manifest points to
        aware = (_wfdb_token, _text_number) if name.endswith(".hea") else ()
    else:
        aware = KIND_MUTATIONS[seed.kind]
    if aware and rng.random() < 0.6:
        return rng.choice(aware)
    return rng.choice(BYTE_MUTATIONS)


def input_rng(seed: int, index: int) -> random.Random:
    """The generator of input `index` of a run with `seed` (string seeding is hashed with
    SHA-512, the same in every process and Python version)."""
    return random.Random(f"mmcardio-fuzz:{seed}:{index}")


def materialize(files: Files, folder: Path) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# --- readers and outcomes -------------------------------------------------------------------------

def _readers() -> dict[str, tuple[Callable[[Path], object], tuple[type, ...]]]:
    """Reader name -> (call on the input path, the types a successful read returns)."""
    from mmcardio.datasets import readers
    from mmcardio.records import ECG, Video, Volume
    from mmcardio.study import Problem, Study, read_manifest
    from mmcardio.validation import validate_manifest

    def manifest(path: Path) -> list[Study]:
        return read_manifest(path, data_root=path.parent)

    def validate(path: Path) -> list[Problem]:
        return validate_manifest(path, workers=1, data_root=path.parent)

    return {
        "read": (readers.read, (ECG, Video, Volume)),
        "read_ecg": (readers.read_ecg, (ECG,)),
        "read_ecg_window": (lambda p: readers.read_ecg(p, start_s=0.5, duration_s=1.0), (ECG,)),
        "read_ecg_fs250": (lambda p: readers.read_ecg(p, fs=250.0), (ECG,)),
        "read_ecg_window_fs250": (lambda p: readers.read_ecg(p, fs=250.0, start_s=0.5, duration_s=1.0), (ECG,)),
        "read_video": (readers.read_video, (Video,)),
        "read_volume": (readers.read_volume, (Volume,)),
        "read_manifest": (manifest, (list,)),
        "validate": (validate, (list,)),
    }


READERS = ("read", "read_ecg", "read_ecg_window", "read_ecg_fs250", "read_ecg_window_fs250", "read_video",
           "read_volume", "read_manifest", "validate")
FORMATS = ("muse", "cardiosoft", "aecg", "wfdb", "dicom-ecg", "dicom-ecg-pydicom", "ecg-npy", "ecg-csv",
           "dicom-us", "dicom-us-pydicom", "dicom-ct-pydicom", "dicom-mr-pydicom", "dicom-series", "nifti",
           "nifti-gz", "nifti-cine", "mp4", "avi", "manifest-csv", "manifest-jsonl")


@dataclass
class Outcome:
    """How one read ended: `kind` in OUTCOMES, the exception type and message, seconds, and the
    peak of traced allocations during the read (numpy and Python objects)."""

    reader: str
    kind: str
    error: str = ""
    message: str = ""
    seconds: float = 0.0
    peak_bytes: int = 0
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def run_reader(reader: str, path: Path, memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES) -> Outcome:
    """Read `path` with `reader` under tracemalloc, and classify the outcome. Any exception
    but an MMCardioError with a message is an escape; so is a record of the wrong type, a
    record that breaks its own invariants, and a validation problem that is a reader's
    escaped exception."""
    call, returns = _readers()[reader]
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    details: dict = {}
    try:
        kind, error, message = _classify(call(path), returns)
    except MMCardioError as err:
        kind, error, message = ("mmcardio_error" if str(err).strip() else "escaped"), type(err).__name__, str(err)
    except MemoryError as err:
        kind, error, message = "memory", "MemoryError", str(err)
    except Exception as err:  # noqa: BLE001 - the fuzzer's job is to catch and count these
        kind, error, message = "escaped", type(err).__name__, str(err)[:2000]
        details["traceback"] = traceback.format_exc(limit=-12)
    seconds = time.perf_counter() - start
    peak = max(tracemalloc.get_traced_memory()[1] - base, 0)
    if started_tracing:
        tracemalloc.stop()
    if peak > memory_limit_bytes and kind in ("ok", "mmcardio_error"):
        kind, message = "memory", f"peak {peak / 1e6:.0f} MB over the limit ({message})"
    return Outcome(reader, kind, error, message[:2000], seconds, peak, details)


def _classify(result: object, returns: tuple[type, ...]) -> tuple[str, str, str]:
    from mmcardio.validation import READER_FAILED

    if not isinstance(result, returns):
        return "escaped", "WrongType", f"returned {type(result).__name__}, expected {returns}"
    if isinstance(result, list):
        failed = [str(p) for p in result if getattr(p, "message", "").startswith(READER_FAILED)]
        if failed:
            return "escaped", "ValidateReaderFailed", failed[0]
        return "ok", "", ""
    broken = record_problem(result)
    return ("escaped", "InvalidRecord", broken) if broken else ("ok", "", "")


def record_problem(record: object) -> str:
    """What makes a returned record nonsense ("" when nothing): what the record types promise
    downstream code (positive finite rates and spacings, non-empty arrays)."""
    from mmcardio.records import ECG, Video, Volume

    if isinstance(record, ECG):
        if not (math.isfinite(record.fs) and record.fs > 0) or record.signal.size == 0:
            return f"ECG fs {record.fs} with signal {record.signal.shape}"
        if not np.all(np.isfinite(record.signal)):
            return "ECG signal holds non-finite values"
    if isinstance(record, Video):
        frames = record.frames
        if not (math.isfinite(record.fps) and record.fps > 0) or frames.size == 0 or frames.dtype != np.uint8:
            return f"Video fps {record.fps} frames {frames.dtype} {frames.shape}"
        spacing = record.pixel_spacing_mm
        if spacing is not None and not all(math.isfinite(s) and s > 0 for s in spacing):
            return f"Video pixel spacing {spacing}"
    if isinstance(record, Volume):
        if record.array.size == 0 or record.array.ndim not in (3, 4):
            return f"Volume array {record.array.shape}"
        spatial = record.array.shape[-3:]
        if not all(math.isfinite(s) and (s > 0 or n == 1) for s, n in zip(record.spacing_mm, spatial)):
            return f"Volume spacing {record.spacing_mm} for {spatial} voxels"
        if not np.all(np.isfinite(record.affine)):
            return "Volume affine holds non-finite values"
    return ""
