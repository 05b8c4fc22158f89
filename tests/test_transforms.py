"""Preprocessing transforms checked against direct computations on records built here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcardio.datasets.preprocess_config import (
    CMRPreprocess,
    CTPreprocess,
    ECGPreprocess,
    EchoPreprocess,
    PreprocessConfig,
)
from mmcardio.datasets.transforms import (
    choose_views,
    crop_or_pad,
    frame_indices_at_fps,
    prepare_cmr,
    prepare_ct,
    prepare_ecg,
    prepare_echo,
    random_shift,
    sample_cmr,
    sample_ct,
    sample_ecg,
    sample_echo,
    view_id,
)
from mmcardio.errors import ConfigError, ReaderError
from mmcardio.modality import ECHO_VIEWS
from mmcardio.records import ECG, STANDARD_LEADS, Video, Volume


def sine_ecg(fs: float, hz: float, seconds: float = 10.0, leads=("I", "II"), amplitude=1.0) -> ECG:
    t = np.arange(int(seconds * fs)) / fs
    rows = [amplitude * (i + 1) * np.sin(2 * np.pi * hz * t) for i in range(len(leads))]
    return ECG(np.stack(rows).astype(np.float32), fs, list(leads))


def peak_hz(x: np.ndarray, fs: float) -> float:
    return float(np.fft.rfftfreq(len(x), 1 / fs)[np.abs(np.fft.rfft(x)).argmax()])


def sine_amplitude(x: np.ndarray, fs: float, hz: float) -> float:
    """Least-squares amplitude of a `hz` sine in `x`."""
    t = np.arange(len(x)) / fs
    basis = np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t)], 1)
    coef, *_ = np.linalg.lstsq(basis, x.astype(float), rcond=None)
    return float(np.hypot(*coef))


@pytest.mark.parametrize("fs", [360.0, 500.0, 1000.0])
def test_ecg_resampling_keeps_frequency_and_amplitude(fs):
    cfg = ECGPreprocess(fs=250.0, samples=2500)
    out = prepare_ecg(sine_ecg(fs, 10.0), cfg)
    signal = out["signal"].numpy()
    assert signal.shape == (12, 2500) and signal.dtype == np.float32
    interior = signal[:, 500:-500]  # the 0.5 Hz high-pass edge transients excluded
    assert peak_hz(signal[0], 250.0) == pytest.approx(10.0, abs=0.1)
    assert sine_amplitude(interior[0], 250.0, 10.0) == pytest.approx(1.0, rel=0.01)
    assert sine_amplitude(interior[1], 250.0, 10.0) == pytest.approx(2.0, rel=0.01)  # II was 2 mV
    assert np.abs(interior).max() < 2.05


def test_ecg_leads_placed_in_standard_rows_with_mask():
    fs = 250.0
    names = ["V6", "AVR", "I", "V4R", "II", "V1"]
    signal = np.stack([np.full(2500, float(i + 1)) for i in range(len(names))]).astype(np.float32)
    ecg = ECG(signal, fs, names, missing_leads=["V1"])
    out = prepare_ecg(ecg, ECGPreprocess(fs=250.0, samples=2500, bandpass_hz=None))
    rows = {name: i for i, name in enumerate(STANDARD_LEADS)}
    expected_mask = np.zeros(12, bool)
    expected_mask[[rows["V6"], rows["aVR"], rows["I"], rows["II"]]] = True
    assert out["lead_mask"].numpy().tolist() == expected_mask.tolist()
    sig = out["signal"].numpy()
    assert np.allclose(sig[rows["V6"]], 1) and np.allclose(sig[rows["aVR"]], 2)
    assert np.allclose(sig[rows["I"]], 3) and np.allclose(sig[rows["II"]], 5)
    assert np.all(sig[~expected_mask] == 0)  # V4R dropped, V1 listed missing: masked, not data


def test_bandpass_removes_baseline_wander_and_notch_removes_mains():
    fs = 500.0
    t = np.arange(int(10 * fs)) / fs
    wander, mains, qrs_band = (np.sin(2 * np.pi * f * t) for f in (0.1, 60.0, 8.0))
    ecg = ECG(np.stack([wander, mains, qrs_band]).astype(np.float32), fs, ["I", "II", "V1"])
    out = prepare_ecg(ecg, ECGPreprocess(fs=500.0, samples=5000, bandpass_hz=[0.5, 100.0],
                                            notch_hz=60.0))["signal"].numpy()[:, 500:-500]
    assert np.abs(out[0]).max() < 0.05  # 0.1 Hz below the pass band
    assert np.abs(out[1]).max() < 0.05  # 60 Hz notched although inside the pass band
    assert sine_amplitude(out[6], 500.0, 8.0) == pytest.approx(1.0, rel=0.01)  # V1 row: 8 Hz kept


def test_band_edge_above_nyquist_is_a_config_error():
    with pytest.raises(ConfigError, match="Nyquist"):
        prepare_ecg(sine_ecg(500.0, 10.0), ECGPreprocess(fs=50.0, samples=500))


def test_nan_signal_is_a_reader_error():
    ecg = sine_ecg(250.0, 10.0)
    ecg.signal[0, 5] = np.nan
    with pytest.raises(ReaderError, match="NaN"):
        prepare_ecg(ecg, ECGPreprocess(fs=250.0, samples=2500))


def test_per_lead_standardization_only_on_present_leads():
    out = prepare_ecg(sine_ecg(250.0, 10.0, amplitude=3.0), ECGPreprocess(fs=250.0, samples=2500, standardize=True))
    sig, mask = out["signal"].numpy(), out["lead_mask"].numpy()
    assert np.allclose(sig[mask].mean(1), 0, atol=1e-3) and np.allclose(sig[mask].std(1), 1, atol=2e-2)
    assert np.all(sig[~mask] == 0)


def test_crop_or_pad_center_random_and_pad():
    x = torch.arange(10.0)[None]
    assert crop_or_pad(x, 4).tolist() == [[3.0, 4.0, 5.0, 6.0]]
    starts = {int(crop_or_pad(x, 4, np.random.default_rng(s))[0, 0]) for s in range(50)}
    assert starts == set(range(7))  # every valid start, none outside
    assert crop_or_pad(x, 14).tolist() == [[0, 0] + list(range(10)) + [0, 0]]


def test_ecg_inference_windows_cover_the_recording_and_training_draws_one():
    prepared = {"signal": torch.arange(10.0).repeat(12, 1), "lead_mask": torch.ones(12, dtype=torch.bool)}
    cfg = ECGPreprocess(fs=250.0, samples=4, windows=3)
    windows = sample_ecg(prepared, cfg)["signal"]
    assert windows.shape == (3, 12, 4)
    assert windows[:, 0, 0].tolist() == [0.0, 3.0, 6.0]  # at the start, the centre, the end
    assert sample_ecg(prepared, cfg, np.random.default_rng(0))["signal"].shape == (12, 4)
    one = ECGPreprocess(fs=250.0, samples=4)
    assert sample_ecg(prepared, one)["signal"][0].tolist() == [3.0, 4.0, 5.0, 6.0]
    with pytest.raises(ConfigError, match="at least 1 inference window") as err:
        PreprocessConfig.from_dict({"ecg": {"windows": 0}})
    assert err.value.field == "preprocess.ecg.windows"


def test_training_draws_lead_subsets_of_every_size_and_inference_keeps_all_leads():
    recorded = torch.tensor([True] * 8 + [False] * 4)
    prepared = {"signal": recorded[:, None] * torch.ones(12, 10), "lead_mask": recorded}  # as prepare_ecg leaves it
    cfg = ECGPreprocess(fs=250.0, samples=4, lead_subset_prob=0.5)
    rng = np.random.default_rng(0)
    draws = [sample_ecg(prepared, cfg, rng) for _ in range(2000)]
    sizes = np.array([int(d["lead_mask"].sum()) for d in draws])
    assert 0.45 < np.mean(sizes < 8) < 0.55  # half of the ECGs lose leads
    assert set(sizes[sizes < 8]) == set(range(1, 8))  # one lead to all but one
    for d in draws[:200]:
        assert not (d["lead_mask"] & ~recorded).any()  # only recorded leads are kept
        assert torch.equal(d["signal"].abs().sum(1) > 0, d["lead_mask"])  # the others are zeros
    assert torch.equal(sample_ecg(prepared, cfg)["lead_mask"], recorded)
    with pytest.raises(ConfigError) as err:
        PreprocessConfig.from_dict({"ecg": {"lead_subset_prob": 1.5}})
    assert err.value.field == "preprocess.ecg.lead_subset_prob"


def test_a_lead_subset_masks_the_other_leads_and_refuses_a_record_without_them():
    ecg = ECG(signal=np.ones((2, 500), np.float32), fs=250.0, lead_names=["II", "V1"])
    prepared = prepare_ecg(ecg, ECGPreprocess(fs=250.0, samples=250, leads=["II"], bandpass_hz=None))
    assert prepared["lead_mask"].nonzero().flatten().tolist() == [1]
    assert float(prepared["signal"][6].abs().sum()) == 0.0
    with pytest.raises(ReaderError, match="none of the record's leads") as err:
        prepare_ecg(ecg, ECGPreprocess(fs=250.0, samples=250, leads=["I"], bandpass_hz=None))
    assert err.value.field == "preprocess.ecg.leads"


def test_echo_time_resampling_by_timestamps():
    assert frame_indices_at_fps(30, 30.0, 15.0).tolist() == list(range(0, 30, 2))
    assert frame_indices_at_fps(30, 30.0, 12.0).tolist() == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27]
    assert frame_indices_at_fps(10, 25.0, 50.0).tolist() == [i // 2 for i in range(20)]


def test_echo_gray_resize_aspect_and_intensity():
    frames = np.zeros((30, 120, 160, 3), np.uint8)
    frames[..., 0] = 200  # pure red: luminance 0.299 * 200
    frames[:, :, :80] = 0  # left half black
    cfg = EchoPreprocess(fps=30.0, frames=16, size=[32, 32], standardize=False)
    clip = prepare_echo(Video(frames, fps=30.0), cfg)
    assert clip.shape == (30, 32, 32)
    # 160 wide -> 32, 120 high -> 24 (aspect kept), padded by 4 rows top and bottom
    assert torch.all(clip[:, :4] == 0) and torch.all(clip[:, -4:] == 0)
    assert clip[0, 16, 20].item() == pytest.approx(0.299 * 200 / 255, abs=0.01)
    assert clip[0, 16, 5].item() == 0


def test_echo_clip_window_views_and_standardization():
    rng = np.random.default_rng(0)
    videos = [Video(rng.integers(0, 255, (40, 48, 48), dtype=np.uint8), fps=20.0) for _ in range(3)]
    cfg = EchoPreprocess(fps=10.0, frames=8, size=[16, 16], max_views=2)
    views = ["PLAX", "A4C", "a4c"]
    keep = choose_views(views, cfg.max_views)
    ids = torch.tensor([view_id(views[i]) for i in keep])
    out = sample_echo([prepare_echo(videos[i], cfg) for i in keep], ids, cfg)
    assert out["frames"].shape == (2, 8, 16, 16) and out["view_mask"].all()
    assert out["view_ids"].tolist() == [ECHO_VIEWS.index("A4C"), ECHO_VIEWS.index("PLAX")]
    full = prepare_echo(videos[1], cfg)  # 40 frames at 20 fps -> 20 at 10 fps; centered 8 = 6..13
    assert torch.equal(out["frames"][0], full[6:14])
    assert full.mean().item() == pytest.approx(0, abs=1e-4) and full.std().item() == pytest.approx(1, abs=1e-2)
    assert choose_views(["A4C", "A4C", "A2C", "weird"], 3) == [0, 2, 3]


def test_echo_short_loop_holds_last_frame():
    frames = np.arange(5, dtype=np.uint8)[:, None, None] * np.ones((5, 8, 8), np.uint8) * 50
    cfg = EchoPreprocess(fps=10.0, frames=8, size=[8, 8], standardize=False)
    out = sample_echo([prepare_echo(Video(frames, fps=10.0), cfg)], torch.tensor([0]), cfg)
    means = out["frames"][0].mean((1, 2)) * 255
    assert means.round().tolist() == [0, 50, 100, 150, 200, 200, 200, 200]


def ras_axial_affine(spacing_zyx) -> np.ndarray:
    """(z, y, x) index -> RAS for an axial stack: z superior, y posterior, x left."""
    sz, sy, sx = spacing_zyx
    return np.array([[0, 0, -sx, 0], [0, -sy, 0, 0], [sz, 0, 0, 0], [0, 0, 0, 1]], float)


def test_ct_window_maps_hu_to_unit_range():
    hu = np.array([-1000, -200, 300, 800, 3000], np.float32)
    array = np.broadcast_to(hu[None, None, :], (4, 4, 5)).copy()
    volume = Volume(array, (1.0, 1.0, 1.0), ras_axial_affine((1, 1, 1)), units="HU")
    out = prepare_ct(volume, CTPreprocess(spacing_mm=[1, 1, 1], shape=[4, 4, 5]))
    assert out.shape == (1, 4, 4, 5)
    assert out[0, 2, 2].tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_ct_spacing_2mm_to_1mm_doubles_shape_and_keeps_a_ramp():
    x = np.arange(6, dtype=np.float32) * 100  # 100 HU per 2 mm voxel along x
    array = np.broadcast_to(x[None, None, :], (4, 5, 6)).copy()
    volume = Volume(array, (2.0, 2.0, 2.0), ras_axial_affine((2, 2, 2)), units="HU")
    cfg = CTPreprocess(spacing_mm=[1, 1, 1], shape=[8, 10, 12], window_hu=[0, 1000], axcodes=None)
    out = prepare_ct(volume, cfg)[0]
    assert out.shape == (8, 10, 12)
    steps = np.diff(out[4, 5].numpy())[1:-1]  # interior: 50 HU per 1 mm voxel = 0.05 of the window
    assert np.allclose(steps, 0.05, atol=1e-4)


def test_ct_crop_pad_centered_and_reoriented():
    array = np.full((5, 9, 9), -1000, np.float32)
    array[2, 4, 4] = 800  # center voxel
    array[0, 4, 4] = 300  # marks the first stored slice
    affine = ras_axial_affine((1, 1, 1))
    affine[:, 0] *= -1  # z index now runs toward the feet: the first slice is the most superior
    volume = Volume(array, (1.0, 1.0, 1.0), affine, units="HU")
    out = prepare_ct(volume, CTPreprocess(spacing_mm=[1, 1, 1], shape=[7, 5, 5]))[0]
    assert out.shape == (7, 5, 5)
    assert out[3, 2, 2] == 1.0 and out.sum() == pytest.approx(1.0 + 0.5)  # padded z by 1 each side
    assert out[5, 2, 2] == 0.5  # last after SPL (z toward the head), + 1 padded slice


def test_ct_peak_filter_keeps_a_2mm_plaque_wherever_it_falls_on_the_3mm_grid():
    threshold = (130 + 200) / 1000  # Agatston's 130 HU on the [-200, 800] window
    cfg = {"spacing_mm": [3.0, 3.0, 3.0], "shape": [8, 16, 16], "window_hu": [-200.0, 800.0]}
    plain, peaks = [], []
    for offset in range(3):  # the plaque's position relative to the output voxel grid
        array = np.full((24, 48, 48), 40.0, np.float32)  # blood, 1 mm voxels
        z, yx = 10 + offset, 20 + 2 * offset
        array[z:z + 2, yx:yx + 2, yx:yx + 2] = 600.0  # a 2 mm calcified plaque
        volume = Volume(array, (1.0, 1.0, 1.0), ras_axial_affine((1, 1, 1)), units="HU")
        plain.append(prepare_ct(volume, CTPreprocess(**cfg, keep_peaks=False)).max().item())
        peaks.append(prepare_ct(volume, CTPreprocess(**cfg)).max().item())
    assert min(plain) < threshold  # interpolation sees the plaque only where a grid point lands
    assert min(peaks) == pytest.approx(0.8, abs=0.02)  # 600 HU, every time


def test_training_shifts_fill_with_background_and_cmr_rolls_phases():
    x = torch.arange(1.0, 26.0).reshape(1, 5, 5)
    assert random_shift(x, [0, 2, 2], None) is x  # inference: untouched
    rng = np.random.default_rng(3)
    for _ in range(5):
        y = random_shift(x, [0, 2, 2], rng)
        kept = y[y > 1]
        assert y.shape == x.shape and set(kept.tolist()) <= set(x.flatten().tolist())
        assert (y == 1).sum() >= 1 or torch.equal(y, x)  # vacated border holds the minimum
    cine = torch.arange(8.0)[:, None, None, None].expand(8, 2, 4, 4).clone()
    cfg = CMRPreprocess(max_shift_px=0)
    rolled = sample_cmr(cine, cfg, np.random.default_rng(1))
    start = int(rolled[0, 0, 0, 0])
    assert rolled[:, 0, 0, 0].tolist() == [(start + i) % 8 for i in range(8)]  # one cycle, any phase first
    assert torch.equal(sample_cmr(cine, cfg, None), cine)
    volume, ct = torch.rand(1, 4, 6, 6), CTPreprocess(max_shift_vox=[1, 2, 2])
    assert sample_ct(volume, ct) is volume  # inference: untouched
    shifted = sample_ct(volume, ct, np.random.default_rng(4))
    assert torch.equal(shifted, random_shift(volume, [1, 2, 2], np.random.default_rng(4)))
    assert not torch.equal(shifted, volume)


def test_ct_refuses_non_hu():
    with pytest.raises(ReaderError, match="HU"):
        prepare_ct(Volume(np.zeros((2, 2, 2), np.float32), (1, 1, 1), units="a.u."), CTPreprocess())


def test_cmr_phases_slices_spacing_and_percentiles():
    n_t, n_z = 20, 10
    array = np.zeros((n_t, n_z, 40, 40), np.float32)
    array += np.arange(n_t)[:, None, None, None] * 10 + np.arange(n_z)[None, :, None, None]
    times = list(np.arange(n_t) * 40.0)  # 800 ms cycle
    volume = Volume(array, (8.0, 2.0, 2.0), np.diag([8.0, 2.0, 2.0, 1.0]), frame_times_ms=times,
                    modality="cmr")
    cfg = CMRPreprocess(phases=4, slices=4, spacing_mm=[4.0, 4.0], size=[24, 24], percentiles=[0, 100])
    out = prepare_cmr(volume, cfg)
    assert out.shape == (4, 4, 24, 24)
    # in-plane 40 x 2 mm -> 20 x 4 mm, padded to 24: 2 zero rows each side
    assert torch.all(out[:, :, :2] == 0) and torch.all(out[:, :, -2:] == 0)
    phase = [0, 5, 10, 15]  # every 200 ms
    slices = [0, 3, 6, 9]
    raw = np.array([[p * 10 + z for z in slices] for p in phase], float)
    expected = (raw - raw.min()) / (raw.max() - raw.min())  # range of what was kept
    assert out[:, :, 12, 12].numpy() == pytest.approx(expected, abs=1e-5)


def test_cmr_needs_a_cine():
    with pytest.raises(ReaderError, match="cine"):
        prepare_cmr(Volume(np.zeros((4, 8, 8), np.float32), (1, 1, 1), modality="cmr"), CMRPreprocess())


def test_config_round_trip_differences_and_unset_sizes():
    cfg = PreprocessConfig.from_dict({"echo": {"size": [64, 64]}})
    data = cfg.to_dict()
    assert PreprocessConfig.from_dict(data) == cfg and data["echo"]["size"] == [64, 64]
    other = PreprocessConfig.from_dict({"echo": {"size": [64, 64]}, "ct": {"window_hu": [-100, 700]}})
    assert other.differences(cfg) == ["ct.window_hu: [-100, 700] != [-200.0, 800.0]"]
    with pytest.raises(ConfigError, match=r"preprocess.ecg.fs, preprocess.ecg.samples not set"):
        cfg.require(["ecg"])
    assert cfg.require([]) is cfg
    with pytest.raises(ConfigError, match="unknown key"):
        PreprocessConfig.from_dict({"ecg": {"hz": 500}}, "run.yaml")
