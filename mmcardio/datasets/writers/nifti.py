"""Write volumes and label maps as NIfTI-1 (nibabel): the inverse of `read_nifti`."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from mmcardio.datasets.readers.nifti import IJK_TO_ZYX, LABEL_UNITS
from mmcardio.io import atomic_path
from mmcardio.records import Volume

__all__ = ["write_nifti"]


def write_nifti(volume: Volume | np.ndarray, path: str | Path, affine: np.ndarray | None = None) -> Path:
    """Write a `Volume` (or a bare (z, y, x) / (t, z, y, x) array) to `path` (.nii or .nii.gz).

    affine: index (z, y, x) -> RAS mm, for bare arrays (default identity). Integer/bool arrays
    given bare, and volumes with units "label", are stored as label maps (intent "label",
    uint8 when values fit). Cines store their frame interval in pixdim[4] (ms) and the
    first frame time in toffset; the description records modality and units.
    """
    if isinstance(volume, Volume):
        array, affine = np.asarray(volume.array), volume.affine
        is_label = volume.units == LABEL_UNITS
        description = f"modality={volume.modality} units={volume.units}"
        frame_times = volume.frame_times_ms
    else:
        array = np.asarray(volume)
        affine = np.eye(4) if affine is None else affine
        is_label = array.dtype == bool or np.issubdtype(array.dtype, np.integer)
        description, frame_times = "", None
    if array.ndim not in (3, 4):
        raise ValueError(f"expected a (z, y, x) or (t, z, y, x) array, got shape {array.shape}")
    if is_label and (array.dtype == bool or (array.min() >= 0 and array.max() <= 255)):
        array = array.astype(np.uint8)
    # A transposed view, not a copy: nibabel writes Fortran order, which is this array's C order.
    data = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64) @ IJK_TO_ZYX)
    header = image.header
    header.set_xyzt_units("mm", "msec")
    header["descrip"] = description.encode("ascii", errors="replace")[:79]
    if is_label:
        header.set_intent("label")
    if frame_times is not None and len(frame_times) > 1:
        header["pixdim"][4] = _uniform_step(frame_times)
        header["toffset"] = float(frame_times[0])
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


def _uniform_step(frame_times_ms: list[float]) -> float:
    """NIfTI holds one time step: refuse frame times it cannot represent."""
    steps = np.diff(np.asarray(frame_times_ms, dtype=np.float64))
    step = float(steps.mean())
    if step <= 0 or np.abs(steps - step).max() > 1e-3 * step + 1e-6:
        raise ValueError(f"frame times are not evenly spaced ({frame_times_ms}); NIfTI stores one time step")
    return step
