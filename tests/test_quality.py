"""Input quality checks: real and phantom recordings pass; flat lines, noise, shuffled leads,
out-of-range values, blank or frozen images and novel embeddings are refused with their code."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import examples
from pydicom.data import get_testdata_file

import mmcardio
from mmcardio.datasets.readers import read_video
from mmcardio.datasets.synthetic.ecg import ECGParams, synth_ecg
from mmcardio.errors import MMCardioError
from mmcardio.records import ECG, STANDARD_LEADS, Video, Volume
from mmcardio.report.quality import (
    FLAT_PEAK_TO_PEAK_MV,
    LIMB_RESIDUAL_LIMIT,
    MAX_ECG_MV,
    EmbeddingOOD,
    QualityIssue,
    check_ecg,
    check_study_inputs,
    check_video,
    check_volume,
)
from mmcardio.study import EchoClip, Study

ECHO_CINE = get_testdata_file("examples_ybr_color.dcm")
PATIENTS = {
    "normal": {},
    "afib": {"rhythm": "afib", "heart_rate_bpm": 110.0},
    "brady": {"heart_rate_bpm": 40.0},
    "tachy": {"heart_rate_bpm": 150.0},
    "lbbb": {"lbbb": True, "qrs_ms": 160.0},
    "stemi": {"stemi": "anterior", "q_waves": "anterior"},
    "inferior_stemi": {"stemi": "inferior"},
    "wander": {"wander_mv": 1.0},
}


@pytest.fixture(scope="module")
def real_ecg() -> ECG:
    return mmcardio.read(examples.get_path("waveform"))


@pytest.fixture(scope="module")
def real_echo() -> Video:
    return read_video(ECHO_CINE)


def phantom(kind: str, seed: int = 0) -> ECG:
    rng = np.random.default_rng(seed)
    return synth_ecg(ECGParams(frontal_rotation_deg=rng.uniform(-20, 20),
                               horizontal_rotation_deg=rng.uniform(-15, 15), **PATIENTS[kind]), rng)


def codes(issues: list[QualityIssue]) -> list[str]:
    return [issue.code for issue in issues]


def with_signal(ecg: ECG, signal: np.ndarray, names: list[str] | None = None) -> ECG:
    return ECG(np.asarray(signal, dtype=np.float32), ecg.fs, list(names or ecg.lead_names))


def band_limited_noise(rng: np.random.Generator, sd_mv: float, band: tuple[float, float],
                       shape=(12, 5000), fs: float = 500.0) -> np.ndarray:
    """Gaussian noise keeping only `band` (FFT mask, so no filter edge transients), at sd_mv."""
    spectrum = np.fft.rfft(rng.normal(size=shape), axis=1)
    freqs = np.fft.rfftfreq(shape[1], 1 / fs)
    spectrum[:, (freqs < band[0]) | (freqs > band[1])] = 0
    noise = np.fft.irfft(spectrum, n=shape[1], axis=1)
    return sd_mv * noise / noise.std(axis=1, keepdims=True)


# --- recordings that must pass --------------------------------------------------------------------

def test_real_dicom_ecg_passes(real_ecg):
    assert real_ecg.signal.shape == (12, 10000) and real_ecg.fs == 1000.0
    assert check_ecg(real_ecg) == []


@pytest.mark.parametrize("kind", sorted(PATIENTS))
def test_phantom_patients_pass(kind):
    for seed in range(3):
        assert check_ecg(phantom(kind, seed)) == [], (kind, seed)


def test_independent_channel_gain_errors_within_iec_tolerance_pass(real_ecg):
    """A recorder digitising every limb lead separately, each with up to 5 % gain error."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        gains = 1 + rng.uniform(-0.05, 0.05, size=(12, 1))
        assert check_ecg(with_signal(real_ecg, real_ecg.signal * gains)) == []


def test_real_echo_cine_passes(real_echo):
    assert real_echo.frames.shape == (30, 240, 320, 3)
    assert check_video(real_echo) == []


# --- ECGs that must be refused --------------------------------------------------------------------

@pytest.mark.parametrize("offset_mv", [0.0, 0.7, -2.5])
def test_constant_signal_is_a_flat_line(real_ecg, offset_mv):
    issues = check_ecg(with_signal(real_ecg, np.full((12, 10000), offset_mv)))
    assert codes(issues) == ["flat_line"]
    assert issues[0].value == 0.0 and issues[0].limit == FLAT_PEAK_TO_PEAK_MV


def test_microvolt_noise_is_a_flat_line(real_ecg):
    rng = np.random.default_rng(0)
    issues = check_ecg(with_signal(real_ecg, 0.005 * rng.normal(size=(12, 10000))))
    assert codes(issues) == ["flat_line"] and issues[0].value < FLAT_PEAK_TO_PEAK_MV


def test_one_constant_lead_is_named(real_ecg):
    signal = real_ecg.signal.copy()
    signal[STANDARD_LEADS.index("V3")] = 0.0
    issues = check_ecg(with_signal(real_ecg, signal))
    assert codes(issues)[0] == "flat_line" and "V3" in issues[0].message


@pytest.mark.parametrize("sd_mv", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("band", [(0.0, 250.0), (0.5, 40.0), (5.0, 15.0), (1.0, 5.0)])
def test_gaussian_noise_is_refused_as_noise(sd_mv, band):
    rng = np.random.default_rng(int(sd_mv * 100) + int(band[1]))
    noise = band_limited_noise(rng, sd_mv, band)
    issues = check_ecg(ECG(noise.astype(np.float32), 500.0, list(STANDARD_LEADS)))
    assert codes(issues) == ["noise"]
    assert issues[0].value <= 0.1  # share of candidate complexes with a twin: QRS give >= 0.9


def test_single_lead_noise_is_refused_as_noise():
    noise = band_limited_noise(np.random.default_rng(1), 0.5, (0.5, 40.0), shape=(1, 5000))
    assert codes(check_ecg(ECG(noise.astype(np.float32), 500.0, ["II"]))) == ["noise"]


@pytest.mark.parametrize("hz", [0.3, 1.2])
def test_slow_waves_without_qrs_are_no_cardiac_activity(hz):
    """Baseline wander alone (or a slow sine at a heart rate) has no QRS-band energy."""
    t = np.arange(5000) / 500.0
    wave = np.sin(2 * np.pi * hz * t) * np.ones((12, 1))
    assert codes(check_ecg(ECG(wave.astype(np.float32), 500.0, list(STANDARD_LEADS)))) == [
        "no_cardiac_activity"]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_an_amplitude_issue(real_ecg, bad):
    signal = real_ecg.signal.copy()
    signal[1, 5000:5010] = bad
    issues = check_ecg(with_signal(real_ecg, signal))
    assert codes(issues) == ["amplitude"] and "'II'" in issues[0].message


def test_microvolts_read_as_millivolts_are_an_amplitude_issue(real_ecg):
    issues = check_ecg(with_signal(real_ecg, real_ecg.signal * 1000.0))
    assert codes(issues) == ["amplitude"]
    assert issues[0].value > 100 * MAX_ECG_MV and issues[0].limit == MAX_ECG_MV


def test_saturation_is_an_amplitude_issue_but_a_pacing_spike_is_not(real_ecg):
    spiked = real_ecg.signal.copy()
    spiked[6, 3000:3002] = 20.0  # 2 ms pacemaker artefact at 1000 Hz
    assert check_ecg(with_signal(real_ecg, spiked)) == []
    saturated = real_ecg.signal.copy()
    saturated[6, 3000:3050] = 20.0  # 50 ms pinned at the ADC rail
    assert codes(check_ecg(with_signal(real_ecg, saturated))) == ["amplitude"]


# --- lead order ----------------------------------------------------------------------------------

def permutation_detection(ecg: ECG, rng: np.random.Generator, n: int) -> tuple[int, int, int]:
    """(caught, permutations that move a limb lead, of those caught) over n random shuffles."""
    caught = limb_moved = limb_caught = 0
    for _ in range(n):
        order = rng.permutation(12)
        while np.array_equal(order, np.arange(12)):
            order = rng.permutation(12)
        hit = bool(check_ecg(with_signal(ecg, ecg.signal[order])))
        caught += hit
        if not np.array_equal(order[:6], np.arange(6)):
            limb_moved += 1
            limb_caught += hit
    return caught, limb_moved, limb_caught


def test_random_lead_permutations_are_caught(real_ecg):
    rng = np.random.default_rng(2024)
    records = [("real", real_ecg, 50)] + [(k, phantom(k, 7), 7) for k in sorted(PATIENTS)]
    total = caught = limb_moved = limb_caught = 0
    for _, ecg, n in records:
        c, m, mc = permutation_detection(ecg, rng, n)
        total, caught, limb_moved, limb_caught = total + n, caught + c, limb_moved + m, limb_caught + mc
    print(f"random 12-lead permutations caught: {caught}/{total} ({caught / total:.1%}); "
          f"moving a limb lead: {limb_caught}/{limb_moved}")
    assert total >= 100 and caught / total >= 0.95
    assert limb_caught == limb_moved


def test_every_limb_lead_transposition_of_the_real_ecg_is_caught(real_ecg):
    for i in range(6):
        for j in range(i + 1, 12):
            order = list(range(12))
            order[i], order[j] = j, i
            issues = check_ecg(with_signal(real_ecg, real_ecg.signal[order]))
            assert "lead_inconsistency" in codes(issues), (STANDARD_LEADS[i], STANDARD_LEADS[j])
            assert issues[codes(issues).index("lead_inconsistency")].value > LIMB_RESIDUAL_LIMIT


def test_derived_limb_leads_pass_and_eight_lead_records_are_not_checked(real_ecg):
    """Leads the reader derived satisfy the relations; without III/aVx there is nothing to test."""
    keep = [STANDARD_LEADS.index(n) for n in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
    names = [STANDARD_LEADS[i] for i in keep]
    assert check_ecg(with_signal(real_ecg, real_ecg.signal[keep], names)) == []


def test_shuffled_or_reversed_precordial_leads_are_caught(real_ecg):
    rng = np.random.default_rng(5)
    reversed_chest = list(range(6)) + list(range(11, 5, -1))
    assert codes(check_ecg(with_signal(real_ecg, real_ecg.signal[reversed_chest]))) == [
        "precordial_order"]
    caught = 0
    for _ in range(50):
        order = list(range(6)) + list(6 + rng.permutation(6))
        caught += "precordial_order" in codes(check_ecg(with_signal(real_ecg, real_ecg.signal[order])))
    print(f"precordial-only shuffles of the real ECG caught: {caught}/50")
    assert caught >= 45


# --- video and volume ----------------------------------------------------------------------------

def test_blank_videos_are_blank(real_echo):
    rng = np.random.default_rng(0)
    black = np.zeros_like(real_echo.frames)
    grey = np.clip(128 + rng.normal(0, 1.5, real_echo.frames.shape), 0, 255).astype(np.uint8)
    for frames in (black, grey):
        issues = check_video(Video(frames, real_echo.fps))
        assert codes(issues) == ["blank"] and issues[0].value < 10


def test_a_copied_still_frame_is_static(real_echo):
    rng = np.random.default_rng(0)
    still = np.repeat(real_echo.frames[:1], 30, axis=0)
    recoded = np.clip(still + rng.integers(-3, 4, still.shape), 0, 255).astype(np.uint8)
    for frames in (still, recoded, real_echo.frames[:1]):
        issues = check_video(Video(frames, real_echo.fps))
        assert codes(issues) == ["static"] and issues[0].value < 0.005


def test_blank_volume_and_nan_voxels(real_echo):
    air = Volume(np.full((8, 32, 32), -1024.0, np.float32), (2.0, 0.7, 0.7), units="HU")
    assert codes(check_volume(air)) == ["blank"]
    assert check_volume(air)[0].modality == "ct"
    rng = np.random.default_rng(0)
    body = Volume(rng.normal(40, 30, (8, 32, 32)).astype(np.float32), (2.0, 0.7, 0.7), units="HU")
    assert check_volume(body) == []
    body.array[2, 3, 4] = np.nan
    assert codes(check_volume(body)) == ["non_finite"]


def test_study_inputs_are_dispatched_by_record_type(real_ecg, real_echo):
    still = Video(np.repeat(real_echo.frames[:1], 10, axis=0), real_echo.fps)
    blank = Volume(np.zeros((4, 16, 16), np.float32), (8.0, 1.5, 1.5), modality="cmr")
    issues = check_study_inputs({"ecg": real_ecg, "echo": [real_echo, still], "cmr": blank})
    assert [(i.modality, i.code) for i in issues] == [("echo[1]", "static"), ("cmr", "blank")]
    with pytest.raises(TypeError, match="ecg"):
        check_study_inputs({"ecg": real_ecg.signal})


def test_a_study_of_real_files_passes():
    study = Study("S1", "P1", ecg=Path(examples.get_path("waveform")),
                  echo=[EchoClip(Path(ECHO_CINE), "A4C")])
    assert check_study_inputs(study) == []


# --- embedding-space novelty ---------------------------------------------------------------------

def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    return unit(centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, centres.shape[1])))


@pytest.fixture(scope="module")
def ood_data():
    rng = np.random.default_rng(0)
    centres = {key: rng.normal(size=(6, 32)) for key in ("ecg", "echo")}
    train = {key: clustered(rng, c, 600) for key, c in centres.items()}
    held_out = {key: clustered(rng, c, 400) for key, c in centres.items()}
    return EmbeddingOOD.fit(train, k=10, quantile=0.99), train, held_out, rng


def test_thresholds_are_the_quantile_of_leave_one_out_scores(ood_data):
    detector, train, _, _ = ood_data
    x = train["ecg"]
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    loo = (1 - np.sort(sims, axis=1)[:, -10:]).mean(axis=1)
    assert detector.thresholds["ecg"] == pytest.approx(np.quantile(loo, 0.99), rel=1e-5)


def test_held_out_in_distribution_is_rarely_flagged_and_far_points_always(ood_data):
    detector, _, held_out, rng = ood_data
    for key, vectors in held_out.items():
        flagged = np.mean([detector.is_out(key, v) for v in vectors])
        print(f"{key}: held-out in-distribution flagged {flagged:.1%}")
        assert flagged <= 0.05
    far = unit(rng.normal(size=(100, 32)))  # random directions: no training cluster nearby
    novel_cluster = clustered(rng, rng.normal(size=(1, 32)), 100)
    for vectors in (far, novel_cluster):
        assert all(detector.is_out("ecg", v) for v in vectors)
    issue = detector.check("ecg", far[0])
    assert issue.code == "out_of_distribution" and issue.value > issue.limit


def test_save_load_round_trip_gives_identical_scores(ood_data, tmp_path):
    detector, _, held_out, _ = ood_data
    folder = detector.save(tmp_path / "ood")
    assert sorted(p.name for p in folder.iterdir()) == ["ood.json", "references.safetensors"]
    assert json.loads((folder / "ood.json").read_text())["k"] == 10
    loaded = EmbeddingOOD.load(folder)
    assert loaded.thresholds == detector.thresholds
    for key, vectors in held_out.items():
        assert np.array_equal(loaded.scores(key, vectors), detector.scores(key, vectors))
    again = EmbeddingOOD.from_dict(detector.to_dict())
    assert np.array_equal(again.scores("ecg", held_out["ecg"]), detector.scores("ecg", held_out["ecg"]))


def test_unknown_key_is_refused_with_its_reason(ood_data):
    detector, _, held_out, _ = ood_data
    vector = held_out["ecg"][0]
    assert detector.is_out("ct", vector)
    issue = detector.check("ct", vector)
    assert issue.code == "untrained_key" and "not trained" in issue.message
    with pytest.raises(MMCardioError, match="'ct'"):
        detector.score("ct", vector)


def test_bad_inputs_are_refused(ood_data, tmp_path):
    detector, train, _, _ = ood_data
    with pytest.raises(MMCardioError, match="at least 11"):
        EmbeddingOOD.fit({"ecg": train["ecg"][:10]}, k=10)
    with pytest.raises(MMCardioError, match="dimensions"):
        detector.score("ecg", np.ones(16, np.float32))
    with pytest.raises(MMCardioError, match="missing"):
        EmbeddingOOD.load(tmp_path)
