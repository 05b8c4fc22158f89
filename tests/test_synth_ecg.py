"""The ECG phantom shows each finding the way an ECG measurement program would find it.

Everything is measured from the noisy 12-lead signal (band-pass, R-peak detection with
scipy.signal.find_peaks, a median beat, spatial velocity for QRS/P boundaries), never read back
from the parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sps

from mmcardio.datasets.synthetic.ecg import EDGE_S, ECGParams, PhantomECG, synth_ecg
from mmcardio.records import ECG, STANDARD_LEADS

INDEPENDENT = [STANDARD_LEADS.index(n) for n in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
SEEDS = (0, 1, 2)


def lead(name: str) -> int:
    return STANDARD_LEADS.index(name)


def phantom(seed: int, **kw) -> PhantomECG:
    rng = np.random.default_rng(seed)
    kw.setdefault("frontal_rotation_deg", rng.uniform(-15, 15))
    kw.setdefault("horizontal_rotation_deg", rng.uniform(-10, 10))
    return synth_ecg(ECGParams(**kw), rng)


def filtered(ecg: ECG, high_hz: float = 40.0) -> np.ndarray:
    sos = sps.butter(2, [0.5, high_hz], btype="bandpass", fs=ecg.fs, output="sos")
    return sps.sosfiltfilt(sos, ecg.signal.astype(float), axis=1)


def r_peaks(ecg: ECG) -> np.ndarray:
    """R peaks from the smoothed QRS energy of the independent leads (Pan-Tompkins-like)."""
    x = filtered(ecg)[INDEPENDENT]
    energy = np.sqrt((np.diff(x, axis=1) ** 2).sum(0))
    width = int(0.1 * ecg.fs)
    energy = np.convolve(energy, np.ones(width) / width, mode="same")
    peaks, _ = sps.find_peaks(
        energy, height=0.3 * np.percentile(energy, 99.5), distance=int(0.25 * ecg.fs)
    )
    edge = EDGE_S * ecg.fs
    return peaks[(peaks >= edge) & (peaks <= ecg.n_samples - edge)]


def median_beat(ecg: ECG, high_hz: float = 40.0) -> tuple[np.ndarray, int]:
    """Median of the beats aligned on their R peaks; returns it and the R index inside it."""
    x = filtered(ecg, high_hz)
    before, after = int(0.55 * ecg.fs), int(0.6 * ecg.fs)
    peaks = [p for p in r_peaks(ecg) if p >= before and p + after <= x.shape[1]]
    return np.median(np.stack([x[:, p - before : p + after] for p in peaks]), axis=0), before


def qrs_bounds(ecg: ECG) -> tuple[np.ndarray, int, int]:
    """QRS onset and offset where the spatial velocity exceeds 12 % of its peak."""
    beat, r = median_beat(ecg)
    velocity = np.sqrt((np.gradient(beat[INDEPENDENT], axis=1) ** 2).sum(0))
    lo, hi = r - int(0.12 * ecg.fs), r + int(0.12 * ecg.fs)
    above = np.flatnonzero(velocity[lo:hi] > 0.12 * velocity[lo:hi].max()) + lo
    return beat, int(above[0]), int(above[-1])


def measured_rate(ecg: ECG) -> float:
    return 60.0 * ecg.fs / float(np.mean(np.diff(r_peaks(ecg))))


def rr_cv(ecg: ECG) -> float:
    rr = np.diff(r_peaks(ecg))
    return float(rr.std() / rr.mean())


def qrs_ms(ecg: ECG) -> float:
    _, on, off = qrs_bounds(ecg)
    return (off - on) * 1000.0 / ecg.fs


def pr_ms(ecg: ECG) -> float:
    """P onset: where the P wave's spatial deviation from the TP baseline passes 15 % of its peak."""
    _, on, _ = qrs_bounds(ecg)
    beat, _ = median_beat(ecg, high_hz=25.0)
    x = beat[INDEPENDENT]
    lo, hi = on - int(0.42 * ecg.fs), on - int(0.03 * ecg.fs)
    baseline = x[:, lo : lo + int(0.03 * ecg.fs)].mean(axis=1, keepdims=True)
    magnitude = np.sqrt(((x[:, lo:hi] - baseline) ** 2).sum(0))
    peak = int(np.argmax(magnitude))
    below = np.flatnonzero(magnitude[:peak] < 0.15 * magnitude[peak])
    return (on - lo - (below[-1] if below.size else 0)) * 1000.0 / ecg.fs


def sokolow_lyon(ecg: ECG) -> float:
    """S in V1 + the larger R of V5/V6, from the PR-segment level, in mV."""
    beat, on, off = qrs_bounds(ecg)

    def wave(name: str) -> np.ndarray:
        return beat[lead(name), on : off + 1] - beat[lead(name), on]

    return float(-min(wave("V1").min(), 0.0) + max(wave("V5").max(), wave("V6").max()))


def st_level(ecg: ECG, name: str) -> float:
    """ST level at J + 60 ms relative to the PR segment, in mV."""
    beat, on, off = qrs_bounds(ecg)
    x = beat[lead(name)]
    return float(x[off + int(0.06 * ecg.fs)] - x[on - int(0.02 * ecg.fs)])


def test_record_shape_units_and_truth():
    ecg = phantom(0)
    assert isinstance(ecg, ECG)
    assert ecg.signal.shape == (12, 5000) and ecg.signal.dtype == np.float32
    assert ecg.lead_names == list(STANDARD_LEADS) and ecg.fs == 500.0 and ecg.units == "mV"
    assert 0.5 < np.ptp(ecg.signal[lead("II")]) < 4.0  # millivolts, not volts or microvolts
    assert {m.unit for m in ecg.truth.values()} <= {"bpm", "ms", "mV"}
    assert set(ecg.truth) >= {"heart_rate", "pr_interval", "qrs_duration"}
    assert "pr_interval" not in phantom(0, rhythm="afib").truth  # no P wave, no PR


def test_same_seed_same_signal_other_seed_other_noise():
    assert np.array_equal(phantom(3).signal, phantom(3).signal)
    assert not np.allclose(phantom(3).signal, phantom(4).signal)


@pytest.mark.parametrize("seed", SEEDS)
def test_limb_leads_obey_einthoven_and_goldberger(seed):
    s = phantom(seed, stemi="inferior").signal.astype(float)
    I, II, III, aVR, aVL, aVF = (s[lead(n)] for n in ("I", "II", "III", "aVR", "aVL", "aVF"))
    assert np.abs(III - (II - I)).max() < 1e-4
    assert np.abs(aVR + aVL + aVF).max() < 1e-4
    assert np.abs(aVF - (II - I / 2)).max() < 1e-4
    assert np.ptp(III) > 0.2  # not trivially zero


@pytest.mark.parametrize(
    "rate, rhythm", [(45, "sinus"), (72, "sinus"), (125, "sinus"), (95, "afib")]
)
def test_measured_heart_rate_matches_truth(rate, rhythm):
    for seed in SEEDS:
        ecg = phantom(seed, heart_rate_bpm=rate, rhythm=rhythm)
        assert abs(measured_rate(ecg) - ecg.truth["heart_rate"].value) < 5.0
        assert abs(ecg.truth["heart_rate"].value - rate) < (20 if rhythm == "afib" else 4)


def test_af_is_irregularly_irregular_and_sinus_is_not():
    sinus = [rr_cv(phantom(s)) for s in SEEDS]
    af = [rr_cv(phantom(s, rhythm="afib", heart_rate_bpm=100)) for s in SEEDS]
    assert max(sinus) < 0.06 and min(af) > 0.12
    assert min(af) > 3 * max(sinus)


def f_wave_power(ecg: ECG) -> float:
    """4-9 Hz power of V1 after QRST cancellation (the median QRS-T subtracted at each beat)."""
    x = filtered(ecg)[lead("V1")]
    peaks = r_peaks(ecg)
    before, after = int(0.1 * ecg.fs), int(0.45 * ecg.fs)
    peaks = peaks[(peaks >= before) & (peaks + after <= x.size)]
    template = np.median(np.stack([x[p - before : p + after] for p in peaks]), axis=0)
    residual = x.copy()
    for p in peaks:
        residual[p - before : p + after] -= template
    core = residual[peaks[0] : peaks[-1]]
    freqs, power = sps.welch(core, fs=ecg.fs, nperseg=512)
    return float(power[(freqs >= 4) & (freqs <= 9)].sum())


def test_af_has_fibrillatory_waves_instead_of_p_waves():
    for seed in SEEDS:
        assert f_wave_power(phantom(seed, rhythm="afib", heart_rate_bpm=70)) > 3 * f_wave_power(
            phantom(seed, heart_rate_bpm=70)
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_lbbb_widens_the_measured_qrs(seed):
    assert qrs_ms(phantom(seed, lbbb=True, qrs_ms=140, sokolow_mv=2.8)) >= 120
    assert qrs_ms(phantom(seed, qrs_ms=90)) < 110


def test_lbbb_has_notched_broad_r_in_v6_and_deep_s_in_v1():
    beat, on, off = qrs_bounds(phantom(0, lbbb=True, qrs_ms=150, sokolow_mv=2.8))
    v6 = beat[lead("V6"), on:off] - beat[lead("V6"), on]
    peaks, _ = sps.find_peaks(v6, prominence=0.05)
    assert len(peaks) >= 2  # the M-shaped (notched) R
    assert beat[lead("V1"), on:off].min() - beat[lead("V1"), on] < -0.8


@pytest.mark.parametrize("seed", SEEDS)
def test_sokolow_lyon_separates_lvh(seed):
    assert sokolow_lyon(phantom(seed, lvh=True, strain=True, sokolow_mv=4.0, qrs_ms=100)) > 3.5
    assert sokolow_lyon(phantom(seed, sokolow_mv=2.6)) < 3.5


@pytest.mark.parametrize("seed", SEEDS)
def test_st_elevation_by_territory(seed):
    anterior = phantom(seed, stemi="anterior", st_elevation_mv=0.3)
    inferior = phantom(seed, stemi="inferior", st_elevation_mv=0.3)
    normal = phantom(seed)
    assert st_level(anterior, "V2") >= 0.2
    assert min(st_level(inferior, n) for n in ("II", "III", "aVF")) >= 0.1
    assert st_level(inferior, "aVF") >= 0.2
    assert st_level(inferior, "aVL") < -0.05  # reciprocal depression
    assert max(abs(st_level(normal, n)) for n in ("V2", "aVF", "aVL")) < 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_first_degree_av_block_prolongs_measured_pr(seed):
    assert pr_ms(phantom(seed, pr_ms=240)) > 200
    normal = phantom(seed, pr_ms=160)
    assert 130 < pr_ms(normal) < 200
    assert abs(pr_ms(normal) - normal.truth["pr_interval"].value) < 20


@pytest.mark.parametrize("mains", [50.0, 60.0])
def test_spectrum_shows_the_powerline_peak(mains):
    ecg = phantom(0, powerline_hz=mains)
    freqs, power = sps.welch(ecg.signal[lead("I")], fs=ecg.fs, nperseg=2048)
    at = np.argmin(np.abs(freqs - mains))
    neighbours = power[(np.abs(freqs - mains) > 3) & (np.abs(freqs - mains) < 10)]
    assert power[at] > 20 * np.median(neighbours)
    other = 60.0 if mains == 50.0 else 50.0
    assert power[np.argmin(np.abs(freqs - other))] < power[at] / 20


def test_baseline_wander_is_slow():
    ecg = phantom(0, wander_mv=0.3)
    freqs, power = sps.welch(ecg.signal[lead("V1")], fs=ecg.fs, nperseg=4096)
    assert power[freqs < 0.5].max() > power[(freqs > 0.6) & (freqs < 1.0)].max()


def test_invalid_params_are_refused():
    with pytest.raises(ValueError, match="rhythm"):
        ECGParams(rhythm="flutter")
    with pytest.raises(ValueError, match="stemi"):
        ECGParams(stemi="lateral")
