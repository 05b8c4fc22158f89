"""Image phantoms: masks measured with the clinical methods recover the model's truth, and the
images look like their modality (sector and speckle, SSFP contrast, HU per tissue)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mmcardio.adapters.calcium import measure_ct
from mmcardio.adapters.geometry import wall_chords
from mmcardio.adapters.measure import measure_cmr, measure_echo
from mmcardio.datasets.readers.nifti import read_nifti
from mmcardio.datasets.synthetic.anatomy import Heart
from mmcardio.datasets.synthetic.heart import HeartParams, make_cmr, make_ct, make_echo
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.records import Label


def random_hearts(seed: int, n: int, akinetic: bool) -> list[HeartParams]:
    """Hearts spanning EF 20-70 %, EDV 80-250 mL, wall 7-16 mm (one per EF band)."""
    rng = np.random.default_rng(seed)
    walls = [None, "anterior", "inferior"] if akinetic else [None]
    return [
        HeartParams(
            heart_rate_bpm=rng.uniform(50, 120),
            lv_edv_ml=rng.uniform(80, 250),
            lv_ef_pct=lo + rng.uniform(0, 50 / n),
            wall_thickness_mm=rng.uniform(7, 16),
            rv_edv_ml=rng.uniform(90, 220),
            la_volume_ml=rng.uniform(30, 110),
            akinetic_wall=walls[i % len(walls)],
            lv_minor_axis_ratio=rng.uniform(0.85, 1.1),
        )
        for i, lo in enumerate(np.linspace(20, 70 - 50 / n, n))
    ]


def assert_matches_truth(measured: dict, truth: dict, keys: tuple[str, ...], mass_rel=0.10):
    for key in keys:
        got, want = measured[key], truth[key]
        assert got.unit == want.unit, key
        if key == "lvef":
            assert got.value == pytest.approx(want.value, abs=2.0), key
        elif key == "wall_thickness":
            assert got.value == pytest.approx(want.value, abs=1.5), key
        elif key == "lv_mass":
            assert got.value == pytest.approx(want.value, rel=mass_rel), key
        else:
            assert got.value == pytest.approx(want.value, rel=0.05), key


def test_heart_params_are_validated():
    with pytest.raises(ConfigError, match="lv_ef_pct"):
        HeartParams(lv_ef_pct=120.0)
    with pytest.raises(ConfigError, match="akinetic_wall"):
        HeartParams(akinetic_wall="lateral")
    with pytest.raises(MMCardioError, match="view"):
        make_echo(HeartParams(), "PLAX", np.random.default_rng(0))


def test_model_volumes_are_analytic_and_reach_the_requested_ef():
    for params in random_hearts(1, 4, akinetic=True):
        heart = Heart(params)
        ed, es = heart.phase(0.0), heart.phase(heart.es_phase)
        assert heart.integrated_cavity_ml(ed) == pytest.approx(params.lv_edv_ml, rel=1e-3)
        truth = heart.truth()
        assert heart.integrated_cavity_ml(es) == pytest.approx(truth["lvesv"].value, rel=1e-3)
        assert truth["lvef"].value == pytest.approx(params.lv_ef_pct, abs=0.1)


def test_echo_biplane_measurements_recover_truth():
    rng = np.random.default_rng(11)
    for params in random_hearts(2, 4, akinetic=False):
        a4c, a2c = make_echo(params, "A4C", rng), make_echo(params, "A2C", rng)
        measured = measure_echo(
            {
                "A4C": (a4c.mask, a4c.video.pixel_spacing_mm),
                "A2C": (a2c.mask, a2c.video.pixel_spacing_mm),
            }
        )
        keys = ("lvedv", "lvesv", "lvef", "wall_thickness", "la_volume")
        assert_matches_truth(measured, a4c.truth, keys)


def test_cmr_disk_summation_recovers_truth_including_akinesis():
    rng = np.random.default_rng(12)
    for params in random_hearts(3, 5, akinetic=True):
        phantom = make_cmr(params, rng)
        keys = ("lvedv", "lvesv", "lvef", "lv_mass", "wall_thickness", "rvedv")
        assert_matches_truth(measure_cmr(phantom.mask), phantom.truth, keys)


def test_echo_has_a_sector_speckle_and_beats_at_the_heart_rate():
    rng = np.random.default_rng(5)
    echo = make_echo(HeartParams(heart_rate_bpm=75.0), "A4C", rng, cycles=4)
    frames, mask = echo.video.frames, echo.mask
    assert frames.dtype == np.uint8 and echo.video.view == "A4C"
    assert echo.video.pixel_spacing_mm[0] == pytest.approx(echo.video.pixel_spacing_mm[1])
    sector = (frames > 0).any(axis=0)
    assert not sector[0, :20].any() and not sector[0, -20:].any()  # black corners at the top
    widths = sector[: frames.shape[1] // 2].sum(axis=1)
    assert np.all(np.diff(widths[5:]) >= 0) and widths[50] > 4 * widths[8]  # fans out with depth
    assert not mask[:, ~sector].any()
    blood, myocardium = frames[mask == Label.LV_CAVITY], frames[mask == Label.LV_MYOCARDIUM]
    assert myocardium.mean() - blood.mean() > 2 * (myocardium.std() + blood.std()) / 2
    assert myocardium.std() > 15  # speckle, not a flat fill
    tissue = (
        (mask[:-1] == 0) & (mask[1:] == 0) & sector & (np.arange(frames.shape[1]) > 80)[:, None]
    )
    correlations = [
        np.corrcoef(frames[k][tissue[k]], frames[k + 1][tissue[k]])[0, 1]
        for k in range(len(frames) - 1)
    ]
    assert 0.4 < np.mean(correlations) < 0.95  # speckle decorrelates partially between frames
    area = np.count_nonzero(mask == Label.LV_CAVITY, axis=(1, 2)).astype(float)
    spectrum = np.abs(np.fft.rfft(area - area.mean()))
    frequencies = np.fft.rfftfreq(area.size, 1 / echo.video.fps)
    assert frequencies[np.argmax(spectrum)] == pytest.approx(75.0 / 60.0, abs=frequencies[1] / 2)
    assert echo.ed_frame == int(np.argmax(area)) and echo.es_frame == int(np.argmin(area))


def test_echo_views_show_the_right_chambers_fully():
    rng = np.random.default_rng(6)
    params = HeartParams(lv_edv_ml=240.0, la_volume_ml=100.0)
    for view in ("A4C", "A2C"):
        echo = make_echo(params, view, rng)
        mask, sector = echo.mask, ndimage.binary_fill_holes((echo.video.frames > 0).any(axis=0))
        assert (mask == Label.RV_CAVITY).any() == (view == "A4C")
        assert (mask == Label.LA_CAVITY).any(axis=(1, 2)).all()
        in_plane = np.zeros((3, 3, 3), dtype=bool)
        in_plane[1] = True
        for label in (Label.LV_MYOCARDIUM, Label.LA_CAVITY):  # the sector edge never cuts them
            grown = ndimage.binary_dilation(mask == label, structure=in_plane, iterations=2)
            assert sector[grown.any(axis=0)].all(), label.name


def test_cmr_cine_phases_slices_and_contrast():
    rng = np.random.default_rng(7)
    phantom = make_cmr(HeartParams(heart_rate_bpm=60.0, lv_ef_pct=55.0), rng)
    volume, labels = phantom.volume, phantom.mask.array
    assert volume.modality == "cmr" and volume.units == "a.u." and phantom.mask.units == "label"
    n_t, n_z, h, w = volume.array.shape
    assert n_t == 20 and 8 <= n_z <= 16 and (h, w) == (96, 96)  # 20 phases by default
    assert volume.spacing_mm[0] == 8.0 and 1.2 <= volume.spacing_mm[1] <= 2.0
    assert volume.frame_times_ms[1] == pytest.approx(1000.0 / n_t)
    lv = np.count_nonzero(labels == Label.LV_CAVITY, axis=(1, 2, 3))
    assert phantom.ed_phase == 0 == int(np.argmax(lv)) and phantom.es_phase == int(np.argmin(lv))
    with_lv = np.any(labels == Label.LV_CAVITY, axis=(2, 3))
    assert with_lv[phantom.ed_phase].sum() > with_lv[phantom.es_phase].sum()  # the base descends
    assert (labels[0, 0] == Label.LA_CAVITY).any()  # first slice above the annulus: atria
    image = volume.array
    blood, myocardium = image[labels == Label.LV_CAVITY], image[labels == Label.LV_MYOCARDIUM]
    assert blood.mean() > 2.5 * myocardium.mean()
    mid, angles = n_z // 2, np.arange(36) * np.pi / 18
    rays = np.stack([np.sin(angles), np.cos(angles)], axis=1)
    thickness = []
    for t in (phantom.ed_phase, phantom.es_phase):
        section = labels[t, mid]
        centre = np.argwhere(section == Label.LV_CAVITY).mean(axis=0) * volume.spacing_mm[1:]
        chords = wall_chords(section, volume.spacing_mm[1:], np.tile(centre, (36, 1)), rays)
        thickness.append(chords.mean())
    assert thickness[1] > 1.3 * thickness[0]  # systolic wall thickening


def test_ct_hounsfield_units_per_tissue():
    rng = np.random.default_rng(8)
    plain = make_ct(HeartParams(), rng)
    hu, labels = plain.volume.array, plain.mask.array
    assert plain.volume.units == "HU" and plain.volume.spacing_mm == (3.0, 1.0, 1.0)
    for label in (Label.LV_CAVITY, Label.LV_MYOCARDIUM, Label.RV_CAVITY, Label.LA_CAVITY):
        assert 25 < hu[labels == label].mean() < 60, label.name
    assert hu[:, :4, :4].mean() < -950  # air in front of the chest
    assert hu.max() > 600  # vertebra and sternum cortex
    assert ((hu > -900) & (hu < -700)).mean() > 0.1  # lungs
    contrast = make_ct(HeartParams(), rng, contrast=True)
    hu, labels = contrast.volume.array, contrast.mask.array
    assert 280 < hu[labels == Label.LV_CAVITY].mean() < 360
    assert hu[labels == Label.LV_MYOCARDIUM].mean() < 150


def test_ct_calcium_absent_at_zero_and_near_target(tmp_path):
    rng = np.random.default_rng(9)
    none = make_ct(HeartParams(agatston_target=0.0), rng)
    assert none.truth["agatston"].value == 0.0
    assert not (none.mask.array == Label.CORONARY_CALCIUM).any()
    for target in (10.0, 300.0, 1500.0):
        phantom = make_ct(HeartParams(agatston_target=target), rng)
        labels, score = phantom.mask.array, phantom.truth["agatston"].value
        assert target / 2 <= score <= 2 * target
        assert phantom.truth["calcium_volume"].value > 0
        chambers = np.isin(labels, [Label.LV_MYOCARDIUM, Label.RV_CAVITY, Label.LA_CAVITY])
        distance = ndimage.distance_transform_edt(~chambers, sampling=phantom.mask.spacing_mm)
        assert distance[labels == Label.CORONARY_CALCIUM].max() < 12.0  # epicardial grooves
    write_nifti(phantom.volume, tmp_path / "ct.nii.gz")
    write_nifti(phantom.mask, tmp_path / "mask.nii.gz")
    again = measure_ct(read_nifti(tmp_path / "ct.nii.gz"), read_nifti(tmp_path / "mask.nii.gz"))
    assert again["agatston"].value == pytest.approx(score)


def test_cmr_mask_survives_nifti_and_is_deterministic(tmp_path):
    params = HeartParams(lv_edv_ml=150.0, lv_ef_pct=40.0, akinetic_wall="inferior")
    first = make_cmr(params, np.random.default_rng(3), n_phases=16)
    second = make_cmr(params, np.random.default_rng(3), n_phases=16)
    assert np.array_equal(first.volume.array, second.volume.array)
    write_nifti(first.mask, tmp_path / "mask.nii.gz")
    loaded = read_nifti(tmp_path / "mask.nii.gz", modality="cmr")
    assert np.array_equal(loaded.array, first.mask.array)
    assert measure_cmr(loaded)["lvef"].value == pytest.approx(measure_cmr(first.mask)["lvef"].value)
