"""Phantom patients: latent conditions -> correlated findings -> phantom parameters -> truth.

Each patient carries chronic latent conditions (hypertension, dilated cardiomyopathy / heart
failure, coronary artery disease with a possible infarct territory, AF tendency, conduction
disease) drawn from age and sex. Each study of the patient turns them into the parameters of
the ECG and image phantoms, and those into findings the way they go together in patients:

- hypertension -> thick LV walls and ECG voltage LVH (LVH more likely the thicker the wall);
- cardiomyopathy -> reduced EF, LV dilation, and more often LBBB, AF and sinus tachycardia;
- infarct -> akinetic anterior/inferior wall and a lower EF; acute cases show ST elevation in
  the territory's leads, old ones pathological Q waves;
- age -> coronary calcium, AF and first-degree AV block; rhythm classes are exclusive.

Labels (`LABELS`) are the only names zero-shot evaluation uses. A study's labels hold only the
findings its modalities can show (`SHOWN_BY`): ECG labels need an ECG, `reduced_ef`,
`lv_dilation` and `thick_walls` need echo or CMR, calcium labels need CT. Image labels are
computed from the clinically reported (rounded) numbers, so a label never contradicts the
number in the report or the manifest; sampled values keep a margin from every threshold.
`reduced_ef` (LVEF < 40%) is left out, as not stated, for a study whose echo or CMR report
calls the LVEF mildly reduced (40-51%): such a report is neither the finding nor its normal
negative, and scoring it either way would grade a model on a label its text contradicts
(CheXpert leaves uncertain mentions out of its metrics the same way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from scipy.special import expit

from mmcardio.datasets.synthetic.ecg import ECGParams
from mmcardio.datasets.synthetic.heart import HeartParams
from mmcardio.study import SPLITS, Measurement

ECG_LABELS = (
    "normal_ecg",
    "sinus_bradycardia",
    "sinus_tachycardia",
    "afib",
    "lbbb",
    "lvh",
    "stemi_anterior",
    "stemi_inferior",
    "av_block_1",
)
IMAGING_LABELS = ("reduced_ef", "lv_dilation", "thick_walls", "coronary_calcium", "severe_calcium")
LABELS = ECG_LABELS + IMAGING_LABELS

#: Which study modalities can show each label (a study gets the label only if it has one).
SHOWN_BY: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        **{name: ("ecg",) for name in ECG_LABELS},
        "reduced_ef": ("echo", "cmr"),
        "lv_dilation": ("echo", "cmr"),
        "thick_walls": ("echo", "cmr"),
        "coronary_calcium": ("ct",),
        "severe_calcium": ("ct",),
    }
)

#: Upper normal LV end-diastolic volume by sex (ASE/EACVI 2015 chamber quantification, 2-D echo).
LVEDV_UPPER_NORMAL_ML = MappingProxyType({"F": 106.0, "M": 150.0})
REDUCED_EF_PCT, THICK_WALL_MM, SEVERE_AGATSTON, LVH_SOKOLOW_MV = 40.0, 13.0, 400.0, 3.5
#: Lower limit of normal LVEF (ASE/EACVI 2015); reports call 40-51% mildly reduced.
NORMAL_EF_PCT = 52.0
BRADY_BPM, TACHY_BPM, LONG_PR_MS = 60.0, 100.0, 200.0

#: Share of studies with each modality: an imaging cohort's (most have ECG and echo; CMR in a
#: research cohort such as UK Biobank's imaging visit). CMR at 0.6 gives an 800-study demo test
#: split about 20 reduced-EF CMR studies, enough for its AUROC to mean something.
MODALITY_PROBABILITY = MappingProxyType({"ecg": 0.9, "echo": 0.8, "cmr": 0.6, "ct": 0.4})
A2C_PROBABILITY = 0.85
CHINESE_REPORT_PROBABILITY = 0.3
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
SECOND_STUDY_PROBABILITY = 0.1  # ~1.1 studies per patient

#: Units of the clinically reported measurements (manifest `measurements`).
UNITS = MappingProxyType(
    {
        "lvef": "%",
        "lvedv": "mL",
        "lvesv": "mL",
        "lv_mass": "g",
        "wall_thickness": "mm",
        "rvedv": "mL",
        "la_volume": "mL",
        "agatston": "AU",
        "calcium_volume": "mm3",
        "heart_rate": "bpm",
        "qrs_duration": "ms",
        "pr_interval": "ms",
        "qt_interval": "ms",
        "sokolow_lyon": "mV",
        "st_elevation": "mV",
    }
)
#: Reported keys and the modalities they come from, most trusted first (CMR is the volume reference).
REPORTED_FROM = MappingProxyType(
    {
        "lvef": ("cmr", "echo"),
        "lvedv": ("cmr", "echo"),
        "lvesv": ("cmr", "echo"),
        "lv_mass": ("cmr",),
        "wall_thickness": ("cmr", "echo"),
        "agatston": ("ct",),
        "heart_rate": ("ecg",),
        "qrs_duration": ("ecg",),
        "pr_interval": ("ecg",),
    }
)
#: Decimals a clinician reports (the report text and the manifest use the same rounding).
REPORT_DECIMALS = MappingProxyType({"sokolow_lyon": 1})


@dataclass
class Patient:
    """Chronic latent state shared by all studies of one patient."""

    patient_id: str
    age: float
    sex: str
    hypertension: bool
    cardiomyopathy: bool
    coronary_disease: bool
    infarct: str | None  # "anterior" | "inferior": territory of a (prior or current) infarct
    af_prone: bool
    lbbb: bool
    slow_conduction: bool  # first-degree AV block when in sinus rhythm
    lvh_voltage: bool  # ECG voltage criteria met (correlates with wall thickness)
    wall_thickness_mm: float
    lvedv_ml: float
    lvef_pct: float
    rvedv_ml: float
    la_volume_ml: float
    agatston: float


@dataclass
class PatientTruth:
    """Everything known about one study: who, what they have, what the phantoms must show.

    findings: all 14 labels for the patient at this study, whether or not a modality shows
    them; `labels()` keeps those the study can show. measurements: per modality ("ecg",
    "echo", "cmr", "ct") the truth with units; nominal values from the parameters until the
    cohort replaces them with what the phantoms measure.
    """

    study_id: str
    patient_id: str
    split: str
    age: float
    sex: str
    conditions: dict[str, bool | str | None]
    ecg: ECGParams
    heart: HeartParams
    modalities: tuple[str, ...]
    echo_views: tuple[str, ...]
    report_lang: str
    measurements: dict[str, dict[str, Measurement]] = field(default_factory=dict)
    findings: dict[str, int] = field(default_factory=dict)

    def labels(self) -> dict[str, int]:
        """Findings that this study's modalities can show and its reports settle."""
        unsettled = {"reduced_ef"} if self.ef_mildly_reduced() else set()
        return {
            name: value
            for name, value in self.findings.items()
            if any(m in self.modalities for m in SHOWN_BY[name]) and name not in unsettled
        }

    def ef_mildly_reduced(self) -> bool:
        """True when an echo or CMR report of this study states an LVEF of 40-51%."""
        return any(
            mildly_reduced_ef(report_round("lvef", values["lvef"].value))
            for modality, values in self.measurements.items()
            if modality in SHOWN_BY["reduced_ef"] and modality in self.modalities and "lvef" in values
        )

    def reported(self) -> dict[str, Measurement]:
        """The clinically reported numbers: one value per key, rounded as a report states it."""
        out = {}
        for key, sources in REPORTED_FROM.items():
            for modality in sources:
                if modality in self.modalities and key in self.measurements.get(modality, {}):
                    m = self.measurements[modality][key]
                    out[key] = Measurement(report_round(key, m.value), m.unit)
                    break
        return out

    def update_findings(self) -> None:
        """(Re)derive all findings from the parameters and the reported numbers."""
        self.findings = derive_findings(self)


def mildly_reduced_ef(lvef_pct: float) -> bool:
    """An LVEF that reports call mildly reduced: below normal, not the reduced-EF finding."""
    return REDUCED_EF_PCT <= lvef_pct < NORMAL_EF_PCT


def report_round(key: str, value: float) -> float:
    """Round as reports do: integers, Sokolow-Lyon to 0.1 mV."""
    decimals = REPORT_DECIMALS.get(key, 0)
    return float(round(value, decimals)) if decimals else float(round(value))


def _away(value: float, threshold: float, margin: float) -> float:
    """Move `value` out of (threshold - margin, threshold + margin), keeping its side."""
    if abs(value - threshold) >= margin:
        return value
    return threshold + margin if value >= threshold else threshold - margin


def sample_patient(patient_id: str, rng: np.random.Generator) -> Patient:
    """Draw age, sex and latent conditions, then the chronic structural values they imply."""
    sex = "M" if rng.random() < 0.55 else "F"
    age = float(np.clip(rng.normal(62, 13), 25, 90))
    old = age >= 70
    hypertension = rng.random() < 0.05 + 0.55 * expit((age - 55) / 8)
    cardiomyopathy = rng.random() < 0.11 + 0.07 * old
    coronary = rng.random() < expit((age - 62) / 7 + 0.6 * (sex == "M") + 0.5 * hypertension - 0.9)
    infarct = (
        ("anterior", "inferior")[int(rng.random() < 0.5)]
        if coronary and rng.random() < 0.8
        else None
    )
    af_prone = (
        rng.random()
        < 0.04 + 0.16 * expit((age - 72) / 5) + 0.22 * cardiomyopathy + 0.06 * hypertension
    )
    lbbb = rng.random() < 0.05 + 0.35 * cardiomyopathy + 0.06 * old
    slow_conduction = rng.random() < 0.08 + 0.14 * old + 0.03 * hypertension
    wall = _wall_thickness(sex, hypertension, cardiomyopathy, rng)
    lvh_voltage = rng.random() < (0.55 if wall >= 12.5 else 0.04) + 0.06 * (sex == "M")
    return Patient(
        patient_id=patient_id,
        age=float(round(age)),
        sex=sex,
        hypertension=bool(hypertension),
        cardiomyopathy=bool(cardiomyopathy),
        coronary_disease=bool(coronary),
        infarct=infarct,
        af_prone=bool(af_prone),
        lbbb=bool(lbbb),
        slow_conduction=bool(slow_conduction),
        lvh_voltage=bool(lvh_voltage),
        wall_thickness_mm=wall,
        lvedv_ml=_lvedv(sex, cardiomyopathy, infarct, lbbb, rng),
        lvef_pct=_lvef(cardiomyopathy, infarct, lbbb, rng),
        rvedv_ml=float(rng.normal(140, 15) if sex == "M" else rng.normal(112, 12))
        * (1.2 if cardiomyopathy else 1.0),
        la_volume_ml=float(
            rng.normal(48, 7) + 12 * hypertension + 22 * af_prone + 18 * cardiomyopathy
        ),
        agatston=_agatston(age, coronary, rng),
    )


def _wall_thickness(
    sex: str, hypertension: bool, cardiomyopathy: bool, rng: np.random.Generator
) -> float:
    wall = rng.normal(9.5, 0.8) if sex == "M" else rng.normal(8.6, 0.7)
    if hypertension and rng.random() < 0.6:
        wall += rng.uniform(3.5, 6.5)
    if cardiomyopathy:
        wall -= 0.8
    return float(_away(np.clip(wall, 6.5, 18.0), THICK_WALL_MM, 0.7))


def _lvedv(
    sex: str, cardiomyopathy: bool, infarct: str | None, lbbb: bool, rng: np.random.Generator
) -> float:
    edv = rng.normal(105, 14) if sex == "M" else rng.normal(78, 10)
    if cardiomyopathy:
        edv *= rng.uniform(1.55, 2.2)
    elif infarct:
        edv *= rng.uniform(1.0, 1.35)
    edv *= 1.05 if lbbb else 1.0
    upper = LVEDV_UPPER_NORMAL_ML[sex]
    return float(_away(np.clip(edv, 50.0, 320.0), upper, 0.06 * upper))


def _lvef(cardiomyopathy: bool, infarct: str | None, lbbb: bool, rng: np.random.Generator) -> float:
    ef = float(np.clip(rng.normal(62, 4), 53, 72))
    if cardiomyopathy:
        ef = min(ef, rng.uniform(18, 37))
    if infarct == "anterior":
        ef -= rng.uniform(16, 30)
    elif infarct == "inferior":
        ef -= rng.uniform(5, 15)
    ef -= 4 if lbbb else 0
    return float(_away(max(ef, 15.0), REDUCED_EF_PCT, 2.5))


def _agatston(age: float, coronary: bool, rng: np.random.Generator) -> float:
    calcified = rng.random() < (0.82 if coronary else 0.4 * expit((age - 70) / 6))
    if not calcified:
        return 0.0
    score = float(np.exp(rng.normal(5.6, 1.1) if coronary else rng.normal(3.2, 1.1)))
    return float(np.clip(_away(score, SEVERE_AGATSTON, 0.1 * SEVERE_AGATSTON), 5.0, 4000.0))


def sample_study(
    patient: Patient, study_id: str, split: str, rng: np.random.Generator, first: bool = True
) -> PatientTruth:
    """One study of `patient`: acute events, rhythm and rate of the day, modalities, language."""
    acute = patient.infarct is not None and rng.random() < (0.7 if first else 0.25)
    ecg = _ecg_params(patient, acute, rng)
    heart = HeartParams(
        heart_rate_bpm=ecg.heart_rate_bpm,
        lv_edv_ml=patient.lvedv_ml,
        lv_ef_pct=patient.lvef_pct,
        wall_thickness_mm=patient.wall_thickness_mm,
        rv_edv_ml=patient.rvedv_ml,
        la_volume_ml=patient.la_volume_ml,
        agatston_target=patient.agatston,
        akinetic_wall=patient.infarct,
    )
    modalities = _modalities(rng)
    views = ("A4C", "A2C") if rng.random() < A2C_PROBABILITY else ("A4C",)
    truth = PatientTruth(
        study_id=study_id,
        patient_id=patient.patient_id,
        split=split,
        age=patient.age + (0 if first else 1),
        sex=patient.sex,
        conditions={
            "hypertension": patient.hypertension,
            "cardiomyopathy": patient.cardiomyopathy,
            "coronary_disease": patient.coronary_disease,
            "infarct": patient.infarct,
            "acute_infarct": bool(acute),
        },
        ecg=ecg,
        heart=heart,
        modalities=modalities,
        echo_views=views if "echo" in modalities else (),
        report_lang="zh" if rng.random() < CHINESE_REPORT_PROBABILITY else "en",
    )
    truth.measurements = nominal_measurements(truth)
    truth.update_findings()
    return truth


def _ecg_params(patient: Patient, acute: bool, rng: np.random.Generator) -> ECGParams:
    afib = patient.af_prone and rng.random() < 0.85
    if afib:
        rate = rng.uniform(70, 130)
    else:
        u = rng.random()
        tachy = 0.1 + 0.15 * patient.cardiomyopathy + 0.1 * acute
        rate = (
            rng.uniform(42, 56)
            if u < 0.13
            else rng.uniform(104, 135)
            if u < 0.13 + tachy
            else rng.uniform(63, 96)
        )
    lvh = patient.lvh_voltage
    return ECGParams(
        heart_rate_bpm=float(rate),
        rhythm="afib" if afib else "sinus",
        pr_ms=float(rng.uniform(225, 320) if patient.slow_conduction else rng.uniform(125, 188)),
        qrs_ms=float(rng.uniform(135, 170) if patient.lbbb else rng.uniform(80, 104) + 8 * lvh),
        qtc_ms=float(rng.uniform(390, 450)),
        lbbb=patient.lbbb,
        lvh=lvh,
        strain=bool(lvh and rng.random() < 0.5),
        stemi=patient.infarct if acute else None,
        q_waves=patient.infarct if patient.infarct and (not acute or rng.random() < 0.3) else None,
        sokolow_mv=float(rng.uniform(3.8, 5.2) if lvh else rng.uniform(1.4, 3.2)),
        st_elevation_mv=float(rng.uniform(0.25, 0.5)),
        frontal_rotation_deg=float(rng.uniform(-15, 15)),
        horizontal_rotation_deg=float(rng.uniform(-10, 10)),
        powerline_hz=50.0 if rng.random() < 0.7 else 60.0,
        emg_mv=float(rng.uniform(0.004, 0.015)),
        wander_mv=float(rng.uniform(0.03, 0.2)),
    )


def _modalities(rng: np.random.Generator) -> tuple[str, ...]:
    while True:  # at least one modality per study
        chosen = tuple(m for m, p in MODALITY_PROBABILITY.items() if rng.random() < p)
        if chosen:
            return chosen


def nominal_measurements(truth: PatientTruth) -> dict[str, dict[str, Measurement]]:
    """Per-modality truth straight from the parameters (what an ideal phantom would measure)."""
    h, e = truth.heart, truth.ecg
    lvesv = h.lv_edv_ml * (1 - h.lv_ef_pct / 100)
    volumes = {
        "lvedv": h.lv_edv_ml,
        "lvesv": lvesv,
        "lvef": h.lv_ef_pct,
        "wall_thickness": h.wall_thickness_mm,
    }
    out = {
        "ecg": {
            "heart_rate": e.heart_rate_bpm,
            "qrs_duration": e.qrs_ms,
            "sokolow_lyon": e.sokolow_mv,
            **({"pr_interval": e.pr_ms} if e.rhythm == "sinus" else {}),
            **({"st_elevation": e.st_elevation_mv} if e.stemi else {}),
        },
        "echo": {**volumes, "la_volume": h.la_volume_ml},
        "cmr": {
            **volumes,
            "lv_mass": _ellipsoid_mass_g(h.lv_edv_ml, h.wall_thickness_mm),
            "rvedv": h.rv_edv_ml,
        },
        "ct": {"agatston": h.agatston_target},
    }
    return {
        m: {k: Measurement(float(v), UNITS[k]) for k, v in values.items()}
        for m, values in out.items()
        if m in truth.modalities
    }


def _ellipsoid_mass_g(edv_ml: float, wall_mm: float) -> float:
    """LV mass of a prolate ellipsoid cavity (long axis = 2 x short) with a uniform wall, 1.05 g/mL."""
    b = (3 * edv_ml * 1000 / (8 * np.pi)) ** (
        1 / 3
    )  # short semi-axis in mm (volume = 4/3 pi b b 2b)
    outer = 4 / 3 * np.pi * (b + wall_mm) ** 2 * (2 * b + wall_mm)
    return float(1.05 * (outer - edv_ml * 1000) / 1000)


def derive_findings(truth: PatientTruth) -> dict[str, int]:
    """All 14 findings from the ECG truth, the reported image numbers and the parameters."""
    ecg = truth.measurements.get("ecg", {})
    e = truth.ecg
    rate = ecg["heart_rate"].value if "heart_rate" in ecg else e.heart_rate_bpm
    pr = ecg["pr_interval"].value if "pr_interval" in ecg else e.pr_ms
    sokolow = ecg["sokolow_lyon"].value if "sokolow_lyon" in ecg else e.sokolow_mv
    sinus = e.rhythm == "sinus"
    rate = report_round("heart_rate", rate)
    f = {
        "sinus_bradycardia": sinus and rate < BRADY_BPM,
        "sinus_tachycardia": sinus and rate > TACHY_BPM,
        "afib": not sinus,
        "lbbb": e.lbbb,
        "lvh": report_round("sokolow_lyon", sokolow) > LVH_SOKOLOW_MV,
        "stemi_anterior": e.stemi == "anterior",
        "stemi_inferior": e.stemi == "inferior",
        "av_block_1": sinus and report_round("pr_interval", pr) > LONG_PR_MS,
    }
    f["normal_ecg"] = not (any(f.values()) or e.q_waves)  # pathological Q waves are abnormal too
    image = _image_values(truth)
    f.update(
        {
            "reduced_ef": image["lvef"] < REDUCED_EF_PCT,
            "lv_dilation": image["lvedv"] > LVEDV_UPPER_NORMAL_ML[truth.sex],
            "thick_walls": image["wall_thickness"] >= THICK_WALL_MM,
            "coronary_calcium": image["agatston"] > 0,
            "severe_calcium": image["agatston"] >= SEVERE_AGATSTON,
        }
    )
    return {name: int(bool(f[name])) for name in LABELS}


def _image_values(truth: PatientTruth) -> dict[str, float]:
    """Reported image numbers, falling back to the parameters for findings no modality shows."""
    reported = truth.reported()
    h = truth.heart
    fallback = {
        "lvef": h.lv_ef_pct,
        "lvedv": h.lv_edv_ml,
        "wall_thickness": h.wall_thickness_mm,
        "agatston": h.agatston_target,
    }
    return {
        k: reported[k].value if k in reported else report_round(k, v) for k, v in fallback.items()
    }


def sample_cohort(n_studies: int, rng: np.random.Generator) -> list[PatientTruth]:
    """`n_studies` studies of ~n/1.1 patients, split by patient (train/val/test ~ 70/10/20),
    stratified so that every finding's positives spread over the three splits."""
    studies: list[PatientTruth] = []
    by_patient: list[list[PatientTruth]] = []
    while len(studies) < n_studies:
        patient = sample_patient(f"P{len(by_patient) + 1:05d}", rng)
        count = min(2 if rng.random() < SECOND_STUDY_PROBABILITY else 1, n_studies - len(studies))
        mine = [
            sample_study(patient, f"S{len(studies) + k + 1:05d}", "", rng, first=k == 0)
            for k in range(count)
        ]
        studies += mine
        by_patient.append(mine)
    for mine, split in zip(by_patient, _patient_splits(by_patient, rng)):
        for study in mine:
            study.split = split
    return studies


def _patient_splits(by_patient: list[list[PatientTruth]], rng: np.random.Generator) -> list[str]:
    """Iterative stratification (Sechidis et al. 2011) of patients: the rarest label's positives
    go first, each to the split that lacks most of that label, then the rest by study count.
    No library does multi-label stratification of groups (scikit-learn stratifies one label)."""
    positives = np.array(
        [[sum(t.labels().get(name, 0) for t in mine) for name in LABELS] for mine in by_patient]
    )
    sizes = np.array([len(mine) for mine in by_patient], dtype=float)
    fractions = np.asarray(SPLIT_FRACTIONS)[:, None]
    need_label = fractions * positives.sum(0)[None, :]
    need_studies = fractions[:, 0] * sizes.sum()
    split = np.full(len(by_patient), -1)
    order = rng.permutation(len(by_patient))
    while (split < 0).any():
        left = order[split[order] < 0]
        remaining = positives[left].sum(0)
        labelled = np.flatnonzero(remaining > 0)
        rarest = labelled[np.argmin(remaining[labelled])] if labelled.size else None
        chosen = left if rarest is None else left[positives[left, rarest] > 0]
        for i in chosen:  # ties on the label go to the split that lacks most studies
            gap = need_studies if rarest is None else need_label[:, rarest] + 1e-6 * need_studies
            k = int(np.argmax(gap))
            split[i] = k
            need_label[k] -= positives[i]
            need_studies[k] -= sizes[i]
    return [SPLITS[k] for k in split]
