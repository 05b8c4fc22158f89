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

Results are `StructuralMeasurement`s: value and unit plus the views, ED/ES frames or slices,
method and confidence they came from (the manifest keeps only value and unit).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mmcardio.adapters.geometry import (
    SIMPSON_DISKS,
    Spacing,
    biplane_simpson_volume,
    long_axis,
    method_of_disks,
    other_region,
    points_mm,
    single_plane_volume,
    wall_chords,
)
from mmcardio.errors import MMCardioError
from mmcardio.records import Label, Measurement, StructuralMeasurement, Volume

MYOCARDIAL_DENSITY_G_PER_ML = 1.05


def ejection_fraction(edv_ml: float, esv_ml: float) -> Measurement:
    """EF = (EDV - ESV) / EDV in percent."""
    if not edv_ml > 0:
        raise MMCardioError(
            f"end-diastolic volume must be positive to compute an EF, got {edv_ml} mL",
            field="lvedv",
        )
    return Measurement(100.0 * (edv_ml - esv_ml) / edv_ml, "%")


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
    axis = long_axis(mask == Label.LV_CAVITY, spacing, other_region(mask, Label.LA_CAVITY))
    heights = axis.length_mm * np.linspace(1 / 3, 2 / 3, levels)
    origins = np.repeat(axis.start + heights[:, None] * axis.direction, 2, axis=0)
    across = np.array([-axis.direction[1], axis.direction[0]])
    return wall_chords(mask, spacing, origins, np.tile([across, -across], (levels, 1)))


def _cited(m: Measurement, source: str, frames: dict, method: str, **kw) -> StructuralMeasurement:
    return StructuralMeasurement(m.value, m.unit, source, frames, method=method, **kw)


def _agreement(volumes: list[float]) -> float | None:
    """Smaller / larger of two views' single-plane volumes: 1 when the apical views agree;
    None with one view (nothing to check it against)."""
    return min(volumes) / max(volumes) if len(volumes) == 2 and max(volumes) > 0 else None


def _echo_views(masks: Mapping[str, tuple[np.ndarray, Spacing]]) -> dict:
    views = {
        str(v).upper(): (np.asarray(m), tuple(float(x) for x in sp)) for v, (m, sp) in masks.items()
    }
    views = {v: views[v] for v in ("A4C", "A2C") if v in views}
    if not views:
        raise MMCardioError(f"need an A4C or A2C mask, got views {sorted(masks)}", field="echo")
    return views


def _lv_volume(views: dict, frames: dict, which: int) -> StructuralMeasurement:
    """LV volume at ED (`which` 0) or ES (1): biplane disks, or area-length with one view."""
    phase = {v: (m[frames[v][which]], sp) for v, (m, sp) in views.items()}
    used = {v: (frames[v][which],) for v in views}
    source = "echo:" + "+".join(views)
    if len(phase) == 1:
        ((view, (mask, spacing)),) = phase.items()
        return _cited(single_plane_volume(mask, spacing), source, used, f"area-length, {view}")
    (a4c, a4c_spacing), (a2c, a2c_spacing) = phase["A4C"], phase["A2C"]
    volume = biplane_simpson_volume(a4c, a2c, a4c_spacing, a2c_spacing_mm=a2c_spacing)
    single = [single_plane_volume(m, sp).value for m, sp in phase.values()]
    method = f"biplane method of disks ({SIMPSON_DISKS})"
    return _cited(volume, source, used, method, confidence=_agreement(single))


def _echo_wall_thickness(views: dict, frames: dict) -> StructuralMeasurement | None:
    used = {
        v: (frames[v][0],)
        for v, (m, _) in views.items()
        if np.any(m[frames[v][0]] == Label.LV_MYOCARDIUM)
    }
    samples = [_mid_wall_thickness(views[v][0][f], views[v][1]) for v, (f,) in used.items()]
    samples = np.concatenate(samples) if samples else np.empty(0)
    if not samples.size:
        return None
    method = "chords across both walls perpendicular to the LV long axis, middle third, ED"
    value = Measurement(float(samples.mean()), "mm")
    return _cited(value, "echo:" + "+".join(used), used, method)


def _la_volume(views: dict, frames: dict) -> StructuralMeasurement | None:
    """LA volume at LV end-systole by the method of disks (biplane with both views)."""
    atria = {
        v: (m[frames[v][1]], sp)
        for v, (m, sp) in views.items()
        if np.any(m[frames[v][1]] == Label.LA_CAVITY)
    }
    if not atria:
        return None
    regions = [(m == Label.LA_CAVITY, sp) for m, sp in atria.values()]
    neighbours = [other_region(m, Label.LV_CAVITY) for m, _ in atria.values()]
    volume = method_of_disks(regions, neighbours=neighbours)
    single = [method_of_disks([r], neighbours=[n]).value for r, n in zip(regions, neighbours)]
    method = f"{'bi' if len(atria) == 2 else 'single-'}plane method of disks ({SIMPSON_DISKS}), ES"
    used = {v: (frames[v][1],) for v in atria}
    return _cited(volume, "echo:" + "+".join(atria), used, method, confidence=_agreement(single))


def measure_echo(
    masks: Mapping[str, tuple[np.ndarray, Spacing]],
) -> dict[str, StructuralMeasurement]:
    """LV volumes and EF, mid-ventricular wall thickness and LA volume from apical-view masks.

    masks: view ("A4C", "A2C") -> (label mask [T, H, W], (row, col) pixel spacing in mm).
    Biplane method of disks when both views are given, area-length with one view. Each
    result cites the view(s) and ED/ES frames it came from; volumes and EF carry the
    agreement of the two views' single-plane volumes as their confidence.
    """
    views = _echo_views(masks)
    frames = {v: _view_frames(v, m) for v, (m, _) in views.items()}
    out = {"lvedv": _lv_volume(views, frames, 0), "lvesv": _lv_volume(views, frames, 1)}
    ed, es = out["lvedv"], out["lvesv"]
    confidence = None if ed.confidence is None else min(ed.confidence, es.confidence)
    out["lvef"] = _cited(
        ejection_fraction(ed.value, es.value), ed.source, frames, ed.method, confidence=confidence
    )
    for key, found in (("wall_thickness", _echo_wall_thickness), ("la_volume", _la_volume)):
        value = found(views, frames)
        if value is not None:
            out[key] = value
    return out


def _cmr_labels(mask: Volume) -> np.ndarray:
    labels = np.asarray(mask.array)
    if labels.ndim != 4:
        raise MMCardioError(
            f"expected a (t, z, y, x) short-axis cine mask, got shape {labels.shape}",
            mask.source,
            "cmr",
        )
    return labels


def _slices_with(labels: np.ndarray, label: int) -> tuple[int, ...]:
    return tuple(int(z) for z in np.flatnonzero(np.any(labels == label, axis=(-2, -1))))


def _cmr(
    value: float, unit: str, phases: tuple, slices: tuple, method: str
) -> StructuralMeasurement:
    return StructuralMeasurement(float(value), unit, "cmr", {"cmr": phases}, slices, method)


def measure_cmr(mask: Volume) -> dict[str, StructuralMeasurement]:
    """LV volumes, EF, mass and mid-ventricular wall thickness, and RVEDV, from a short-axis
    cine label map (t, z, y, x) whose z spacing is the slice spacing (thickness + gap); phases
    without an LV cavity count as unlabelled. Each result cites the phases (ED, ES) and slices
    it came from."""
    labels = _cmr_labels(mask)
    dz, dy, dx = (float(s) for s in mask.spacing_mm)
    voxel_ml = dz * dy * dx / 1000.0
    lv = np.count_nonzero(labels == Label.LV_CAVITY, axis=(1, 2, 3)) * voxel_ml
    if not lv.any():
        raise MMCardioError("no LV cavity (label 1) in any phase", mask.source, "cmr")
    # ES among the phases that show a cavity: public datasets (ACDC, M&Ms) label only ED and ES,
    # and an unlabelled phase is not a cavity of 0 mL
    labelled = np.flatnonzero(lv > 0)
    ed, es = int(np.argmax(lv)), int(labelled[np.argmin(lv[labelled])])
    discs = "disk summation (slice areas x slice spacing)"
    cavity = {p: _slices_with(labels[p], Label.LV_CAVITY) for p in (ed, es)}
    ef = ejection_fraction(float(lv[ed]), float(lv[es])).value
    out = {
        "lvedv": _cmr(lv[ed], "mL", (ed,), cavity[ed], discs),
        "lvesv": _cmr(lv[es], "mL", (es,), cavity[es], discs),
        "lvef": _cmr(ef, "%", (ed, es), tuple(sorted({*cavity[ed], *cavity[es]})), discs),
        **_cmr_myocardium(labels[ed], ed, (dy, dx), voxel_ml),
    }
    rv = np.count_nonzero(labels == Label.RV_CAVITY, axis=(1, 2, 3)) * voxel_ml
    if rv.any():
        at = int(np.argmax(rv))
        out["rvedv"] = _cmr(rv[at], "mL", (at,), _slices_with(labels[at], Label.RV_CAVITY), discs)
    return out


def _cmr_myocardium(labels: np.ndarray, ed: int, spacing: Spacing, voxel_ml: float) -> dict:
    """LV mass and wall thickness of the ED phase (z, y, x); empty without myocardium."""
    myocardium = labels == Label.LV_MYOCARDIUM
    if not myocardium.any():
        return {}
    mass = np.count_nonzero(myocardium) * voxel_ml * MYOCARDIAL_DENSITY_G_PER_ML
    method = f"ED myocardial volume x {MYOCARDIAL_DENSITY_G_PER_ML} g/mL"
    out = {"lv_mass": _cmr(mass, "g", (ed,), _slices_with(labels, Label.LV_MYOCARDIUM), method)}
    thickness, slices = _cmr_wall_thickness(labels, spacing)
    if thickness is not None:
        method = "radial chords from the cavity centroid, mid-ventricular third, ED"
        out["wall_thickness"] = _cmr(thickness, "mm", (ed,), slices, method)
    return out


def _cmr_wall_thickness(
    labels: np.ndarray, spacing: Spacing, rays: int = 72
) -> tuple[float | None, tuple[int, ...]]:
    """Mean radial chord thickness (from the cavity centroid) over the middle third of the
    slices that hold LV cavity, and those slices; None when no chord crosses myocardium."""
    with_cavity = np.flatnonzero(np.any(labels == Label.LV_CAVITY, axis=(1, 2)))
    third = len(with_cavity) // 3
    middle = with_cavity[third : len(with_cavity) - third]
    angles = np.arange(rays) * 2 * np.pi / rays
    directions = np.stack([np.sin(angles), np.cos(angles)], axis=1)
    samples = []
    for z in middle:
        centre = points_mm(labels[z] == Label.LV_CAVITY, spacing).mean(axis=0)
        samples.append(wall_chords(labels[z], spacing, np.tile(centre, (rays, 1)), directions))
    samples = np.concatenate(samples)
    return (float(samples.mean()) if samples.size else None), tuple(int(z) for z in middle)
