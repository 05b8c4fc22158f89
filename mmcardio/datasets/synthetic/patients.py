"""Phantom patients: latent conditions -> correlated parameters -> studies -> a split cohort.

Each patient carries chronic latent conditions (hypertension, dilated cardiomyopathy / heart
failure, coronary artery disease with a possible infarct territory, AF tendency, conduction
disease) drawn from age and sex. Each study of the patient turns them into the parameters of
the ECG and image phantoms, and those into findings the way they go together in patients:

- hypertension -> thick LV walls and ECG voltage LVH (LVH more likely the thicker the wall);
- cardiomyopathy -> reduced EF, LV dilation, and more often LBBB, AF and sinus tachycardia;
- infarct -> akinetic anterior/inferior wall and a lower EF; acute cases show ST elevation in
  the territory's leads, old ones pathological Q waves;
- age -> coronary calcium, AF and first-degree AV block; rhythm classes are exclusive.

The cohort is split by patient, stratified so that every finding's positives spread over the
train, val and test splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy.special import expit

from mmcardio.datasets.synthetic.anatomy import HeartParams
from mmcardio.datasets.synthetic.ecg import ECGParams
from mmcardio.datasets.synthetic.findings import (
    LABELS,
    LVEDV_UPPER_NORMAL_ML,
    REDUCED_EF_PCT,
    SEVERE_AGATSTON,
    THICK_WALL_MM,
    PatientTruth,
    nominal_measurements,
)
from mmcardio.study import SPLITS

#: Share of studies with each modality: an imaging cohort's (most have ECG and echo; CMR in a
#: research cohort such as UK Biobank's imaging visit). CMR at 0.6 gives an 800-study demo test
#: split about 20 reduced-EF CMR studies, enough for its AUROC to mean something.
MODALITY_PROBABILITY = MappingProxyType({"ecg": 0.9, "echo": 0.8, "cmr": 0.6, "ct": 0.4})
A2C_PROBABILITY = 0.85
CHINESE_REPORT_PROBABILITY = 0.3
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
SECOND_STUDY_PROBABILITY = 0.1  # ~1.1 studies per patient


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
