"""DICOM CT/MR series -> `Volume`: classic one-file-per-slice series and enhanced multi-frame files.

Geometry follows DICOM PS3.3 C.7.6.2 (Image Plane module): slices are ordered by their
ImagePositionPatient projected on the slice normal cross(row, column) of
ImageOrientationPatient, never by file name, InstanceNumber or SliceLocation. The affine
maps the array index (z, y, x) to RAS+ mm; DICOM's LPS patient axes are converted once, here.
"""
from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from operator import attrgetter
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from mmcardio.datasets.readers.dicom import (
    LPS_TO_RAS,
    VOLUME_MODALITIES,
    decode_pixels,
    dicom_float,
    dicom_int,
    read_dicom_file,
)
from mmcardio.datasets.readers.limits import exists, require_file
from mmcardio.errors import ReaderError
from mmcardio.modality import Modality
from mmcardio.records import Volume

__all__ = ["read_dicom_series"]

log = logging.getLogger(__name__)

MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # DICOMDIR: an index, not an image
#: Images closer than this along the slice normal are at the same slice position.
SAME_POSITION_MM = 0.01


@dataclass
class _Image:
    """One 2-D image of a series: a classic single-frame file, or one frame of an enhanced file."""

    label: str  # file (and frame) named in error messages
    position: np.ndarray  # ImagePositionPatient: centre of the first pixel, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient: row cosines then column cosines
    pixel_spacing: np.ndarray  # (between rows, between columns) mm
    shape: tuple[int, int]
    trigger_time_ms: float | None
    temporal_index: int | None
    slope: float
    intercept: float
    load: Callable[[], np.ndarray]  # stored values of this image

    def values(self) -> np.ndarray:
        return self.load().astype(np.float32) * np.float32(self.slope) + np.float32(self.intercept)


def read_dicom_series(path: str | Path, modality: str | None = None, *, series_uid: str | None = None,
                      gap_tolerance: float = 0.01) -> Volume:
    """Read a CT or MR series (a folder, or one file of it) into a `Volume`.

    path: a folder (searched recursively), one classic file (its folder's files of the same
    SeriesInstanceUID are read), or one enhanced multi-frame CT/MR file. series_uid picks a
    series when the folder holds several. modality: "ct" or "cmr", checked against the files.
    gap_tolerance: allowed deviation of each slice step from the mean step, relative to it.
    Returns (z, y, x) or, for cines, (t, z, y, x) with rescaled values (CT in HU).
    """
    path = Path(path)
    headers = _series_headers(path, series_uid)
    any_path, any_header = next(iter(headers.items()))
    kind, units = _volume_modality(any_header, any_path, modality)
    images = [image for file, header in headers.items() for image in _images_of(file, header)]
    _check_same_grid(images)
    locations = _group_by_location(images)
    phases = _order_phases(locations)
    positions = np.array([image.position for image in phases[0]])
    step = _slice_step(positions, phases[0], any_header, gap_tolerance)
    stacks = [np.stack([image.values() for image in phase]) for phase in phases]
    array = stacks[0] if len(stacks) == 1 else np.stack(stacks)
    spacing = (float(np.linalg.norm(step)), *(float(s) for s in images[0].pixel_spacing))
    return Volume(
        array=array, spacing_mm=spacing, affine=_affine(images[0], positions[0], step), units=units,
        frame_times_ms=_frame_times(phases) if len(phases) > 1 else None, modality=str(kind),
        source=str(path),
    )


def _series_headers(path: Path, series_uid: str | None) -> dict[Path, Dataset]:
    """Headers of the files of one series, chosen by `series_uid` or by being the only one."""
    if not exists(path):
        raise ReaderError("file or folder does not exist", path)
    if not path.is_dir():
        require_file(path)
        header = read_dicom_file(path, header_only=True)
        if "PerFrameFunctionalGroupsSequence" in header or "SeriesInstanceUID" not in header:
            return {path: header}
        series_uid = series_uid or str(header.SeriesInstanceUID)
        files = sorted(p for p in path.parent.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    by_series: dict[str, dict[Path, Dataset]] = defaultdict(dict)
    for file in files:
        # Given a folder, every DICOM file in it must be readable; given one file, its
        # neighbours may be anything, and only those that parse can belong to its series.
        header = _image_header_or_none(file, strict=path.is_dir() or file == path)
        if header is not None:
            by_series[str(header.get("SeriesInstanceUID", ""))][file] = header
    if not by_series:
        raise ReaderError("no DICOM images found", path)
    if series_uid is not None:
        if series_uid not in by_series:
            raise ReaderError(f"series {series_uid} not found; present: {_describe(by_series)}", path,
                              "SeriesInstanceUID")
        return by_series[series_uid]
    if len(by_series) > 1:
        raise ReaderError(f"{len(by_series)} series found; pass series_uid to pick one of: "
                          f"{_describe(by_series)}", path, "SeriesInstanceUID")
    return next(iter(by_series.values()))


def _image_header_or_none(file: Path, strict: bool) -> Dataset | None:
    """The header of a DICOM image file; None for non-DICOM files and DICOMDIR indexes, and
    for unreadable files unless `strict`."""
    with open(file, "rb") as fh:
        if fh.read(132)[128:] != b"DICM":
            log.debug("skipping %s: not a DICOM Part 10 file", file)
            return None
    try:
        header = read_dicom_file(file, header_only=True)
    except ReaderError as err:
        if strict:
            raise
        log.debug("skipping %s", err)
        return None
    return None if str(header.SOPClassUID) == MEDIA_DIRECTORY_SOP_CLASS else header


def _describe(by_series: dict[str, dict[Path, Dataset]]) -> str:
    parts = []
    for uid, headers in by_series.items():
        first = next(iter(headers.values()))
        parts.append(f"{uid or '(no SeriesInstanceUID)'} ({first.get('Modality', '?')}, "
                     f"{first.get('SeriesDescription', '') or 'no description'!s}, {len(headers)} files)")
    return "; ".join(parts)


def _volume_modality(header: Dataset, path: Path, requested: str | None) -> tuple[Modality, str]:
    """Our modality and the value units, from the DICOM Modality checked against `requested`."""
    dicom_modality = str(header.get("Modality", "")).upper()
    wanted = Modality(requested.lower()) if requested else None
    if dicom_modality in VOLUME_MODALITIES:
        found, units = VOLUME_MODALITIES[dicom_modality]
        if wanted is not None and wanted != found:
            raise ReaderError(f"expected {wanted} but the series is DICOM modality {dicom_modality}", path,
                              "Modality")
        if found == Modality.CT and str(header.get("RescaleType", "HU")).upper() not in ("HU", ""):
            units = "a.u."
        return found, units
    if wanted is None:
        raise ReaderError(f"DICOM modality {dicom_modality or '(none)'} is not CT or MR; pass the modality "
                          "explicitly to read it anyway", path, "Modality")
    return wanted, "HU" if wanted == Modality.CT else "a.u."


def _require(ds: Dataset, keyword: str, label: str):
    if keyword not in ds or ds[keyword].value in (None, ""):
        raise ReaderError(f"missing {keyword}, needed to place the image in space", label, keyword)
    return ds[keyword].value


def _dimension(ds: Dataset, keyword: str, label: str) -> int:
    value = dicom_int(_require(ds, keyword, label), None)
    if value is None or value <= 0:
        raise ReaderError(f"expected a positive whole number, found {ds[keyword].value!r}", label, keyword)
    return value


def _first_item(groups: list[Dataset], keyword: str) -> Dataset:
    """The first item of a functional group macro, per-frame first, then shared."""
    for group in groups:
        if keyword in group and len(group[keyword].value):
            return group[keyword].value[0]
    return Dataset()


def _images_of(file: Path, header: Dataset) -> list[_Image]:
    """The 2-D images of one file: one for classic files, one per frame for enhanced files."""
    if "PerFrameFunctionalGroupsSequence" in header:
        return _enhanced_images(file)
    if dicom_int(header.get("NumberOfFrames"), 1) > 1:
        raise ReaderError("multi-frame image without per-frame functional groups: its frames cannot be "
                          "placed in space (expected one file per slice, or an enhanced CT/MR file)", file,
                          "PerFrameFunctionalGroupsSequence")
    label = str(file)
    shape = (_dimension(header, "Rows", label), _dimension(header, "Columns", label))
    return [_Image(
        label=label, position=_floats(_require(header, "ImagePositionPatient", label), 3, label, "ImagePositionPatient"),
        orientation=_floats(_require(header, "ImageOrientationPatient", label), 6, label, "ImageOrientationPatient"),
        pixel_spacing=_floats(_require(header, "PixelSpacing", label), 2, label, "PixelSpacing", positive=True),
        shape=shape, trigger_time_ms=dicom_float(header.get("TriggerTime")),
        temporal_index=dicom_int(header.get("TemporalPositionIdentifier"), None),
        slope=_rescale(header, "RescaleSlope", 1.0, label), intercept=_rescale(header, "RescaleIntercept", 0.0, label),
        load=lambda: _single_frame(file, shape),
    )]


def _single_frame(file: Path, shape: tuple[int, int]) -> np.ndarray:
    ds = read_dicom_file(file, check_values=False)  # _series_headers checked the header
    array, photometric = decode_pixels(ds, file)
    # MONOCHROME1 is kept as stored: the rescale to HU is defined on stored values.
    if array.shape != shape or not photometric.startswith("MONOCHROME"):
        raise ReaderError(f"expected one grey {shape} image, found {array.shape} {photometric}", file,
                          "PhotometricInterpretation")
    return array


def _enhanced_images(file: Path) -> list[_Image]:
    """The frames of an enhanced multi-frame CT/MR file, placed by its functional groups."""
    ds = read_dicom_file(file)
    frames = _decoded_frames(ds, file)
    shared = list(ds.get("SharedFunctionalGroupsSequence", []))[:1]
    images = []
    for index, per_frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        groups = [per_frame, *shared]
        label = f"{file} frame {index + 1}"
        transform = _first_item(groups, "PixelValueTransformationSequence")
        images.append(_Image(
            label=label,
            position=_floats(_require(_first_item(groups, "PlanePositionSequence"), "ImagePositionPatient", label),
                             3, label, "ImagePositionPatient"),
            orientation=_floats(_require(_first_item(groups, "PlaneOrientationSequence"), "ImageOrientationPatient",
                                         label), 6, label, "ImageOrientationPatient"),
            pixel_spacing=_floats(_require(_first_item(groups, "PixelMeasuresSequence"), "PixelSpacing", label),
                                  2, label, "PixelSpacing", positive=True),
            shape=frames.shape[1:],
            trigger_time_ms=dicom_float(_first_item(groups, "CardiacSynchronizationSequence")
                                   .get("NominalCardiacTriggerDelayTime")),
            temporal_index=dicom_int(_first_item(groups, "FrameContentSequence").get("TemporalPositionIndex"), None),
            slope=_rescale(transform, "RescaleSlope", 1.0, label),
            intercept=_rescale(transform, "RescaleIntercept", 0.0, label),
            load=functools.partial(frames.__getitem__, index),
        ))
    return images


def _decoded_frames(ds: Dataset, file: Path) -> np.ndarray:
    array, photometric = decode_pixels(ds, file)
    frames = dicom_int(ds.get("NumberOfFrames"), 1)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] != frames or not photometric.startswith("MONOCHROME"):
        raise ReaderError(f"expected {frames} grey frames, decoded {array.shape} {photometric}", file, "PixelData")
    if frames != len(ds.PerFrameFunctionalGroupsSequence):
        raise ReaderError(f"NumberOfFrames is {frames} but there are {len(ds.PerFrameFunctionalGroupsSequence)} "
                          "per-frame functional groups", file, "PerFrameFunctionalGroupsSequence")
    return array


def _check_same_grid(images: list[_Image]) -> None:
    """All images of a series must share orientation, pixel spacing and matrix size."""
    first = images[0]
    for image in images[1:]:
        if image.shape != first.shape:
            raise ReaderError(f"matrix size {image.shape} differs from {first.shape} in {first.label}", image.label,
                              "Rows/Columns")
        if not np.allclose(image.orientation, first.orientation, atol=1e-4):
            raise ReaderError(f"ImageOrientationPatient {image.orientation.tolist()} differs from "
                              f"{first.orientation.tolist()} in {first.label}: mixed orientations in one series",
                              image.label, "ImageOrientationPatient")
        if not np.allclose(image.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise ReaderError(f"PixelSpacing {image.pixel_spacing.tolist()} differs from "
                              f"{first.pixel_spacing.tolist()} in {first.label}: mixed spacing in one series",
                              image.label, "PixelSpacing")


def _slice_normal(image: _Image) -> np.ndarray:
    normal = np.cross(image.orientation[:3], image.orientation[3:])
    if np.linalg.norm(normal) < 1e-3:  # parallel or zero cosines: no plane, no slice order
        raise ReaderError(f"row and column cosines {image.orientation.tolist()} span no plane", image.label,
                          "ImageOrientationPatient")
    return normal


def _group_by_location(images: list[_Image]) -> list[list[_Image]]:
    """Images grouped by slice position, locations ordered along the slice normal."""
    normal = _slice_normal(images[0])
    ordered = sorted(images, key=lambda image: float(image.position @ normal))
    locations = [[ordered[0]]]
    for image in ordered[1:]:
        if (image.position - locations[-1][0].position) @ normal > SAME_POSITION_MM:
            locations.append([image])
        else:
            locations[-1].append(image)
    return locations


def _order_phases(locations: list[list[_Image]]) -> list[list[_Image]]:
    """Phases of a cine as lists of images ordered along the normal; one phase for a static volume.

    Each location's images are ranked by TriggerTime (else TemporalPositionIdentifier):
    trigger times often differ slightly between locations acquired in separate breath-holds.
    """
    counts = [len(location) for location in locations]
    if max(counts) == 1:
        return [[location[0] for location in locations]]
    images = [image for location in locations for image in location]
    if all(image.trigger_time_ms is not None for image in images):
        key = attrgetter("trigger_time_ms")
    elif all(image.temporal_index is not None for image in images):
        key = attrgetter("temporal_index")
    else:
        crowded = next(location for location in locations if len(location) > 1)
        raise ReaderError(f"{len(crowded)} images share one slice position (also {crowded[1].label}) and have "
                          "no TriggerTime or TemporalPositionIdentifier to order them", crowded[0].label,
                          "TriggerTime")
    expected = max(set(counts), key=counts.count)
    for location in locations:
        if len(location) != expected:
            raise ReaderError(f"the slice position of this image has {len(location)} cine phases, the other "
                              f"positions {expected}: missing or extra slices in a phase", location[0].label,
                              "TriggerTime")
        ranked = sorted(location, key=key)
        for earlier, later in pairwise(ranked):
            if key(earlier) == key(later):
                raise ReaderError(f"duplicate image: same slice position and time as {later.label}", earlier.label,
                                  "TriggerTime")
        location[:] = ranked
    return [list(phase) for phase in zip(*locations)]


def _slice_step(positions: np.ndarray, firsts: list[_Image], header: Dataset, tolerance: float) -> np.ndarray:
    """The constant vector between consecutive slice positions; a gap that differs from the
    others (a missing slice, mixed spacing) is an error."""
    if len(positions) == 1:
        return _slice_normal(firsts[0]) * _single_slice_thickness(header, firsts[0].label)
    steps = np.diff(positions, axis=0)
    typical = np.median(steps, axis=0)
    deviation = np.linalg.norm(steps - typical, axis=1)
    bad = np.flatnonzero(deviation > tolerance * np.linalg.norm(typical) + 1e-3)
    if bad.size:
        k = int(bad[0])
        raise ReaderError(f"non-uniform slice spacing: {np.linalg.norm(steps[k]):.4g} mm from here to "
                          f"{firsts[k + 1].label}, where slices are {np.linalg.norm(typical):.4g} mm apart "
                          "(a missing slice or mixed spacing)", firsts[k].label, "ImagePositionPatient")
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def _single_slice_thickness(header: Dataset, label: str) -> float:
    """The extent of a one-slice volume: SpacingBetweenSlices, else SliceThickness, else 1 mm."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = header.get(keyword)
        if value in (None, ""):
            continue
        thickness = dicom_float(value)
        if thickness is None or not 0 < thickness < 1e6:
            raise ReaderError(f"expected a positive finite thickness in mm, found {value!r}", label, keyword)
        return thickness
    return 1.0


def _affine(image: _Image, origin_lps: np.ndarray, step_lps: np.ndarray) -> np.ndarray:
    """Index (z, y, x, 1) -> RAS mm. Columns: slice step, column direction x row spacing,
    row direction x column spacing (PS3.3 C.7.6.2.1.1), then the first pixel's position."""
    row_spacing, column_spacing = image.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = step_lps
    lps[:3, 1] = image.orientation[3:] * row_spacing
    lps[:3, 2] = image.orientation[:3] * column_spacing
    lps[:3, 3] = origin_lps
    return LPS_TO_RAS @ lps


def _frame_times(phases: list[list[_Image]]) -> list[float] | None:
    """Trigger time of each phase, averaged over slice positions; None without TriggerTime."""
    if any(image.trigger_time_ms is None for phase in phases for image in phase):
        return None
    return [float(np.mean([image.trigger_time_ms for image in phase])) for phase in phases]


def _floats(value, count: int, label: str, keyword: str, positive: bool = False) -> np.ndarray:
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ReaderError(f"expected {count} numbers, found {value!r}", label, keyword) from err
    if array.shape != (count,):
        raise ReaderError(f"expected {count} numbers, found {len(array)}", label, keyword)
    # |x| below 1e150: geometry sums and cross products of these stay finite
    if not np.all(np.abs(array) < 1e150) or (positive and not np.all(array > 0)):
        raise ReaderError(f"expected {count} finite{' positive' if positive else ''} numbers, found "
                          f"{array.tolist()}", label, keyword)
    return array


def _rescale(ds: Dataset, keyword: str, default: float, label: str) -> float:
    """RescaleSlope / RescaleIntercept; `default` when absent, refused when not a finite number
    (every voxel would be NaN or infinite)."""
    value = ds.get(keyword)
    if value in (None, ""):
        return default
    number = dicom_float(value)
    if number is None or not np.isfinite(number) or (keyword == "RescaleSlope" and number == 0):
        raise ReaderError(f"expected a finite{' non-zero' if keyword == 'RescaleSlope' else ''} number, "
                          f"found {value!r}", label, keyword)
    return number
