"""Chamber geometry in 2-D label masks: the long axis, the method of disks (single plane and
biplane), the area-length volume and wall chords, in mm from the pixel spacing.

The standards these follow are cited in `measure`, which turns them into measurements.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mmcardio.errors import MMCardioError
from mmcardio.records import Label, Measurement

Spacing = tuple[float, float]
#: Disks of the method of disks (modified Simpson), as ASE/EACVI recommend.
SIMPSON_DISKS = 20


@dataclass(frozen=True)
class LongAxis:
    """A chamber's long axis in a 2-D mask: `start` (mm, row/col) at the apical end (pixel
    edge), unit `direction` toward the base, and `length_mm` up to the basal pixel edge."""

    start: np.ndarray
    direction: np.ndarray
    length_mm: float


def _region(mask: np.ndarray, label: int) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask == label


def points_mm(region: np.ndarray, spacing: Spacing) -> np.ndarray:
    return np.argwhere(region) * np.asarray(spacing, dtype=float)


def _pixel_mm(spacing: Spacing) -> float:
    return float(np.sqrt(spacing[0] * spacing[1]))


def mask_box(mask: np.ndarray, margin: float = 0.0) -> np.ndarray | None:
    """A bool mask's XYXY box (inclusive pixel indices), each side moved out by `margin` x the
    box size within the image; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)
    pad = margin * np.tile(box[2:] - box[:2] + 1, 2) * np.array([-1, -1, 1, 1])
    return np.clip(box + pad, 0, np.tile([mask.shape[1] - 1, mask.shape[0] - 1], 2))


def long_axis(
    region: np.ndarray, spacing: Spacing, neighbour: np.ndarray | None = None
) -> LongAxis:
    """Apex-to-mid-annulus axis of a chamber (ASE). The annulus is the interface with the
    `neighbour` chamber across the valve (LA for the LV, LV for the LA) when the masks meet
    (within 2 pixels); otherwise the basal edge of the wider end of the principal axis. The
    apex is the chamber point farthest from the mid-annulus point (the centre of the pixels
    within one pixel of that distance, so the pixel grid does not tilt the axis)."""
    points = points_mm(region, spacing)
    if len(points) < 3:
        raise MMCardioError(
            f"a chamber mask needs at least 3 pixels for a long axis, got {len(points)}"
        )
    pixel = _pixel_mm(spacing)
    interface = (
        (region & ndimage.binary_dilation(neighbour, iterations=2))
        if neighbour is not None
        else None
    )
    if interface is not None and interface.any():
        annulus_mid = points_mm(interface, spacing).mean(axis=0)
    else:
        annulus_mid = _wide_end_edge(points, pixel)
    distance = np.linalg.norm(points - annulus_mid, axis=1)
    apex = points[distance >= distance.max() - pixel].mean(axis=0)
    direction = (annulus_mid - apex) / np.linalg.norm(annulus_mid - apex)
    s = (points - apex) @ direction
    # Pixel centres sit half a pixel inside the chamber at each end.
    return LongAxis(
        apex + (s.min() - pixel / 2) * direction, direction, float(s.max() - s.min() + pixel)
    )


def _wide_end_edge(points: np.ndarray, pixel: float) -> np.ndarray:
    """Centre of the edge at the wider end of a region's principal axis (a ventricle's base)."""
    centre = points.mean(axis=0)
    direction = np.linalg.eigh(np.cov((points - centre).T))[1][:, -1]
    s = (points - centre) @ direction
    tail = 0.2 * (s.max() - s.min())
    if np.count_nonzero(s > s.max() - tail) < np.count_nonzero(s < s.min() + tail):
        s = -s
    return points[s >= s.max() - pixel].mean(axis=0)


def _disk_diameters(
    region: np.ndarray, spacing: Spacing, axis: LongAxis, n_disks: int, subsamples: int = 4
) -> np.ndarray:
    """Mean chamber width (mm) in each of `n_disks` slabs across the long axis: slab area /
    slab height. Each pixel's area is split over the slabs by `subsamples` x `subsamples`
    points, so slab edges that do not fall on pixel edges do not make the widths jitter."""
    offsets = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    grid = np.stack(
        np.meshgrid(offsets * spacing[0], offsets * spacing[1], indexing="ij"), -1
    ).reshape(-1, 2)
    s = ((points_mm(region, spacing) - axis.start) @ axis.direction)[:, None] + (
        grid @ axis.direction
    )[None, :]
    counts, _ = np.histogram(s, bins=n_disks, range=(0.0, axis.length_mm))
    return counts * (spacing[0] * spacing[1] / subsamples**2) / (axis.length_mm / n_disks)


def method_of_disks(
    views: list[tuple[np.ndarray, Spacing]],
    n_disks: int = SIMPSON_DISKS,
    neighbours: list[np.ndarray | None] | None = None,
) -> Measurement:
    """Chamber volume (mL) by the method of disks from one region (circular disks) or two
    orthogonal regions (elliptical disks), each given as (boolean 2-D region, (row, col) mm);
    `neighbours`: per view, the chamber across the valve, which locates the annulus."""
    if len(views) not in (1, 2):
        raise MMCardioError(f"the method of disks takes one or two views, got {len(views)}")
    neighbours = neighbours or [None] * len(views)
    axes = [
        long_axis(region, spacing, other) for (region, spacing), other in zip(views, neighbours)
    ]
    diameters = [
        _disk_diameters(region, spacing, axis, n_disks)
        for (region, spacing), axis in zip(views, axes)
    ]
    length = max(axis.length_mm for axis in axes)
    volume_mm3 = np.pi / 4 * np.sum(diameters[0] * diameters[-1]) * length / n_disks
    return Measurement(float(volume_mm3 / 1000.0), "mL")


def biplane_simpson_volume(
    a4c_mask_2d: np.ndarray,
    a2c_mask_2d: np.ndarray,
    spacing_mm: Spacing,
    n_disks: int = SIMPSON_DISKS,
    a2c_spacing_mm: Spacing | None = None,
) -> Measurement:
    """LV volume (mL) by the ASE biplane method of disks from A4C and A2C masks at one phase.

    Masks are label maps (LV cavity = `Label.LV_CAVITY`; an LA label, if present, locates the
    mitral annulus) or boolean LV-cavity masks. `spacing_mm` is the A4C (row, col) pixel
    spacing, also used for A2C unless `a2c_spacing_mm` is given.
    """
    masks = [np.asarray(a4c_mask_2d), np.asarray(a2c_mask_2d)]
    spacings = [tuple(spacing_mm), tuple(a2c_spacing_mm or spacing_mm)]
    return method_of_disks(
        [(_region(m, Label.LV_CAVITY), sp) for m, sp in zip(masks, spacings)],
        n_disks,
        [other_region(m, Label.LA_CAVITY) for m in masks],
    )


def other_region(mask: np.ndarray, label: int) -> np.ndarray | None:
    """The region of `label` in a label map (None for a boolean mask or an absent label)."""
    return None if mask.dtype == bool or not np.any(mask == label) else mask == label


def single_plane_volume(mask_2d: np.ndarray, spacing_mm: Spacing) -> Measurement:
    """LV volume (mL) by the single-plane area-length method, V = 8 A^2 / (3 pi L), with L the
    apex-to-mid-annulus length (ASE): the fallback when only one apical view exists."""
    mask = np.asarray(mask_2d)
    region = _region(mask, Label.LV_CAVITY)
    area = np.count_nonzero(region) * spacing_mm[0] * spacing_mm[1]
    length = long_axis(region, spacing_mm, other_region(mask, Label.LA_CAVITY)).length_mm
    return Measurement(float(8 * area**2 / (3 * np.pi * length) / 1000.0), "mL")


def wall_chords(
    labels: np.ndarray,
    spacing: Spacing,
    origins: np.ndarray,
    directions: np.ndarray,
    step_mm: float = 0.05,
) -> np.ndarray:
    """Wall thickness (mm) along rays that start inside the LV cavity: the length of the
    myocardium run where each ray leaves the cavity, sampling the label map at nearest pixels
    (the pixel staircase straddles the true boundary, so chord lengths are unbiased). Rays
    that leave the cavity into anything but myocardium give no sample.

    origins, directions: (n, 2) in mm (row, col); directions are unit vectors.
    """
    reach = np.hypot(*(np.asarray(labels.shape) * np.asarray(spacing)))
    t = np.arange(0.0, reach, step_mm)
    points = origins[:, None, :] + t[None, :, None] * directions[:, None, :]
    index = np.round(points / np.asarray(spacing)).astype(np.intp)
    inside = np.all((index >= 0) & (index < np.asarray(labels.shape)), axis=-1)
    along = np.where(
        inside,
        labels[
            index[..., 0].clip(0, labels.shape[0] - 1), index[..., 1].clip(0, labels.shape[1] - 1)
        ],
        Label.BACKGROUND,
    )
    leave = np.argmax(along != Label.LV_CAVITY, axis=1)
    beyond = np.arange(t.size)[None, :] >= leave[:, None]
    end = np.argmax(beyond & (along != Label.LV_MYOCARDIUM), axis=1)
    rows = np.arange(len(origins))
    valid = (along[rows, 0] == Label.LV_CAVITY) & (along[rows, leave] == Label.LV_MYOCARDIUM)
    valid &= end > leave
    return (end - leave)[valid] * step_mm
