"""Readers: raw files -> typed records with units (`ECG`, `Video`, `Volume`).

`read(path)` picks the reader by content (DICOM preamble and SOP class, XML root, NIfTI magic,
WFDB header, video container), not by trusting the file name alone.
"""
from __future__ import annotations

from pathlib import Path

from mmcardio.datasets.readers.dicom import dicom_kind
from mmcardio.datasets.readers.dicom_series import read_dicom_series
from mmcardio.datasets.readers.ecg import read_ecg
from mmcardio.datasets.readers.limits import exists, require_file
from mmcardio.datasets.readers.nifti import read_nifti
from mmcardio.datasets.readers.video import is_image_sequence, read_video
from mmcardio.errors import ReaderError
from mmcardio.records import ECG, Video, Volume

__all__ = ["read", "read_ecg", "read_for_column", "read_video", "read_volume", "sniff"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
ECG_SUFFIXES = (".hea", ".dat", ".edf", ".rec", ".xml", ".npy", ".csv")


def sniff(path: str | Path) -> str:
    """Return "ecg", "video" or "volume" from the file's content (folders are DICOM series)."""
    path = Path(path)
    if not exists(path) and exists(path.with_name(path.name + ".hea")):
        return "ecg"  # a WFDB record named without its extension
    if path.is_dir():
        return "volume"
    require_file(path)
    name = path.name.lower()
    if is_image_sequence(path):  # MetaImage, and NIfTI named as CAMUS's 2-D+time sequences
        return "video"
    if name.endswith(NIFTI_SUFFIXES):
        return "volume"
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM" or name.endswith(".dcm"):
        return dicom_kind(path)
    if name.endswith(VIDEO_SUFFIXES):
        return "video"
    if name.endswith(ECG_SUFFIXES) or head.lstrip().startswith(b"<?xml"):
        return "ecg"
    raise ReaderError("unknown file type; expected DICOM, NIfTI, WFDB, EDF, ECG XML, NumPy/CSV or a video", path)


def read_volume(path: str | Path, modality: str | None = None) -> Volume:
    """A DICOM series (folder or one file of it) or a NIfTI file as a `Volume`."""
    path = Path(path)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(path, modality=modality)
    return read_dicom_series(path, modality=modality)


def read(path: str | Path) -> ECG | Video | Volume:
    kind = sniff(path)
    if kind == "ecg":
        return read_ecg(path)
    if kind == "video":
        return read_video(path)
    return read_volume(path)


def read_for_column(column: str, path: str | Path, lead_map: dict[str, str] | None = None) -> ECG | Video | Volume:
    """Read a manifest cell's file with the reader its column implies (`lead_map`: the row's
    `ecg_lead_map`, for the ecg column)."""
    base = column.split(".", 1)[-1].split(":", 1)[0] if column.startswith("masks.") else column
    if base == "ecg":
        return read_ecg(path, lead_map=lead_map)
    if base == "echo":
        return read_video(path) if not column.startswith("masks.") else read_volume(path)
    return read_volume(path, modality=base if base in ("cmr", "ct") else None)
