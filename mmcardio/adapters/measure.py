"""Masks -> chamber measurements (volumes, EF, mass, wall thickness) by the clinical standards.

Masks hold the label values of `mmcardio.records.Label`; CT calcium scoring is in `calcium`.

- Echo (ASE/EACVI chamber quantification, Lang et al. 2015): LV volumes by the biplane method
  of disks (modified Simpson) from the apical 4- and 2-chamber views: the long axis runs from
  the apex to the mid-point of the mitral annulus, is cut into 20 disks, and each disk is an
  ellipse whose two diameters come from the two orthogonal views; the disk height is the
  longer of the two lengths / 20. With one view: the area-length method (8 A^2 / 3 pi L).
  ED is the frame of largest LV area, ES the smallest. LA volume is measured at LV
  end-systole (LA maximal) by the method of disks along the LA long axis.
- CMR (SCMR post-processing recommendations, Schulz-Menger et al. 2020): disk summation,
  volume = sum of slice areas x slice spacing; ED/ES are the phases of largest/smallest LV
  volume; LV mass = ED myocardial volume x 1.05 g/mL; wall thickness is the mean of radial
  chords from the cavity centroid over the mid-ventricular third of the stack at ED.
- Wall thickness in apical echo views: chords perpendicular to the LV long axis across both
  walls over the middle third of the axis, at ED.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mmcardio.errors import MMCardioError
from mmcardio.records import Label, Volume
from mmcardio.study import Measurement

Spacing = tuple[float, float]

MYOCARDIAL_DENSITY_G_PER_ML = 1.05
SIMPSON_DISKS = 20


def ejection_fraction(edv_ml: float, esv_ml: float) -> Measurement:
    """EF = (EDV - ESV) / EDV in percent."""
    if not edv_ml > 0:
        raise MMCardioError(
            f"end-diastolic volume must be positive to compute an EF, got {edv_ml} mL",
            field="lvedv",
        )
    return Measurement(100.0 * (edv_ml - esv_ml) / edv_ml, "%")


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


def _points_mm(region: np.ndarray, spacing: Spacing) -> np.ndarray:
    return np.argwhere(region) * np.asarray(spacing, dtype=float)


def _pixel_mm(spacing: Spacing) -> float:
    return float(np.sqrt(spacing[0] * spacing[1]))


def long_axis(
    region: np.ndarray, spacing: Spacing, neighbour: np.ndarray | None = None
) -> LongAxis:
    """Apex-to-mid-annulus axis of a chamber (ASE). The annulus is the interface with the
    `neighbour` chamber across the valve (LA for the LV, LV for the LA) when the masks meet
    (within 2 pixels); otherwise the basal edge of the wider end of the principal axis. The
    apex is the chamber point farthest from the mid-annulus point (the centre of the pixels
    within one pixel of that distance, so the pixel grid does not tilt the axis)."""
    points = _points_mm(region, spacing)
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
        annulus_mid = _points_mm(interface, spacing).mean(axis=0)
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
    s = ((_points_mm(region, spacing) - axis.start) @ axis.direction)[:, None] + (
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
        [_other(m, Label.LA_CAVITY) for m in masks],
    )


def _other(mask: np.ndarray, label: int) -> np.ndarray | None:
    """The region of `label` in a label map (None for a boolean mask or an absent label)."""
    return None if mask.dtype == bool or not np.any(mask == label) else mask == label


def single_plane_volume(mask_2d: np.ndarray, spacing_mm: Spacing) -> Measurement:
    """LV volume (mL) by the single-plane area-length method, V = 8 A^2 / (3 pi L), with L the
    apex-to-mid-annulus length (ASE): the fallback when only one apical view exists."""
    mask = np.asarray(mask_2d)
    region = _region(mask, Label.LV_CAVITY)
    area = np.count_nonzero(region) * spacing_mm[0] * spacing_mm[1]
    length = long_axis(region, spacing_mm, _other(mask, Label.LA_CAVITY)).length_mm
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


def _view_frames(view: str, mask: np.ndarray) -> tuple[int, int]:
    if mask.ndim != 3:
        raise MMCardioError(
            f"expected a [T, H, W] label mask, got shape {mask.shape}", field=f"echo:{view}"
        )
    areas = np.count_nonzero(mask == Label.LV_CAVITY, axis=(1, 2))
    if not areas.any():
        raise MMCardioError("no LV cavity (label 1) in any frame", field=f"echo:{view}")
    return int(np.argmax(areas)), int(np.argmin(np.where(areas > 0, areas, areas.max() + 1)))


def _mid_wall_thickness(mask: np.ndarray, spacing: Spacing, levels: int = 15) -> np.ndarray:
    """Thickness samples of an apical-view frame: chords perpendicular to the LV long axis
    (the ASE convention for linear wall measurements), both walls, over the middle third."""
    axis = long_axis(mask == Label.LV_CAVITY, spacing, _other(mask, Label.LA_CAVITY))
    heights = axis.length_mm * np.linspace(1 / 3, 2 / 3, levels)
    origins = np.repeat(axis.start + heights[:, None] * axis.direction, 2, axis=0)
    across = np.array([-axis.direction[1], axis.direction[0]])
    return wall_chords(mask, spacing, origins, np.tile([across, -across], (levels, 1)))


def measure_echo(masks: Mapping[str, tuple[np.ndarray, Spacing]]) -> dict[str, Measurement]:
    """LV volumes and EF, mid-ventricular wall thickness and LA volume from apical-view masks.

    masks: view ("A4C", "A2C") -> (label mask [T, H, W], (row, col) pixel spacing in mm).
    Biplane method of disks when both views are given, area-length with one view.
    """
    views = {
        str(v).upper(): (np.asarray(m), tuple(float(x) for x in sp)) for v, (m, sp) in masks.items()
    }
    views = {v: views[v] for v in ("A4C", "A2C") if v in views}
    if not views:
        raise MMCardioError(f"need an A4C or A2C mask, got views {sorted(masks)}", field="echo")
    frames = {v: _view_frames(v, m) for v, (m, _) in views.items()}
    out: dict[str, Measurement] = {}
    for key, which in (("lvedv", 0), ("lvesv", 1)):
        phase = [(views[v][0][frames[v][which]], views[v][1]) for v in views]
        out[key] = (
            biplane_simpson_volume(
                phase[0][0], phase[1][0], phase[0][1], a2c_spacing_mm=phase[1][1]
            )
            if len(phase) == 2
            else single_plane_volume(*phase[0])
        )
    out["lvef"] = ejection_fraction(out["lvedv"].value, out["lvesv"].value)
    thickness = [
        _mid_wall_thickness(m[frames[v][0]], sp)
        for v, (m, sp) in views.items()
        if np.any(m[frames[v][0]] == Label.LV_MYOCARDIUM)
    ]
    samples = np.concatenate(thickness) if thickness else np.empty(0)
    if samples.size:
        out["wall_thickness"] = Measurement(float(samples.mean()), "mm")
    atria = [
        (m[frames[v][1]], sp)
        for v, (m, sp) in views.items()
        if np.any(m[frames[v][1]] == Label.LA_CAVITY)
    ]
    if atria:
        out["la_volume"] = method_of_disks(
            [(m == Label.LA_CAVITY, sp) for m, sp in atria],
            neighbours=[_other(m, Label.LV_CAVITY) for m, _ in atria],
        )
    return out


def measure_cmr(mask: Volume) -> dict[str, Measurement]:
    """LV volumes, EF, mass and mid-ventricular wall thickness, and RVEDV, from a short-axis
    cine label map (t, z, y, x) whose z spacing is the slice spacing (thickness + gap)."""
    labels = np.asarray(mask.array)
    if labels.ndim != 4:
        raise MMCardioError(
            f"expected a (t, z, y, x) short-axis cine mask, got shape {labels.shape}",
            mask.source,
            "cmr",
        )
    dz, dy, dx = (float(s) for s in mask.spacing_mm)
    voxel_ml = dz * dy * dx / 1000.0
    lv = np.count_nonzero(labels == Label.LV_CAVITY, axis=(1, 2, 3)) * voxel_ml
    if not lv.any():
        raise MMCardioError("no LV cavity (label 1) in any phase", mask.source, "cmr")
    ed, es = int(np.argmax(lv)), int(np.argmin(lv))
    out = {
        "lvedv": Measurement(float(lv[ed]), "mL"),
        "lvesv": Measurement(float(lv[es]), "mL"),
        "lvef": ejection_fraction(float(lv[ed]), float(lv[es])),
    }
    myocardium = labels[ed] == Label.LV_MYOCARDIUM
    if myocardium.any():
        out["lv_mass"] = Measurement(
            float(np.count_nonzero(myocardium) * voxel_ml * MYOCARDIAL_DENSITY_G_PER_ML), "g"
        )
        thickness = _cmr_wall_thickness(labels[ed], (dy, dx))
        if thickness is not None:
            out["wall_thickness"] = Measurement(thickness, "mm")
    rv = np.count_nonzero(labels == Label.RV_CAVITY, axis=(1, 2, 3)) * voxel_ml
    if rv.any():
        out["rvedv"] = Measurement(float(rv.max()), "mL")
    return out


def _cmr_wall_thickness(labels: np.ndarray, spacing: Spacing, rays: int = 72) -> float | None:
    """Mean radial chord thickness (from the cavity centroid) over the middle third of the
    slices that hold LV cavity; None when no chord crosses myocardium."""
    with_cavity = np.flatnonzero(np.any(labels == Label.LV_CAVITY, axis=(1, 2)))
    third = len(with_cavity) // 3
    angles = np.arange(rays) * 2 * np.pi / rays
    directions = np.stack([np.sin(angles), np.cos(angles)], axis=1)
    samples = []
    for z in with_cavity[third : len(with_cavity) - third]:
        centre = _points_mm(labels[z] == Label.LV_CAVITY, spacing).mean(axis=0)
        samples.append(wall_chords(labels[z], spacing, np.tile(centre, (rays, 1)), directions))
    samples = np.concatenate(samples)
    return float(samples.mean()) if samples.size else None
