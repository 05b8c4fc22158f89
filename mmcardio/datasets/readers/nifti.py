"""NIfTI-1/2 -> `Volume`, read with nibabel.

nibabel indexes voxels (i, j, k[, t]); we store (z, y, x) / (t, z, y, x) = (k, j, i), so the
array is transposed and the affine's first three columns reversed to keep index -> RAS exact.
"""
from __future__ import annotations

import logging
import math
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from mmcardio.datasets.readers.limits import DEFLATE_MAX_RATIO, check_claim, require_file
from mmcardio.errors import ReaderError
from mmcardio.modality import Modality
from mmcardio.records import Volume

__all__ = ["IJK_TO_ZYX", "LABEL_UNITS", "read_nifti"]

log = logging.getLogger(__name__)

#: Right-multiplying an affine by this swaps its index order (i, j, k) <-> (z, y, x) = (k, j, i).
IJK_TO_ZYX = np.eye(4)[:, [2, 1, 0, 3]]
#: `Volume.units` of an integer label map (NIfTI intent NIFTI_INTENT_LABEL).
LABEL_UNITS = "label"
SPACE_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}  # unknown: mm by convention
TIME_UNIT_TO_MS = {"sec": 1000.0, "msec": 1.0, "usec": 0.001}


def read_nifti(path: str | Path, modality: str | None = None) -> Volume:
    """Read a 3-D (z, y, x) or 4-D cine (t, z, y, x) NIfTI file.

    modality: "ct", "cmr" or "echo" (masks); when None, the header description
    ("modality=..." as our writer stores it) is used, else "unknown". Units are "HU" for CT
    (or a description naming HU), "label" for label maps, otherwise "a.u.".
    """
    path = Path(path)
    require_file(path)
    image, data = _load(path)
    while data.ndim > 4 or (data.ndim == 4 and data.shape[3] == 1):
        if data.shape[-1] != 1:
            raise ReaderError(f"expected a 3-D or 4-D image, found shape {data.shape}", path, "dim")
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim not in (3, 4) or data.size == 0:  # dim[0] of 0 or 1, or a dimension of 0
        raise ReaderError(f"expected a 2-D, 3-D or 4-D image with voxels, found shape {data.shape}", path, "dim")
    header = image.header
    try:
        space_unit, time_unit = header.get_xyzt_units()
    except KeyError as err:
        raise ReaderError(f"unknown unit code {err} in the header", path, "xyzt_units") from err
    affine = np.array(image.affine, dtype=np.float64)
    affine[:3] *= SPACE_UNIT_TO_MM.get(space_unit, 1.0)
    affine = affine @ IJK_TO_ZYX
    array = np.ascontiguousarray(data.transpose(2, 1, 0) if data.ndim == 3 else data.transpose(3, 2, 1, 0))
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    description = _description(header)
    kind = _modality(modality, description)
    return Volume(
        array=array, spacing_mm=_spacing_mm(affine, array.shape[-3:], path),
        affine=affine, units=_units(header, kind, description), modality=kind,
        frame_times_ms=_frame_times_ms(header, array.shape[0], time_unit, path) if array.ndim == 4 else None,
        source=str(path),
    )


def _load(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    try:
        image = nib.load(path)
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ReaderError(f"not a NIfTI image (nibabel reads it as {type(image).__name__})", path)
        check_voxel_claim(image, path)
        return image, np.asanyarray(image.dataobj)
    except (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, OverflowError, zlib.error) as err:
        raise ReaderError(f"not a readable NIfTI file, or truncated ({type(err).__name__}: {err})", path) from err


def _spacing_mm(affine: np.ndarray, shape: tuple[int, ...], path: Path) -> tuple[float, float, float]:
    """(z, y, x) voxel size from the affine; refused when the affine is not finite or an axis
    holding more than one voxel has no extent (a corrupt pixdim, qform or sform): every
    resampling divides by it. A single slice's zero thickness is left as the file states it."""
    spacing = tuple(float(np.linalg.norm(affine[:3, axis])) for axis in range(3))
    if not np.all(np.isfinite(affine)) or any(s <= 0 and n > 1 for s, n in zip(spacing, shape)):
        raise ReaderError(f"voxel spacing {spacing} mm (z, y, x) from the header's affine is not finite and "
                          "positive: pixdim, qform or sform is corrupt", path, "pixdim")
    return spacing


def check_voxel_claim(image: nib.Nifti1Image, path: Path) -> int:
    """Refuse a header whose dimensions need more bytes than the image file can hold; returns
    the bytes of voxels it claims."""
    shape = image.header.get_data_shape()
    claimed = math.prod(int(n) for n in shape) * image.header.get_data_dtype().itemsize
    data_file = Path(image.file_map["image"].filename)
    stored = data_file.stat().st_size
    name = data_file.name.lower()
    # gzip bounds the voxels by its ratio; bz2 and zstd compress runs too well to bound
    available = stored * DEFLATE_MAX_RATIO if name.endswith(".gz") else \
        None if name.endswith((".bz2", ".zst")) else stored
    check_claim(path, "dim", claimed, available,
                f"{'x'.join(map(str, shape))} voxels of {image.header.get_data_dtype()}")
    return claimed


def _description(header) -> str:
    return bytes(header["descrip"]).split(b"\0", 1)[0].decode("latin-1", errors="replace")


def _modality(requested: str | None, description: str) -> str:
    if requested:
        return str(Modality(requested))
    stated = re.search(r"modality=(\w+)", description)
    if stated and stated.group(1) in {m.value for m in Modality}:
        return stated.group(1)
    return "unknown"


def _units(header, modality: str, description: str) -> str:
    if header.get_intent()[0] == "label":
        return LABEL_UNITS
    if modality == Modality.CT.value or re.search(r"\bHU\b", description):
        return "HU"
    return "a.u."


def _frame_times_ms(header, frames: int, time_unit: str, path: Path) -> list[float] | None:
    """Times of the t index from pixdim[4] and toffset, in ms; None when the unit is not a time."""
    step = float(header["pixdim"][4])
    if time_unit not in TIME_UNIT_TO_MS or not (math.isfinite(step) and step > 0):
        log.debug("%s: time unit %r and step %s state no frame times", path, time_unit, step)
        return None
    scale = TIME_UNIT_TO_MS[time_unit]
    offset = float(header["toffset"])
    if not math.isfinite(offset):
        raise ReaderError(f"expected a finite time offset, found {offset}", path, "toffset")
    return [(offset + index * step) * scale for index in range(frames)]
