"""ECG phantom: a 3-D cardiac dipole projected onto the 12 standard leads.

The heart vector d(t) (x = patient left, y = inferior, z = anterior; mV) is a sum of Gaussian
waves per beat (P, septal q, R, S, T), McSharry's ECGSYN model written in time rather than
phase and extended to three dimensions as in Sayadi et al.'s VCG model. Each electrode sees
`c_e . d(t)` (a lead-field vector per electrode: an Einthoven triangle for the limbs and
Dower-like directions for V1-V6) plus its own noise; leads are electrode differences, so
III = II - I and aVR + aVL + aVF = 0 hold exactly, noise included, as on a real recorder.

No library synthesises multi-lead ECGs with controlled pathology, hence this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import signal as sps
from scipy.special import expit

from mmcardio.records import ECG, STANDARD_LEADS, Measurement

RHYTHMS = ("sinus", "afib")
TERRITORIES = ("anterior", "inferior")
#: The truth heart rate counts R peaks at least this far from either end of the record.
EDGE_S = 0.1

# Electrode lead-field vectors (rows: RA, LA, LL, V1..V6). Limb electrodes sit on an
# equilateral triangle (Einthoven), so lead I = (1, 0, 0) and lead II points at +60 degrees.
_LIMB_ANGLES_DEG = (-150.0, -30.0, 90.0)
# Precordial: horizontal angle from the left (+x) toward anterior (+z), inferior offset, gain.
_PRECORDIAL = (
    (115.0, -0.05, 1.0),
    (95.0, -0.05, 1.5),
    (75.0, 0.05, 1.6),
    (60.0, 0.15, 1.5),
    (30.0, 0.2, 1.25),
    (0.0, 0.25, 1.0),
)


def _electrode_fields() -> np.ndarray:
    limb = [
        np.array([np.cos(np.radians(a)), np.sin(np.radians(a)), 0.0]) / np.sqrt(3.0)
        for a in _LIMB_ANGLES_DEG
    ]
    chest = [
        g * np.array([np.cos(np.radians(a)), y, np.sin(np.radians(a))]) for a, y, g in _PRECORDIAL
    ]
    return np.stack(limb + chest)


def _lead_matrix() -> np.ndarray:
    """12 x 9 matrix: standard leads as differences of electrode potentials (RA, LA, LL, V1-6)."""
    ra, la, ll = np.eye(9)[0], np.eye(9)[1], np.eye(9)[2]
    wilson = (ra + la + ll) / 3.0
    limb = [la - ra, ll - ra, ll - la, ra - (la + ll) / 2, la - (ra + ll) / 2, ll - (ra + la) / 2]
    chest = [np.eye(9)[3 + i] - wilson for i in range(6)]
    return np.stack(limb + chest)


def lead_vectors() -> np.ndarray:
    """12 x 3: the dipole-to-lead projection (lead voltage = row . heart vector)."""
    return _lead_matrix() @ _electrode_fields()


@dataclass
class ECGParams:
    """What the phantom should show. Intervals in ms, amplitudes in mV.

    sokolow_mv is the target S(V1) + max(R(V5), R(V6)) of the noise-free beat (LVH > 3.5 mV);
    st_elevation_mv the ST shift the injury current gives in V2 (anterior) or aVF (inferior).
    """

    heart_rate_bpm: float = 72.0
    rhythm: str = "sinus"
    pr_ms: float = 160.0
    qrs_ms: float = 90.0
    qtc_ms: float = 410.0
    lbbb: bool = False
    lvh: bool = False
    strain: bool = False
    stemi: str | None = None
    q_waves: str | None = None
    sokolow_mv: float = 2.4
    st_elevation_mv: float = 0.35
    frontal_rotation_deg: float = 0.0
    horizontal_rotation_deg: float = 0.0
    powerline_hz: float = 50.0
    emg_mv: float = 0.01
    wander_mv: float = 0.1

    def __post_init__(self) -> None:
        if self.rhythm not in RHYTHMS:
            raise ValueError(f"rhythm must be one of {RHYTHMS}, got {self.rhythm!r}")
        for name in ("stemi", "q_waves"):
            value = getattr(self, name)
            if value is not None and value not in TERRITORIES:
                raise ValueError(f"{name} must be one of {TERRITORIES} or None, got {value!r}")


@dataclass
class PhantomECG(ECG):
    """An `ECG` that also carries its ground truth (measurements with units, and rhythm)."""

    truth: dict[str, Measurement] = field(default_factory=dict)
    rhythm: str = "sinus"


@dataclass
class _Wave:
    """One Gaussian of the heart vector: centre and width in ms after QRS onset."""

    center_ms: float
    sigma_ms: float
    vector: np.ndarray


def _unit(*xyz: float) -> np.ndarray:
    v = np.asarray(xyz, dtype=float)
    return v / np.linalg.norm(v)


def _rotation(frontal_deg: float, horizontal_deg: float) -> np.ndarray:
    """Anatomical axis variation: rotation about z (frontal plane) then about y (horizontal)."""
    a, b = np.radians(frontal_deg), np.radians(horizontal_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, -np.sin(b)], [0, 1, 0], [np.sin(b), 0, np.cos(b)]])
    return ry @ rz


def _qrs_waves(p: ECGParams) -> list[_Wave]:
    """QRS Gaussians (unit scale) laid out so that they span exactly [0, qrs_ms]."""
    d = p.qrs_ms
    if p.lbbb:  # left-to-right septal activation lost; late, slow, notched left-ward forces
        waves = [
            _Wave(0.30 * d, 0.12 * d, 1.0 * _unit(0.8, 0.15, -0.58)),
            _Wave(0.72 * d, 0.11 * d, 1.1 * _unit(0.75, 0.3, -0.6)),
        ]
    else:
        r_dir = _unit(0.7, 0.4, -0.6) if p.lvh else _unit(0.6, 0.75, -0.25)
        waves = [
            _Wave(0.12 * d, 0.045 * d, 0.22 * _unit(-0.5, 0.1, 0.85)),
            _Wave(0.42 * d, 0.12 * d, 1.3 * r_dir),
            _Wave(0.78 * d, 0.085 * d, 0.35 * _unit(-0.35, -0.55, -0.75)),
        ]
    if p.q_waves == "anterior":  # necrosis: early forces point away from the scar
        waves.append(_Wave(0.16 * d, 0.06 * d, 0.45 * _unit(0.0, 0.0, -1.0)))
    elif p.q_waves == "inferior":
        waves.append(_Wave(0.16 * d, 0.06 * d, 0.4 * _unit(0.1, -1.0, 0.0)))
    return waves


def _evaluate(waves: list[_Wave], t_ms: np.ndarray) -> np.ndarray:
    """Heart vector [3, len(t)] of a set of Gaussian waves."""
    centers = np.array([w.center_ms for w in waves])[:, None]
    sigmas = np.array([w.sigma_ms for w in waves])[:, None]
    vectors = np.stack([w.vector for w in waves])  # [n, 3]
    return vectors.T @ np.exp(-0.5 * ((t_ms[None, :] - centers) / sigmas) ** 2)


def _sokolow_lyon(qrs: list[_Wave], qrs_ms: float) -> float:
    """S(V1) + max(R(V5), R(V6)) of the noise-free QRS, in mV."""
    t = np.arange(-10.0, qrs_ms + 10.0, 0.5)
    leads = lead_vectors() @ _evaluate(qrs, t)
    v1, v5, v6 = (leads[STANDARD_LEADS.index(n)] for n in ("V1", "V5", "V6"))
    return float(-min(v1.min(), 0.0) + max(v5.max(), v6.max()))


@dataclass
class _Beat:
    """Everything of one beat template that does not change from beat to beat (besides QT)."""

    qrs: list[_Wave]
    p_wave: _Wave | None
    t_vector: np.ndarray
    st_vector: np.ndarray  # plateau from J point to T end (injury current, LBBB/strain shifts)


def _beat_template(p: ECGParams) -> _Beat:
    rot = _rotation(p.frontal_rotation_deg, p.horizontal_rotation_deg)
    qrs = [_Wave(w.center_ms, w.sigma_ms, rot @ w.vector) for w in _qrs_waves(p)]
    scale = p.sokolow_mv / _sokolow_lyon(qrs, p.qrs_ms)
    qrs = [_Wave(w.center_ms, w.sigma_ms, scale * w.vector) for w in qrs]
    p_wave = None
    if p.rhythm == "sinus":  # P centre sits 2.5 sigma after P onset, which is PR before QRS onset
        p_wave = _Wave(2.5 * 18.0 - p.pr_ms, 18.0, rot @ (0.14 * _unit(0.5, 0.8, 0.2)))
    t_vector = 0.35 * _unit(0.65, 0.55, 0.4)
    st_vector = np.zeros(3)
    if p.lbbb:  # secondary repolarisation change: ST and T opposite to the QRS
        t_vector = 0.3 * _unit(-0.6, -0.2, 0.65)
        st_vector = 0.08 * _unit(-0.6, -0.2, 0.65)
    elif p.lvh and p.strain:  # strain: lateral ST depression, asymmetric T inversion
        t_vector = 0.25 * _unit(-0.7, 0.2, 0.6)
        st_vector = 0.07 * _unit(-0.7, 0.2, 0.6)
    t_vector, st_vector = rot @ t_vector, rot @ st_vector
    if p.stemi:
        st_vector = st_vector + _injury_vector(p, rot)
    return _Beat(qrs, p_wave, t_vector, st_vector)


def _injury_vector(p: ECGParams, rot: np.ndarray) -> np.ndarray:
    """Injury current toward the infarct, scaled so the index lead shows st_elevation_mv."""
    direction = rot @ (_unit(0.2, 0.0, 1.0) if p.stemi == "anterior" else _unit(-0.25, 1.0, -0.1))
    index = STANDARD_LEADS.index("V2" if p.stemi == "anterior" else "aVF")
    return p.st_elevation_mv / float(lead_vectors()[index] @ direction) * direction


def _qt_ms(p: ECGParams, rr_ms: float) -> float:
    """Bazett QT for the preceding RR, lengthened by a wide QRS."""
    return p.qtc_ms * np.sqrt(rr_ms / 1000.0) + max(p.qrs_ms - 90.0, 0.0)


def _beat_vector(beat: _Beat, p: ECGParams, rr_ms: float, t_ms: np.ndarray) -> np.ndarray:
    """Heart vector of one beat, t_ms relative to its QRS onset."""
    qt = _qt_ms(p, rr_ms)
    sigma_t = 0.1 * qt
    waves = list(beat.qrs) + [_Wave(qt - 2.5 * sigma_t, sigma_t, beat.t_vector)]
    if beat.p_wave is not None:
        waves.append(beat.p_wave)
    vector = _evaluate(waves, t_ms)
    if np.any(beat.st_vector):
        plateau = expit((t_ms - p.qrs_ms - 8.0) / 5.0) * expit((qt - 1.5 * sigma_t - t_ms) / 20.0)
        vector += beat.st_vector[:, None] * plateau[None, :]
    return vector


def _qrs_onsets(
    p: ECGParams, rng: np.random.Generator, seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """QRS onset times (s) from 1.5 s before the record to after its end, and each beat's RR."""
    rr0 = 60.0 / p.heart_rate_bpm
    onsets, rrs = [], []
    t = -1.5 - rng.uniform(0.0, rr0)
    if p.rhythm == "afib":  # irregularly irregular ventricular response
        shape = rng.uniform(10.0, 20.0)
        while t < seconds + 0.5:
            rr = max(0.3, rr0 * rng.gamma(shape, 1.0 / shape))
            t += rr
            onsets.append(t)
            rrs.append(rr)
    else:  # sinus: respiratory sinus arrhythmia + Mayer waves + a little jitter
        resp_hz, rsa = (
            rng.uniform(0.15, 0.35),
            rng.uniform(0.01, 0.035) * min(1.0, 75.0 / p.heart_rate_bpm),
        )
        lf_phase, resp_phase = rng.uniform(0, 2 * np.pi, size=2)
        while t < seconds + 0.5:
            rr = rr0 * (
                1
                + rsa * np.sin(2 * np.pi * resp_hz * t + resp_phase)
                + 0.01 * np.sin(2 * np.pi * 0.1 * t + lf_phase)
                + rng.normal(0, 0.006)
            )
            t += rr
            onsets.append(t)
            rrs.append(rr)
    return np.asarray(onsets), np.asarray(rrs)


def _fibrillatory_waves(p: ECGParams, rng: np.random.Generator, t_s: np.ndarray) -> np.ndarray:
    """Atrial f-waves [3, n]: 4-9 Hz with a wandering frequency and amplitude."""
    out = np.zeros((3, t_s.size))
    dt = t_s[1] - t_s[0]
    for direction in (_unit(-0.3, 0.6, 0.7), _unit(0.5, 0.7, 0.3)):
        base = rng.uniform(5.0, 7.5)
        wander = np.cumsum(rng.normal(0, 0.15, t_s.size)) * np.sqrt(dt)
        freq = np.clip(base + sps.savgol_filter(wander, 51, 2), 4.0, 9.0)
        phase = 2 * np.pi * np.cumsum(freq) * dt + rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.04, 0.09) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t_s))
        out += direction[:, None] * (amp * np.sin(phase))[None, :]
    return out


def _electrode_noise(
    p: ECGParams, rng: np.random.Generator, t_s: np.ndarray, fs: float
) -> np.ndarray:
    """Per-electrode noise [9, n]: baseline wander (<0.5 Hz), mains pickup, EMG."""
    n_el = 9
    freqs = rng.uniform(0.05, 0.45, size=(n_el, 3))
    phases = rng.uniform(0, 2 * np.pi, size=(n_el, 3))
    amps = rng.uniform(0.2, 1.0, size=(n_el, 3)) * p.wander_mv / 2
    wander = np.einsum(
        "ek,ekn->en", amps, np.sin(2 * np.pi * freqs[..., None] * t_s + phases[..., None])
    )
    mains_amp = rng.uniform(0.01, 0.04, size=(n_el, 1))
    mains = mains_amp * np.sin(
        2 * np.pi * p.powerline_hz * t_s + rng.uniform(0, 2 * np.pi, size=(n_el, 1))
    )
    emg_band = sps.butter(4, [20.0, min(150.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
    emg_gain = np.r_[np.full(3, 1.5), np.ones(6)][:, None]  # limb muscles are the larger source
    emg = sps.sosfilt(emg_band, rng.normal(0, 1, size=(n_el, t_s.size)), axis=1)
    emg *= p.emg_mv * emg_gain / max(float(np.std(emg)), 1e-12)
    return wander + mains + emg


def synth_ecg(
    params: ECGParams, rng: np.random.Generator, fs: float = 500.0, seconds: float = 10.0
) -> PhantomECG:
    """A 12-lead resting ECG (mV) showing `params`, with realistic noise, and its truth.

    truth: heart_rate (bpm, mean RR of the R peaks at least EDGE_S inside the record),
    pr_interval (ms, sinus only), qrs_duration, qt_interval (ms, at the mean RR),
    sokolow_lyon (mV, noise-free) and st_elevation (mV in V2 or aVF, STEMI only).
    `rhythm` is "sinus" or "afib".
    """
    n = round(fs * seconds)
    t_s = np.arange(n) / fs
    beat = _beat_template(params)
    onsets, rrs = _qrs_onsets(params, rng, seconds)
    heart = np.zeros((3, n))
    reach = int(1.2 * fs)  # a beat's P..T spans well under 1.2 s either side of QRS onset
    for onset, rr in zip(onsets, rrs):
        centre = round(onset * fs)
        lo, hi = max(centre - reach, 0), min(centre + reach, n)
        if lo < hi:
            heart[:, lo:hi] += _beat_vector(
                beat, params, rr * 1000.0, (t_s[lo:hi] - onset) * 1000.0
            )
    if params.rhythm == "afib":
        heart += _fibrillatory_waves(params, rng, t_s)
    resp = 1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.15, 0.35) * t_s + rng.uniform(0, 2 * np.pi))
    electrodes = _electrode_fields() @ (heart * resp) + _electrode_noise(params, rng, t_s, fs)
    leads = (_lead_matrix() @ electrodes).astype(np.float32)
    return PhantomECG(
        signal=leads,
        fs=float(fs),
        lead_names=list(STANDARD_LEADS),
        source="phantom",
        truth=_truth(params, beat, onsets, rrs, seconds),
        rhythm=params.rhythm,
    )


def _truth(
    p: ECGParams, beat: _Beat, onsets: np.ndarray, rrs: np.ndarray, seconds: float
) -> dict[str, Measurement]:
    r_offset_s = max(beat.qrs, key=lambda w: np.linalg.norm(w.vector)).center_ms / 1000.0
    r_times = onsets + r_offset_s
    inside = r_times[(r_times >= EDGE_S) & (r_times <= seconds - EDGE_S)]
    rate = 60.0 / float(np.mean(np.diff(inside))) if inside.size > 1 else p.heart_rate_bpm
    truth = {
        "heart_rate": Measurement(round(rate, 1), "bpm"),
        "qrs_duration": Measurement(round(p.qrs_ms, 1), "ms"),
        "qt_interval": Measurement(round(float(_qt_ms(p, 1000.0 * float(np.mean(rrs)))), 1), "ms"),
        "sokolow_lyon": Measurement(round(_sokolow_lyon(beat.qrs, p.qrs_ms), 2), "mV"),
    }
    if p.rhythm == "sinus":
        truth["pr_interval"] = Measurement(round(p.pr_ms, 1), "ms")
    if p.stemi:
        truth["st_elevation"] = Measurement(round(p.st_elevation_mv, 2), "mV")
    return truth
