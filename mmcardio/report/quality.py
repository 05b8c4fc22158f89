"""Inputs the report head must not draft from: signal checks and embedding-space novelty.

`check_ecg`, `check_video`, `check_volume` and `check_study_inputs` return `QualityIssue`s
(an empty list means nothing was found). The ECG checks rest on physiology and the ECG
standards, not on the phantom: a flat or out-of-range signal, no repeating QRS complex, limb
leads that break Einthoven/Goldberger, precordial leads out of spatial order. `EmbeddingOOD`
flags embeddings far from everything a head was trained on (mean cosine distance to the k
nearest training vectors above a quantile of the training leave-one-out distances).

Written here because no dependency checks ECG lead relations, QRS repetition or frame
motion (NeuroKit2's `ecg_quality`, not a dependency, grades one lead at a time). Measured
figures quoted below come from the real pydicom ECG and echo, 201 phantom cohort ECGs
(`sample_patient`) and the tests in tests/test_quality.py.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from safetensors.numpy import load_file, save_file
from scipy import signal as sps

from mmcardio.errors import MMCardioError
from mmcardio.io import atomic_path
from mmcardio.records import ECG, Video, Volume

__all__ = ["EmbeddingOOD", "QualityIssue", "check_ecg", "check_study_inputs", "check_video",
           "check_volume"]

# --- limits -------------------------------------------------------------------------------------

#: Low QRS voltage is < 0.5 mV in every limb lead (< 1 mV precordial); 0.05 mV is a tenth of
#: that, a small P wave: below it on every lead nothing can be measured.
FLAT_PEAK_TO_PEAK_MV = 0.05
#: Robust peak-to-peak percentiles: a lone spike does not make a flat lead usable.
ROBUST_PERCENTILES = (0.5, 99.5)
#: IEC 60601-2-25 electrocardiographs record +-5 mV; the tallest LVH QRS reach 5-7 mV. More
#: than 15 mV from the lead's baseline is a unit/gain error or saturation, not the heart...
MAX_ECG_MV = 15.0
#: ...when it lasts 10 ms or more: pacemaker spikes (< 2 ms) may be taller in raw exports.
MAX_ECG_EXCURSION_S = 0.010
#: Pan & Tompkins (1985): the band holding most QRS energy, above T waves and baseline wander.
QRS_BAND_HZ = (5.0, 15.0)
#: Band for shapes and lead relations: without wander (< 0.5 Hz), mains and most EMG (> 40 Hz).
MORPHOLOGY_BAND_HZ = (0.5, 40.0)
#: Ventricular refractory period: two QRS complexes are never closer than 0.2 s.
REFRACTORY_S = 0.2
#: Cardiac periods a drafted report may describe (24-240 bpm); longer is asystole or pauses.
MAX_RR_S = 2.5
#: Half-width of the window compared between complexes: a 200 ms QRS with centring jitter.
COMPLEX_HALF_WIDTH_S = 0.12
#: Every QRS has a near-identical twin in the record. Median best twin r measured: >= 0.97 in
#: the real ECG and phantoms (AF, 40-150 bpm, LBBB, STEMI, heavy EMG); 12-lead noise of any
#: band 0.12-0.41, one noise trace on every lead <= 0.54.
TWIN_CORRELATION = 0.8
#: Share of candidate complexes that must have a twin (bigeminy and picked-up T waves pass).
MIN_TWIN_FRACTION = 0.5
#: QRS energy over the quietest decile of the record (the TP segment). Measured: stationary
#: multi-lead noise 1.2-1.6, single-lead white noise 2.4-2.9 (refused as twinless anyway),
#: LBBB at 150 bpm 3.6, every other phantom and the real DICOM ECG >= 5. This catches
#: periodic non-QRS waves (sinusoids) that have twins but no quiet baseline.
MIN_QRS_TO_BASELINE = 2.0
#: Residual of a relation over the size of I and II. Leads the device derived meet it to
#: quantisation (0.002 measured); independently digitised leads with the +-5 % gain error IEC
#: 60601-2-25 tolerates reach 0.07. Swapping two limb leads, or a limb and a chest lead, gave
#: > 0.1 in 99.3 % of 10,251 cases; the misses swap near-identical leads (e.g. II and aVF
#: when I is tiny), which leave the tracing almost unchanged.
LIMB_RESIDUAL_LIMIT = 0.1
#: Lead = weights . (I, II): Einthoven (III) and Goldberger (aVR, aVL, aVF).
LIMB_RELATIONS: dict[str, tuple[float, float]] = {
    "III": (-1.0, 1.0), "aVR": (-0.5, -0.5), "aVL": (1.0, -0.5), "aVF": (-0.5, 1.0)}
PRECORDIAL = ("V1", "V2", "V3", "V4", "V5", "V6")
#: Adjacent chest electrodes see the most alike signals (the body-surface potential is smooth).
#: Excess of the stated order's path (sum of 1 - r over neighbours) over the best order's: 0.0
#: on the real ECG and every phantom; with the reversal rule below, 99.3 % of shuffled V1-V6
#: and 86 % of swaps of two chest leads are caught (V4-V6 often look alike).
PRECORDIAL_PATH_EXCESS_LIMIT = 0.3
#: V6 faces lead I's direction, V1 the opposite: r(V1, I) exceeding r(V6, I) by this much is
#: a reversed order (measured: r(V6, I) - r(V1, I) >= 1.18 on the real ECG and 40 phantoms).
PRECORDIAL_REVERSAL_LIMIT = 0.3
#: 8-bit video: lossy coding moves a uniform frame by 2-3 grey levels; an echo sector spans
#: > 100. A robust intensity range below 10 levels in every frame is no image.
BLANK_VIDEO_RANGE = 10.0
#: A pixel "moves" when it changes by more than lossy re-encoding noise of a still frame.
MOTION_GREY_LEVELS = 12.0
#: Moving pixels in the busiest frame pair: 2.5-6 % in the real echo cine; 0.5 % is an
#: overlay (ECG trace, frame counter) on a copied still frame.
MIN_MOVING_FRACTION = 0.005
#: A volume whose robust range is this small against its largest magnitude is constant.
BLANK_VOLUME_RELATIVE_RANGE = 1e-3


@dataclass(frozen=True)
class QualityIssue:
    """Why an input must not be drafted from. value/limit: the measured number and its limit."""

    modality: str
    code: str
    message: str
    value: float | None = None
    limit: float | None = None


# --- ECG ----------------------------------------------------------------------------------------

def check_ecg(ecg: ECG, modality: str = "ecg") -> list[QualityIssue]:
    """Amplitude, flat line, absent cardiac activity, limb-lead relations, precordial order.

    Later checks run only when the earlier ones pass: lead relations mean nothing on noise.
    """
    x = np.asarray(ecg.signal, dtype=np.float64)
    stop = _amplitude_issues(x, ecg, modality) or _all_flat_issues(x, modality)
    if stop:
        return stop
    issues = _constant_lead_issues(x, ecg, modality)
    usable = np.ptp(x, axis=1) > 0
    activity = _activity_issues(x[usable], ecg.fs, modality)
    if activity:
        return issues + activity
    shaped = _bandpass(x, ecg.fs, MORPHOLOGY_BAND_HZ)
    leads = {name: shaped[i] for i, name in enumerate(ecg.lead_names) if usable[i]}
    return issues + _limb_issues(leads, modality) + _precordial_issues(leads, modality)


def _amplitude_issues(x: np.ndarray, ecg: ECG, modality: str) -> list[QualityIssue]:
    if not np.all(np.isfinite(x)):
        bad = [n for n, row in zip(ecg.lead_names, x) if not np.all(np.isfinite(row))]
        return [QualityIssue(modality, "amplitude", f"NaN or infinite samples in leads {bad}",
                             float("nan"), None)]
    excursion = np.abs(x - np.median(x, axis=1, keepdims=True))
    long_enough = max(1, int(np.ceil(MAX_ECG_EXCURSION_S * ecg.fs)))
    bad = [n for n, row in zip(ecg.lead_names, excursion) if np.sum(row > MAX_ECG_MV) >= long_enough]
    if not bad:
        return []
    return [QualityIssue(modality, "amplitude",
                         f"leads {bad} stay beyond {MAX_ECG_MV:g} mV of baseline for "
                         f">= {MAX_ECG_EXCURSION_S * 1000:g} ms (wrong units, gain or saturation)",
                         float(excursion.max()), MAX_ECG_MV)]


def _all_flat_issues(x: np.ndarray, modality: str) -> list[QualityIssue]:
    lo, hi = np.percentile(x, ROBUST_PERCENTILES, axis=1)
    largest = float(np.max(hi - lo))
    if largest >= FLAT_PEAK_TO_PEAK_MV:
        return []
    return [QualityIssue(modality, "flat_line", f"no lead has usable amplitude (largest robust "
                         f"peak-to-peak {largest:.3g} mV)", largest, FLAT_PEAK_TO_PEAK_MV)]


def _constant_lead_issues(x: np.ndarray, ecg: ECG, modality: str) -> list[QualityIssue]:
    constant = [n for n, row in zip(ecg.lead_names, x) if np.ptp(row) == 0]
    if not constant:
        return []
    return [QualityIssue(modality, "flat_line", f"leads {constant} are constant (electrode off "
                         "or zero-filled)", 0.0, FLAT_PEAK_TO_PEAK_MV)]


def _bandpass(x: np.ndarray, fs: float, band: tuple[float, float]) -> np.ndarray:
    high = min(band[1], 0.45 * fs)  # low-rate recordings (100 Hz) keep what they have
    sos = sps.butter(2, [band[0], high], btype="bandpass", fs=fs, output="sos")
    return sps.sosfiltfilt(sos, x, axis=-1)


def _activity_issues(x: np.ndarray, fs: float, modality: str) -> list[QualityIssue]:
    """Cardiac activity is one QRS shape coming back again and again.

    Each candidate complex (a peak of the multi-lead QRS-band energy) must have a near-identical
    twin elsewhere in the record, and stand out of the quiet baseline. Chosen over the
    autocorrelation of the energy envelope because repetition of one morphology does not need a
    regular rate: the autocorrelation peak smears out in atrial fibrillation.
    """
    envelope, peaks = _qrs_candidates(x, fs)
    half = int(COMPLEX_HALF_WIDTH_S * fs)
    peaks = peaks[(peaks >= half) & (peaks + half <= x.shape[1])]
    needed = max(2, int(x.shape[1] / fs / MAX_RR_S) - 1)
    if peaks.size < needed:
        return [QualityIssue(modality, "no_cardiac_activity",
                             f"{peaks.size} QRS-like complexes in {x.shape[1] / fs:.1f} s; at "
                             f"least {needed} expected at {60 / MAX_RR_S:g} bpm or faster",
                             float(peaks.size), float(needed))]
    twins = _twin_correlations(_bandpass(x, fs, MORPHOLOGY_BAND_HZ), peaks, half)
    fraction = float(np.mean(twins >= TWIN_CORRELATION))
    if fraction < MIN_TWIN_FRACTION:
        return [QualityIssue(modality, "noise", f"no repeating QRS complex: {fraction:.0%} of "
                             f"{peaks.size} candidate complexes have a twin (r >= "
                             f"{TWIN_CORRELATION:g})", fraction, MIN_TWIN_FRACTION)]
    prominence = float(np.median(envelope[peaks]) / max(np.percentile(envelope, 10), 1e-12))
    if prominence < MIN_QRS_TO_BASELINE:
        return [QualityIssue(modality, "noise", f"no QRS stands out of the baseline (QRS-band "
                             f"energy {prominence:.2f}x the quietest tenth of the record)",
                             prominence, MIN_QRS_TO_BASELINE)]
    repeating = peaks[twins >= TWIN_CORRELATION]
    period = float(np.median(np.diff(repeating))) / fs if repeating.size > 1 else float("inf")
    if period > MAX_RR_S:
        return [QualityIssue(modality, "no_cardiac_activity", f"median interval between "
                             f"complexes {period:.2f} s (below {60 / MAX_RR_S:g} bpm)",
                             period, MAX_RR_S)]
    return []


def _qrs_candidates(x: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Pan-Tompkins-style: QRS-band energy summed over leads, integrated over 100 ms."""
    energy = (_bandpass(x, fs, QRS_BAND_HZ) ** 2).sum(axis=0)
    width = max(1, int(0.1 * fs))
    envelope = np.sqrt(np.convolve(energy, np.ones(width) / width, mode="same"))
    # 0.3 of the 99th percentile: the 99th lies inside QRS complexes down to 24 bpm.
    peaks, _ = sps.find_peaks(envelope, height=0.3 * np.percentile(envelope, 99),
                              distance=max(1, int(REFRACTORY_S * fs)))
    return envelope, peaks


def _twin_correlations(x: np.ndarray, peaks: np.ndarray, half: int) -> np.ndarray:
    """For each complex, its highest correlation (all leads at once) with another complex."""
    windows = np.stack([x[:, p - half:p + half] for p in peaks])
    windows -= windows.mean(axis=2, keepdims=True)
    flat = windows.reshape(len(peaks), -1)
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    corr = flat @ flat.T
    np.fill_diagonal(corr, -1.0)
    return corr.max(axis=1)


def _rms(v: np.ndarray) -> float:
    return float(np.sqrt(np.mean(v ** 2)))


def _limb_issues(leads: dict[str, np.ndarray], modality: str) -> list[QualityIssue]:
    """Einthoven/Goldberger residuals relative to the size of I and II.

    Scaling by I and II (not by the tested lead) keeps a small aVL from turning ordinary
    channel noise into a large relative error. Leads the reader derived pass by construction.
    """
    if "I" not in leads or "II" not in leads:
        return []
    i, ii = leads["I"], leads["II"]
    scale = max(np.hypot(_rms(i), _rms(ii)), 1e-12)
    residuals = {name: _rms(leads[name] - (a * i + b * ii)) / scale
                 for name, (a, b) in LIMB_RELATIONS.items() if name in leads}
    bad = {name: round(float(r), 3) for name, r in residuals.items() if r > LIMB_RESIDUAL_LIMIT}
    if not bad:
        return []
    return [QualityIssue(modality, "lead_inconsistency",
                         f"limb leads break Einthoven/Goldberger (residual relative to I and II: "
                         f"{bad}); swapped, shuffled or mislabelled leads", max(bad.values()),
                         LIMB_RESIDUAL_LIMIT)]


_PRECORDIAL_ORDERS = [p for p in itertools.permutations(range(6)) if p[0] < p[-1]]


def _path_length(corr: np.ndarray, order: Sequence[int]) -> float:
    return float(sum(1.0 - corr[a, b] for a, b in itertools.pairwise(order)))


def _precordial_issues(leads: dict[str, np.ndarray], modality: str) -> list[QualityIssue]:
    """V1..V6 should be the order that puts the most alike leads side by side, V6 nearest I."""
    if not all(name in leads for name in PRECORDIAL):
        return []
    corr = np.corrcoef(np.stack([leads[name] for name in PRECORDIAL]))
    excess = _path_length(corr, range(6)) - min(_path_length(corr, p) for p in _PRECORDIAL_ORDERS)
    if excess > PRECORDIAL_PATH_EXCESS_LIMIT:
        return [QualityIssue(modality, "precordial_order", f"V1-V6 are not in spatial order "
                             f"(neighbours less alike than in another order by {excess:.2f})",
                             excess, PRECORDIAL_PATH_EXCESS_LIMIT)]
    if "I" not in leads:
        return []
    reversal = float(np.corrcoef(leads["V1"], leads["I"])[0, 1]
                     - np.corrcoef(leads["V6"], leads["I"])[0, 1])
    if reversal > PRECORDIAL_REVERSAL_LIMIT:
        return [QualityIssue(modality, "precordial_order", f"V1-V6 look reversed (V1 resembles "
                             f"lead I more than V6 does, by r = {reversal:.2f})", reversal,
                             PRECORDIAL_REVERSAL_LIMIT)]
    return []


# --- video and volume ---------------------------------------------------------------------------

def check_video(video: Video, modality: str = "echo") -> list[QualityIssue]:
    """"blank" when no frame has contrast; "static" when no frame pair shows motion.

    Frames are converted to grey one at a time: a long RGB clip as float would not fit memory.
    """
    contrast = max(_robust_range(frame[::2, ::2]) for frame in _grey_frames(video.frames))
    if contrast < BLANK_VIDEO_RANGE:
        return [QualityIssue(modality, "blank", f"no frame has contrast (largest robust range "
                             f"{contrast:.1f} grey levels)", contrast, BLANK_VIDEO_RANGE)]
    if len(video.frames) < 2:
        return [QualityIssue(modality, "static", "a single frame: no motion to see", 0.0,
                             MIN_MOVING_FRACTION)]
    # Busiest pair, not a typical one: exports repeat frames (2 of 29 pairs in the real cine).
    moving = float(max((np.abs(b - a) > MOTION_GREY_LEVELS).mean()
                       for a, b in itertools.pairwise(_grey_frames(video.frames))))
    if moving < MIN_MOVING_FRACTION:
        return [QualityIssue(modality, "static", f"nothing moves: at most {moving:.2%} of pixels "
                             "change between frames (a copied still image?)", moving,
                             MIN_MOVING_FRACTION)]
    return []


def _grey_frames(frames: np.ndarray):
    for frame in frames:
        yield frame.mean(axis=-1, dtype=np.float32) if frame.ndim == 3 else frame.astype(np.float32)


def _robust_range(values: np.ndarray, percentiles: tuple[float, float] = ROBUST_PERCENTILES) -> float:
    lo, hi = np.percentile(values, percentiles)
    return float(hi - lo)


def check_volume(volume: Volume, modality: str | None = None) -> list[QualityIssue]:
    """"non_finite" for NaN/inf voxels; "blank" for a constant image (relative to its scale)."""
    modality = modality or volume.modality
    array = np.asarray(volume.array)
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        return [QualityIssue(modality, "non_finite", f"{int(np.sum(~np.isfinite(array)))} NaN "
                             "or infinite voxels", float("nan"), None)]
    # About 64 samples per axis: enough to see any structure, cheap on a 512^2 x 300 CT.
    sample = array[tuple(slice(None, None, max(1, n // 64)) for n in array.shape)].astype(np.float64)
    spread = _robust_range(sample, (0.1, 99.9))
    relative = spread / max(float(np.abs(sample).max()), 1e-12)
    if relative <= BLANK_VOLUME_RELATIVE_RANGE:
        return [QualityIssue(modality, "blank", f"constant image (robust range {spread:.3g} "
                             f"{volume.units})", relative, BLANK_VOLUME_RELATIVE_RANGE)]
    return []


Record = ECG | Video | Volume


def check_study_inputs(study_or_records: Any) -> list[QualityIssue]:
    """Check every record of a study: a `Study` (its files are read) or {key: record or
    [records]}; each issue's modality is the key ("echo[1]" for the second of a list)."""
    records = study_or_records if isinstance(study_or_records, Mapping) else _read_study(study_or_records)
    issues: list[QualityIssue] = []
    for key, value in records.items():
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for index, record in items:
            issues += _check_record(record, key if index is None else f"{key}[{index}]")
    return issues


def _check_record(record: Record, key: str) -> list[QualityIssue]:
    if isinstance(record, ECG):
        return check_ecg(record, key)
    if isinstance(record, Video):
        return check_video(record, key)
    if isinstance(record, Volume):
        return check_volume(record, key)
    raise TypeError(f"{key}: expected an ECG, Video or Volume record, got {type(record).__name__}")


def _read_study(study: Any) -> dict[str, Record | list[Record]]:
    """A Study's inputs read with the reader each manifest column implies."""
    from mmcardio.datasets.readers import read_for_column  # pydicom, nibabel: only when needed

    records: dict[str, Any] = {key: read_for_column(key, path, study.ecg_lead_map) for key in ("ecg", "cmr", "ct")
                               if (path := getattr(study, key)) is not None}
    if study.echo:
        records["echo"] = [read_for_column("echo", clip.path) for clip in study.echo]
    return records


# --- embeddings ---------------------------------------------------------------------------------

OOD_CONFIG, OOD_VECTORS = "ood.json", "references.safetensors"


def _unit_rows(vectors: np.ndarray, what: str) -> np.ndarray:
    x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if x.ndim != 2 or not np.all(np.isfinite(x)) or np.any(norms == 0):
        raise MMCardioError("expected finite, nonzero vectors [N, D]", None, what)
    return np.ascontiguousarray(x / norms)


@dataclass(eq=False)  # arrays inside: compare scores, not objects
class EmbeddingOOD:
    """Per-key kNN novelty detector over L2-normalised embeddings.

    score = mean cosine distance (1 - cos) to the k nearest training vectors; a vector is out
    when its score exceeds `thresholds[key]` = the `quantile` of the training vectors'
    leave-one-out scores times `margin`. A key without training vectors is always out.
    """

    k: int
    quantile: float
    margin: float
    references: dict[str, np.ndarray] = field(repr=False)
    thresholds: dict[str, float]
    _indexes: dict[str, faiss.Index] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def fit(cls, vectors_by_key: Mapping[str, np.ndarray], k: int = 10, quantile: float = 0.99,
            margin: float = 1.0) -> EmbeddingOOD:
        if not 0.0 < quantile <= 1.0 or k < 1 or margin <= 0:
            raise MMCardioError(f"need k >= 1, 0 < quantile <= 1, margin > 0; got k={k}, "
                                f"quantile={quantile}, margin={margin}")
        references = {key: _unit_rows(v, f"vectors_by_key[{key!r}]") for key, v in vectors_by_key.items()}
        for key, ref in references.items():
            if len(ref) <= k:
                raise MMCardioError(f"{len(ref)} training vectors for {key!r}; leave-one-out with "
                                    f"k={k} needs at least {k + 1}", None, "k")
        detector = cls(k, quantile, margin, references, {})
        for key in references:
            loo = detector._leave_one_out_scores(key)
            detector.thresholds[key] = float(np.quantile(loo, quantile) * margin)
        return detector

    def _index(self, key: str) -> faiss.Index:
        if key not in self._indexes:
            ref = self.references[key]
            self._indexes[key] = faiss.IndexFlatIP(ref.shape[1])
            self._indexes[key].add(ref)
        return self._indexes[key]

    def _leave_one_out_scores(self, key: str) -> np.ndarray:
        ref = self.references[key]
        n, rows = len(ref), np.arange(len(ref))
        sims, ids = self._index(key).search(ref, self.k + 1)
        own = ids == rows[:, None]
        # Drop each vector's own hit; an exact duplicate may outrank it, then drop the last.
        drop = np.where(own.any(axis=1), own.argmax(axis=1), self.k)
        keep = np.ones_like(own)
        keep[rows, drop] = False
        return (1.0 - sims[keep].reshape(n, self.k)).mean(axis=1)

    def _require(self, key: str, vectors: np.ndarray) -> np.ndarray:
        if key not in self.references:
            raise MMCardioError(f"no training embeddings for {key!r} (fitted on "
                                f"{sorted(self.references)}): the head was not trained on it",
                                None, "key")
        x = _unit_rows(vectors, "vector")
        dim = self.references[key].shape[1]
        if x.shape[1] != dim:
            raise MMCardioError(f"{key!r} vectors have {x.shape[1]} dimensions, the detector "
                                f"{dim} (another model's embeddings?)", None, "vector")
        return x

    def scores(self, key: str, vectors: np.ndarray) -> np.ndarray:
        """Scores of vectors [N, D] (or one [D])."""
        x = self._require(key, vectors)
        sims, _ = self._index(key).search(x, self.k)
        return (1.0 - sims).mean(axis=1)

    def score(self, key: str, vector: np.ndarray) -> float:
        return float(self.scores(key, vector)[0])

    def check(self, key: str, vector: np.ndarray) -> QualityIssue | None:
        """The reason `vector` is out, or None when it is in distribution."""
        if key not in self.references:
            return QualityIssue(key, "untrained_key", f"no training embeddings for {key!r} "
                                f"(fitted on {sorted(self.references)}): the head was not "
                                "trained on this modality")
        value, limit = self.score(key, vector), self.thresholds[key]
        if value <= limit:
            return None
        return QualityIssue(key, "out_of_distribution", f"embedding {value:.3f} from its {self.k} "
                            f"nearest training neighbours, beyond the {self.quantile:g} quantile "
                            f"x {self.margin:g} of training ({limit:.3f})", value, limit)

    def is_out(self, key: str, vector: np.ndarray) -> bool:
        return self.check(key, vector) is not None

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "quantile": self.quantile, "margin": self.margin,
                "thresholds": dict(self.thresholds),
                "references": {key: ref.copy() for key, ref in self.references.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbeddingOOD:
        references = {key: np.ascontiguousarray(v, dtype=np.float32)
                      for key, v in data["references"].items()}
        if set(references) != set(data["thresholds"]):
            raise MMCardioError(f"thresholds for {sorted(data['thresholds'])} but reference "
                                f"vectors for {sorted(references)}", None, "thresholds")
        return cls(int(data["k"]), float(data["quantile"]), float(data["margin"]), references,
                   {key: float(t) for key, t in data["thresholds"].items()})

    def save(self, folder: str | Path) -> Path:
        """Write `ood.json` (k, quantile, margin, thresholds) and `references.safetensors`."""
        data = self.to_dict()
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            save_file(data.pop("references"), str(tmp / OOD_VECTORS))
            (tmp / OOD_CONFIG).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> EmbeddingOOD:
        folder = Path(folder)
        missing = [n for n in (OOD_CONFIG, OOD_VECTORS) if not (folder / n).is_file()]
        if missing:
            raise MMCardioError(f"not an EmbeddingOOD folder (missing {missing})", folder)
        try:
            data = json.loads((folder / OOD_CONFIG).read_text(encoding="utf-8"))
            return cls.from_dict({**data, "references": load_file(str(folder / OOD_VECTORS))})
        except (KeyError, TypeError, ValueError) as err:
            raise MMCardioError(f"unreadable detector ({err!r})", folder) from None
