"""Masks -> measurements against analytic shapes and hand-made CT volumes."""

from __future__ import annotations

import numpy as np
import pytest

from mmcardio.adapters.calcium import agatston_score, measure_ct
from mmcardio.adapters.geometry import (
    biplane_simpson_volume,
    method_of_disks,
    single_plane_volume,
    wall_chords,
)
from mmcardio.adapters.measure import ejection_fraction, measure_cmr, measure_echo
from mmcardio.errors import MMCardioError
from mmcardio.records import Label, Volume
from mmcardio.study import Study


def truncated_ellipsoid_ml(a: float, b1: float, b2: float, cut: float) -> float:
    """Ellipsoid (a; b1, b2) beyond the plane `cut` mm from its centre toward its far pole."""
    return np.pi * b1 * b2 * ((cut + a) - (cut**3 + a**3) / (3 * a * a)) / 1000.0


def ellipse_section(
    a: float, b: float, spacing: float, tilt: float, cut: float | None, size: int = 160
) -> np.ndarray:
    """Label map of an ellipse (semi-axes a along the tilted axis, b across) drawn on pixel
    centres, optionally cut flat `cut` mm from the centre; the cut-off side is labelled LA."""
    r, c = np.indices((size, size)) * spacing - size * spacing / 2
    along = r * np.cos(tilt) + c * np.sin(tilt)
    across = -r * np.sin(tilt) + c * np.cos(tilt)
    inside = (along / a) ** 2 + (across / b) ** 2 <= 1
    labels = np.zeros((size, size), dtype=np.uint8)
    if cut is None:
        labels[inside] = Label.LV_CAVITY
    else:
        labels[inside & (along <= cut)] = Label.LV_CAVITY
        labels[(along > cut) & (along < cut + 30) & (np.abs(across) < 20)] = Label.LA_CAVITY
    return labels


def test_ejection_fraction_is_percent_and_rejects_empty_ventricle():
    ef = ejection_fraction(120.0, 48.0)
    assert ef.unit == "%" and ef.value == pytest.approx(60.0)
    with pytest.raises(MMCardioError, match="end-diastolic volume"):
        ejection_fraction(0.0, 0.0)


@pytest.mark.parametrize("cut_fraction", [None, 0.7])
def test_biplane_simpson_matches_analytic_ellipsoid(cut_fraction):
    rng = np.random.default_rng(0)
    for _ in range(4):
        a, b1, b2 = rng.uniform(35, 50), rng.uniform(18, 26), rng.uniform(18, 26)
        spacing = rng.uniform(0.8, 1.6)
        cut = None if cut_fraction is None else cut_fraction * a
        a4c = ellipse_section(a, b1, spacing, rng.uniform(-0.4, 0.4), cut)
        a2c = ellipse_section(a, b2, spacing, rng.uniform(-0.4, 0.4), cut)
        truth = truncated_ellipsoid_ml(a, b1, b2, a if cut is None else cut)
        volume = biplane_simpson_volume(a4c, a2c, (spacing, spacing))
        assert volume.unit == "mL"
        assert volume.value == pytest.approx(truth, rel=0.03)


def test_biplane_accepts_boolean_masks_and_separate_spacings():
    a4c = ellipse_section(40, 22, 1.0, 0.2, None) == Label.LV_CAVITY
    a2c = ellipse_section(40, 24, 1.25, -0.1, None) == Label.LV_CAVITY
    volume = biplane_simpson_volume(a4c, a2c, (1.0, 1.0), a2c_spacing_mm=(1.25, 1.25))
    assert volume.value == pytest.approx(truncated_ellipsoid_ml(40, 22, 24, 40), rel=0.03)
    wrong = biplane_simpson_volume(a4c, a2c, (1.0, 1.0))  # A2C read at A4C spacing: too small
    assert wrong.value < 0.9 * volume.value


def test_area_length_and_single_plane_disks_exact_for_a_spheroid():
    labels = ellipse_section(45, 22, 1.0, 0.3, None)
    truth = truncated_ellipsoid_ml(45, 22, 22, 45)
    assert single_plane_volume(labels, (1.0, 1.0)).value == pytest.approx(truth, rel=0.03)
    disks = method_of_disks([(labels == Label.LV_CAVITY, (1.0, 1.0))])
    assert disks.value == pytest.approx(truth, rel=0.03)


def test_wall_chords_of_a_ring_measure_its_width():
    r, c = np.indices((128, 128)) - 63.3
    radius = np.hypot(r, c) * 0.8
    labels = np.where(radius < 24.0, Label.LV_CAVITY, 0).astype(np.uint8)
    labels[(radius >= 24.0) & (radius < 33.0)] = Label.LV_MYOCARDIUM
    labels[(radius >= 33.0) & (c < 0)] = Label.RV_CAVITY  # septum: the wall ends at the RV
    angles = np.arange(90) * 2 * np.pi / 90
    centre = np.full((90, 2), 63.3 * 0.8)
    chords = wall_chords(labels, (0.8, 0.8), centre, np.stack([np.sin(angles), np.cos(angles)], 1))
    assert chords.size == 90
    assert chords.mean() == pytest.approx(9.0, abs=0.1)
    outside = wall_chords(labels, (0.8, 0.8), np.array([[2.0, 2.0]]), np.array([[1.0, 0.0]]))
    assert outside.size == 0  # a ray that does not start in the cavity measures nothing


def test_measure_echo_needs_an_lv_cavity():
    empty = np.zeros((3, 32, 32), dtype=np.uint8)
    with pytest.raises(MMCardioError, match="no LV cavity"):
        measure_echo({"A4C": (empty, (1.0, 1.0))})
    with pytest.raises(MMCardioError, match="A4C or A2C"):
        measure_echo({"PLAX": (empty, (1.0, 1.0))})


def voxelized_cine(spacing: tuple[float, float, float]) -> tuple[Volume, dict[str, float]]:
    """Two phases of a prolate ellipsoid cavity in a shell, slices across the long axis."""
    dz, dy, dx = spacing
    z = (np.arange(24) + 0.5) * dz - 12 * dz
    y = (np.arange(96) + 0.5) * dy - 48 * dy
    x = (np.arange(96) + 0.5) * dx - 48 * dx
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    phases, truth = [], {}
    for name, (a, b) in {"ed": (60.0, 28.0), "es": (50.0, 20.0)}.items():
        labels = np.zeros(zz.shape, dtype=np.uint8)
        shell = (zz / (a + 8)) ** 2 + (yy**2 + xx**2) / (b + 8) ** 2 <= 1
        labels[shell] = Label.LV_MYOCARDIUM
        labels[(zz / a) ** 2 + (yy**2 + xx**2) / b**2 <= 1] = Label.LV_CAVITY
        phases.append(labels)
        truth[name] = 4 / 3 * np.pi * a * b * b / 1000.0
        truth[name + "_shell"] = 4 / 3 * np.pi * (a + 8) * (b + 8) ** 2 / 1000.0 - truth[name]
    return Volume(np.stack(phases), spacing, units="label", modality="cmr"), truth


def test_disk_summation_on_a_voxelized_ellipsoid():
    mask, truth = voxelized_cine((8.0, 1.5, 1.5))
    out = measure_cmr(mask)
    assert out["lvedv"].value == pytest.approx(truth["ed"], rel=0.03)
    assert out["lvesv"].value == pytest.approx(truth["es"], rel=0.03)
    assert out["lvef"].value == pytest.approx(100 * (1 - truth["es"] / truth["ed"]), abs=1.5)
    assert out["lv_mass"].value == pytest.approx(1.05 * truth["ed_shell"], rel=0.05)
    assert out["lv_mass"].unit == "g" and out["lvedv"].unit == "mL"
    assert out["wall_thickness"].value == pytest.approx(8.0, abs=1.0)
    assert "rvedv" not in out


def test_measure_cmr_rejects_a_static_volume():
    with pytest.raises(MMCardioError, match="short-axis cine"):
        measure_cmr(Volume(np.zeros((4, 8, 8), dtype=np.uint8), (8.0, 1.0, 1.0), units="label"))


def ct_with(lesions: list[tuple[int, slice, slice, float]]) -> np.ndarray:
    """A 40 HU (z, y, x) volume with rectangular lesions (slice, rows, cols, HU)."""
    hu = np.full((4, 32, 32), 40.0, dtype=np.float32)
    for z, rows, cols, value in lesions:
        hu[z, rows, cols] = value
    return hu


def test_agatston_single_lesion_area_times_density_weight():
    hu = ct_with([(1, slice(10, 12), slice(10, 15), 220.0)])  # 10 pixels of 1 mm^2
    hu[1, 10, 10] = 250.0  # the peak sets the weight: 200-299 HU -> 2
    score, volume, count = agatston_score(hu, (3.0, 1.0, 1.0))
    assert (score, volume, count) == (20.0, 30.0, 1)


def test_agatston_ignores_small_and_sub_threshold_and_adds_slices():
    hu = ct_with(
        [
            (0, slice(2, 4), slice(2, 4), 450.0),  # 4 mm^2, weight 4 -> 16
            (2, slice(20, 25), slice(20, 22), 129.0),  # below 130 HU: not calcium
            (3, slice(5, 8), slice(5, 8), 180.0),  # 9 mm^2, weight 1 -> 9
        ]
    )
    score, _, count = agatston_score(hu, (3.0, 1.0, 1.0))
    assert (score, count) == (25.0, 2)
    small = ct_with([(0, slice(2, 3), slice(2, 3), 600.0)])  # one 0.5 x 0.5 mm pixel
    assert agatston_score(small, (3.0, 0.5, 0.5))[0] == 0.0


def test_agatston_scales_with_slice_thickness_and_mask_selects_lesions():
    hu = ct_with([(1, slice(10, 12), slice(10, 15), 320.0), (2, slice(0, 6), slice(0, 6), 700.0)])
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[1, 10, 12] = Label.CORONARY_CALCIUM  # the 700 HU block is bone, not marked
    volume = Volume(hu, (3.0, 1.0, 1.0), units="HU", modality="ct")
    out = measure_ct(volume, Volume(mask, (3.0, 1.0, 1.0), units="label"))
    assert out["agatston"].value == 30.0 and out["agatston"].unit == "AU"
    assert out["calcium_volume"].value == 30.0 and out["calcium_volume"].unit == "mm3"
    thin = measure_ct(Volume(hu, (1.5, 1.0, 1.0), units="HU"), Volume(mask, (1.5, 1.0, 1.0)))
    assert thin["agatston"].value == 15.0
    assert measure_ct(volume)["agatston"].value == 30.0 + 36 * 4


def test_measure_ct_requires_hu():
    with pytest.raises(MMCardioError, match="in HU"):
        measure_ct(Volume(np.zeros((2, 4, 4)), (3.0, 1.0, 1.0), units="a.u."))


def ellipse_cine(a: float, b: float, scales: list[float], tilt: float = 0.2) -> np.ndarray:
    return np.stack([ellipse_section(a * s, b * s, 1.0, tilt, None) for s in scales])


SCALES = [0.9, 1.0, 0.95, 0.8, 0.85]  # ED is frame 1, ES frame 3


def test_echo_cites_the_ed_es_frames_and_agreeing_views_give_full_confidence():
    cine = ellipse_cine(40, 22, SCALES)
    out = measure_echo({"A4C": (cine, (1.0, 1.0)), "A2C": (cine, (1.0, 1.0))})
    assert out["lvedv"].value == pytest.approx(truncated_ellipsoid_ml(40, 22, 22, 40), rel=0.03)
    assert out["lvedv"].frames == {"A4C": (1,), "A2C": (1,)}
    assert out["lvesv"].frames == {"A4C": (3,), "A2C": (3,)}
    assert out["lvef"].frames == {"A4C": (1, 3), "A2C": (1, 3)}
    assert out["lvef"].value == pytest.approx(100 * (1 - 0.8**3), abs=1.0)
    assert out["lvef"].source == "echo:A4C+A2C" and out["lvef"].method.startswith("biplane")
    assert out["lvedv"].confidence == out["lvef"].confidence == 1.0


def test_echo_confidence_is_the_ratio_of_the_views_single_plane_volumes():
    # Area-length of an ellipse (a, b) is the spheroid (a; b, b): the views' ratio is (b1/b2)^2.
    a4c, a2c = ellipse_cine(40, 20, SCALES), ellipse_cine(40, 25, SCALES, tilt=-0.1)
    out = measure_echo({"A4C": (a4c, (1.0, 1.0)), "A2C": (a2c, (1.0, 1.0))})
    assert out["lvedv"].confidence == pytest.approx((20 / 25) ** 2, rel=0.05)
    assert out["lvedv"].value == pytest.approx(truncated_ellipsoid_ml(40, 20, 25, 40), rel=0.03)
    assert out["lvef"].confidence == min(out["lvedv"].confidence, out["lvesv"].confidence)


def test_echo_with_one_view_falls_back_to_area_length_without_confidence():
    out = measure_echo({"a2c": (ellipse_cine(40, 22, SCALES), (1.0, 1.0))})
    assert out["lvedv"].method == "area-length, A2C" and out["lvedv"].source == "echo:A2C"
    assert out["lvedv"].confidence is None and out["lvef"].frames == {"A2C": (1, 3)}
    assert out["lvedv"].value == pytest.approx(truncated_ellipsoid_ml(40, 22, 22, 40), rel=0.03)


def test_cmr_cites_phases_and_slices():
    mask, _ = voxelized_cine((8.0, 1.5, 1.5))
    out = measure_cmr(mask)
    z = (np.arange(24) + 0.5) * 8.0 - 96.0  # slice centres; a pole on a centre is empty
    assert out["lvedv"].slices == tuple(np.flatnonzero(np.abs(z) < 60.0))
    assert out["lvesv"].slices == tuple(np.flatnonzero(np.abs(z) < 50.0))
    assert out["lv_mass"].slices == tuple(np.flatnonzero(np.abs(z) < 68.0))
    assert out["lvef"].frames == {"cmr": (0, 1)} and out["lv_mass"].frames == {"cmr": (0,)}
    middle = out["wall_thickness"].slices
    assert len(middle) and set(middle) < set(out["lvedv"].slices)
    assert all(m.source == "cmr" and m.confidence is None for m in out.values())


def test_ct_cites_the_slices_of_the_counted_lesions_and_serialises_plainly():
    hu = ct_with([(1, slice(10, 12), slice(10, 15), 320.0), (2, slice(0, 6), slice(0, 6), 700.0)])
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[1, 10, 12] = Label.CORONARY_CALCIUM
    volume = Volume(hu, (3.0, 1.0, 1.0), units="HU", modality="ct")
    out = measure_ct(volume, Volume(mask, (3.0, 1.0, 1.0), units="label"))
    assert out["agatston"].slices == (1,) and "130 HU" in out["agatston"].method
    assert measure_ct(volume)["agatston"].slices == (1, 2)
    evidence = out["agatston"].evidence()
    assert evidence["value"] == 30.0 and evidence["unit"] == "AU" and evidence["slices"] == [1]
    assert Study("S", "P", measurements=dict(out)).to_row()["measurements"]["agatston"] == {
        "value": 30.0,
        "unit": "AU",
    }


def test_cmr_phases_without_labels_are_not_end_systole():
    """ACDC and M&Ms label only ED and ES: the empty phases between are no 0-mL cavity."""
    mask, _ = voxelized_cine((8.0, 1.5, 1.5))
    labelled = measure_cmr(mask)
    padded = np.zeros((5, *mask.array.shape[1:]), dtype=mask.array.dtype)
    padded[1], padded[3] = mask.array[0], mask.array[1]
    out = measure_cmr(Volume(padded, mask.spacing_mm, units="label", modality="cmr"))
    assert out["lvef"].frames == {"cmr": (1, 3)}
    assert out["lvesv"].value == labelled["lvesv"].value and out["lvef"].value == labelled["lvef"].value
