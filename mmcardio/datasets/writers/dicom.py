"""Write echo cines and CT/MR volumes as standard DICOM Part 10 files (pydicom).

Used by the phantom cohort and the tests; the readers take these files like any vendor's.
Pixel data is written uncompressed (Explicit VR Little Endian).
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from mmcardio.datasets.readers.dicom import LPS_TO_RAS
from mmcardio.io import atomic_path
from mmcardio.records import Video, Volume

__all__ = ["write_dicom_series", "write_dicom_video"]

ULTRASOUND_MULTIFRAME = UID("1.2.840.10008.5.1.4.1.1.3.1")
SOP_CLASS = {"CT": UID("1.2.840.10008.5.1.4.1.1.2"), "MR": UID("1.2.840.10008.5.1.4.1.1.4")}
MODALITY_ALIASES = {"CT": "CT", "MR": "MR", "CMR": "MR"}
INT16 = np.iinfo(np.int16)


def write_dicom_video(video: Video, path: str | Path, patient_id: str = "", study_uid: str | None = None,
                      series_uid: str | None = None) -> Path:
    """Write `video` as one Ultrasound Multi-frame Image (MONOCHROME2 or RGB, uncompressed).

    The frame rate goes to FrameTime (ms) and CineRate; the pixel size, when known, to a
    Sequence of Ultrasound Regions calibrated in cm (as scanners write it).
    """
    frames = np.asarray(video.frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[3] != 3):
        raise ValueError(f"expected uint8 frames [T,H,W] or [T,H,W,3], got {frames.dtype} {frames.shape}")
    if not video.fps > 0:
        raise ValueError(f"expected a positive frame rate, got {video.fps}")
    ds = _base_dataset(ULTRASOUND_MULTIFRAME, "US", patient_id, study_uid, series_uid)
    count, rows, columns = frames.shape[:3]
    color = frames.ndim == 4
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = count
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = _ds(1000.0 / video.fps)
    ds.CineRate = round(video.fps)
    ds.RecommendedDisplayFrameRate = round(video.fps)
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = "RGB" if color else "MONOCHROME2"
    if color:
        ds.PlanarConfiguration = 0  # R, G, B interleaved per pixel, as numpy stores [T,H,W,3]
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "00"
    if video.pixel_spacing_mm is not None:
        ds.SequenceOfUltrasoundRegions = Sequence([_ultrasound_region(rows, columns, video.pixel_spacing_mm)])
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    return _save(ds, Path(path))


def write_dicom_series(volume: Volume, folder: str | Path, modality: str = "CT", patient_id: str = "",
                       study_uid: str | None = None, series_uid: str | None = None,
                       series_description: str = "") -> Path:
    """Write `volume` as a CT or MR series: one file per slice (and per phase for cines).

    Geometry comes from `volume.affine` (RAS -> LPS); values are stored as int16 with
    RescaleSlope/Intercept (exact for integer HU). DICOM readers order slices along
    cross(row, column) of the in-plane axes; when the volume's z axis points the other way
    its slices are written in reverse, so a reader returns the z-reversed array with the
    same voxel-to-world mapping.
    """
    modality = MODALITY_ALIASES[modality.upper()]
    array = np.asarray(volume.array, dtype=np.float64)
    if array.ndim not in (3, 4):
        raise ValueError(f"expected a (z, y, x) or (t, z, y, x) array, got shape {array.shape}")
    if array.ndim == 4 and volume.frame_times_ms is not None and len(volume.frame_times_ms) != len(array):
        raise ValueError(f"{len(volume.frame_times_ms)} frame times for {len(array)} phases")
    phases = array[None] if array.ndim == 3 else array
    phases, affine = _slices_along_normal(phases, np.asarray(volume.affine, dtype=np.float64))
    stored, slope, intercept = _int16_rescale(phases)
    geometry = _plane_geometry(affine)
    ds = _base_dataset(SOP_CLASS[modality], modality, patient_id, study_uid, series_uid)
    ds.SeriesDescription = series_description
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL"] if modality == "CT" else ["DERIVED", "PRIMARY"]
    ds.ImageOrientationPatient = _ds(geometry["orientation"])
    ds.PixelSpacing = _ds(geometry["pixel_spacing"])
    ds.SliceThickness = _ds(geometry["slice_gap"])
    ds.SpacingBetweenSlices = _ds(geometry["slice_gap"])
    ds.Rows, ds.Columns = phases.shape[2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
    if modality == "CT":
        ds.RescaleType, ds.KVP, ds.AcquisitionNumber = "HU", "", 1
    else:  # MR Image module type 1 attributes: "RM" = research mode, honest for synthetic data
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "RM", "NONE", "2D"
        ds.ScanOptions, ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "", "", "", ""
    if len(phases) > 1:
        ds.NumberOfTemporalPositions = len(phases)
        ds.CardiacNumberOfImages = len(phases)
    # One dataset for the whole series: every slice overwrites the same per-slice elements
    # before it is saved (a deep copy per slice cost more than the write; dcmwrite copies
    # file_meta itself, so nothing of one slice leaks into the next).
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for t, phase in enumerate(stored):
            for z, plane in enumerate(phase):
                _set_slice_elements(ds, geometry, z, plane)
                ds.InstanceNumber = t * len(phase) + z + 1
                if len(phases) > 1:
                    ds.TemporalPositionIdentifier = t + 1
                    if volume.frame_times_ms is not None:
                        ds.TriggerTime = _ds(volume.frame_times_ms[t])
                _save_dataset(ds, tmp / f"IM{ds.InstanceNumber:05d}.dcm")
    return Path(folder)


def _base_dataset(sop_class: UID, modality: str, patient_id: str, study_uid: str | None,
                  series_uid: str | None) -> Dataset:
    """Patient, study, series and SOP common modules (type 2 elements present, possibly empty)."""
    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", patient_id, "", ""
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", ""
    ds.SeriesNumber = 1
    ds.Manufacturer = "mmcardio"
    return ds


def _ultrasound_region(rows: int, columns: int, spacing_mm: tuple[float, float]) -> Dataset:
    """One 2-D tissue region covering the image, calibrated in cm (units code 3)."""
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2-D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = columns - 1, rows - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = float(spacing_mm[1]) / 10.0
    region.PhysicalDeltaY = float(spacing_mm[0]) / 10.0
    return region


def _slices_along_normal(phases: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reverse z (array and affine, same world geometry) if the slice axis points against the
    slice normal cross(row, column), so that written slice order is the order readers sort in."""
    # RAS <-> LPS is a rotation, so the sign of this triple product is the same in both.
    if affine_ras[:3, 0] @ np.cross(affine_ras[:3, 2], affine_ras[:3, 1]) >= 0:
        return phases, affine_ras
    flipped = affine_ras.copy()
    flipped[:3, 3] = affine_ras[:3, 3] + (phases.shape[1] - 1) * affine_ras[:3, 0]
    flipped[:3, 0] = -affine_ras[:3, 0]
    return phases[:, ::-1], flipped


def _plane_geometry(affine_ras: np.ndarray) -> dict[str, np.ndarray | float]:
    """Image Plane module values from an index (z, y, x) -> RAS affine."""
    lps = LPS_TO_RAS @ affine_ras  # the flip is its own inverse
    step, down, across = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    row_spacing, column_spacing = np.linalg.norm(down), np.linalg.norm(across)
    row_cosines, column_cosines = across / column_spacing, down / row_spacing
    if abs(row_cosines @ column_cosines) > 1e-6:
        raise ValueError("the affine's in-plane axes are not orthogonal; DICOM cannot express that")
    return {"orientation": np.concatenate([row_cosines, column_cosines]),
            "pixel_spacing": np.array([row_spacing, column_spacing]), "slice_gap": float(np.linalg.norm(step)),
            "origin": lps[:3, 3], "step": step, "normal": np.cross(row_cosines, column_cosines)}


def _set_slice_elements(ds: Dataset, geometry: dict, z: int, plane: np.ndarray) -> None:
    ds.SOPInstanceUID = generate_uid()
    position = geometry["origin"] + z * geometry["step"]
    ds.ImagePositionPatient = _ds(position)
    ds.SliceLocation = _ds(position @ geometry["normal"])
    ds.PixelData = np.ascontiguousarray(plane, dtype="<i2").tobytes()


def _int16_rescale(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored int16 values and (slope, intercept): identity for integers that fit (exact HU),
    otherwise the value range mapped linearly onto the int16 range."""
    low, high = float(array.min()), float(array.max())
    if np.array_equal(array, np.rint(array)) and INT16.min <= low and high <= INT16.max:
        return array.astype(np.int16), 1.0, 0.0
    # Round slope and intercept to what the Decimal Strings will hold before storing values.
    slope = float(_ds((high - low) / (INT16.max - INT16.min) or 1.0))
    intercept = float(_ds(low - INT16.min * slope))
    stored = np.clip(np.rint((array - intercept) / slope), INT16.min, INT16.max).astype(np.int16)
    return stored, slope, intercept


def _ds(values):
    """Decimal String values within DICOM's 16 characters."""
    if np.ndim(values) == 0:
        return DSfloat(float(values), auto_format=True)
    return [DSfloat(float(v), auto_format=True) for v in values]


def _save_dataset(ds: Dataset, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)


def _save(ds: Dataset, path: Path) -> Path:
    with atomic_path(path) as tmp:
        _save_dataset(ds, tmp)
    return path
