"""CT coronary calcium scoring (Agatston et al. 1990), from a HU volume and an optional mask.

On each axial slice, every connected region >= 130 HU with an area >= 1 mm^2 is a lesion;
score = area (mm^2) x density weight of its peak HU (1: 130-199, 2: 200-299, 3: 300-399,
4: >= 400), summed, scaled by slice thickness / 3 mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mmcardio.errors import MMCardioError
from mmcardio.records import Label, StructuralMeasurement, Volume

AGATSTON_THRESHOLD_HU = 130.0
AGATSTON_MIN_AREA_MM2 = 1.0
AGATSTON_REFERENCE_SLICE_MM = 3.0
#: Lower HU bound of density weights 1, 2, 3 and 4.
AGATSTON_WEIGHT_BOUNDS_HU = (130.0, 200.0, 300.0, 400.0)
#: In-plane 8-connectivity only: Agatston lesions are regions of one slice.
SLICE_CONNECTIVITY = np.array([np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3))], dtype=bool)


def agatston_score(
    hu: np.ndarray, spacing_mm: tuple[float, float, float], lesion_mask: np.ndarray | None = None
) -> tuple[float, float, int]:
    """(Agatston score, calcium volume mm^3, lesion count) of a (z, y, x) HU volume.

    Lesions are 8-connected regions >= 130 HU within one slice with area >= 1 mm^2; with
    `lesion_mask`, only regions overlapping it count (the reader's choice of coronary lesions,
    which excludes bone and contrast). The slice thickness is the z spacing.
    """
    score, volume, slices = _score(hu, spacing_mm, lesion_mask)
    return score, volume, len(slices)


def agatston_lesions(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> tuple[np.ndarray, int, np.ndarray]:
    """(lesion labels of the volume, their count n, big enough [n + 1]: area >= 1 mm^2) of
    the in-plane 8-connected regions >= 130 HU; label 0 (no lesion) is never big enough."""
    labels, n = ndimage.label(np.asarray(hu) >= AGATSTON_THRESHOLD_HU, structure=SLICE_CONNECTIVITY)
    area = np.bincount(labels.ravel(), minlength=n + 1) * float(spacing_mm[1]) * float(spacing_mm[2])
    big = area >= AGATSTON_MIN_AREA_MM2
    big[0] = False
    return labels, n, big


def _score(
    hu: np.ndarray, spacing_mm: tuple[float, float, float], lesion_mask: np.ndarray | None
) -> tuple[float, float, np.ndarray]:
    """(score, calcium volume mm^3, the slice of each counted lesion)."""
    hu = np.asarray(hu)
    labels, n, big = agatston_lesions(hu, spacing_mm)
    if n == 0:
        return 0.0, 0.0, np.empty(0, dtype=np.intp)
    above = labels > 0
    dz, dy, dx = (float(s) for s in spacing_mm)
    lesion_of = labels[above]  # only the few voxels above threshold are looked at again
    pixels = np.bincount(lesion_of, minlength=n + 1)[1:]
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, lesion_of, hu[above])
    slice_of = np.zeros(n + 1, dtype=np.intp)
    slice_of[lesion_of] = np.nonzero(above)[0]  # a lesion lies in one slice
    area = pixels * dy * dx
    keep = big[1:].copy()
    if lesion_mask is not None:
        keep &= (
            np.bincount(lesion_of, weights=np.asarray(lesion_mask)[above], minlength=n + 1)[1:] > 0
        )
    weight = np.searchsorted(AGATSTON_WEIGHT_BOUNDS_HU, peak[1:], side="right")
    score = float(np.sum(area[keep] * weight[keep]) * dz / AGATSTON_REFERENCE_SLICE_MM)
    return score, float(np.sum(pixels[keep]) * dz * dy * dx), slice_of[1:][keep]


def check_ct(ct: Volume) -> None:
    """Refuse anything but a (z, y, x) CT in HU."""
    if ct.array.ndim != 3 or ct.units != "HU":
        raise MMCardioError(
            f"expected a (z, y, x) CT in HU, got shape {ct.array.shape} in {ct.units!r}",
            ct.source,
            "ct",
        )


def _checked_lesions(ct: Volume, mask: Volume | None) -> np.ndarray | None:
    check_ct(ct)
    if mask is None:
        return None
    if mask.array.shape != ct.array.shape:
        raise MMCardioError(
            f"mask shape {mask.array.shape} differs from CT shape {ct.array.shape}",
            mask.source,
            "ct",
        )
    return np.asarray(mask.array) == Label.CORONARY_CALCIUM


def measure_ct(ct: Volume, mask: Volume | None = None) -> dict[str, StructuralMeasurement]:
    """Agatston score (AU) and calcium volume (mm^3) of a non-contrast (z, y, x) CT in HU,
    citing the slices of the lesions counted.

    With `mask`, only lesions overlapping `Label.CORONARY_CALCIUM` count; without it, every
    lesion in the volume counts (use on a volume cropped to the coronaries).
    """
    lesions = _checked_lesions(ct, mask)
    score, volume, slices = _score(ct.array, ct.spacing_mm, lesions)
    used = tuple(int(z) for z in np.unique(slices))
    where = "lesions overlapping the calcium mask" if mask is not None else "every lesion"
    method = (
        f"Agatston, {AGATSTON_THRESHOLD_HU:g} HU, >= {AGATSTON_MIN_AREA_MM2:g} mm2, {where}, "
        f"x slice thickness / {AGATSTON_REFERENCE_SLICE_MM:g} mm"
    )
    return {
        "agatston": StructuralMeasurement(score, "AU", "ct", {}, used, method),
        "calcium_volume": StructuralMeasurement(
            volume, "mm3", "ct", {}, used, f"voxels of {where}"
        ),
    }
