"""Findings of phantom studies: the labels, their clinical thresholds, and a study's truth.

A study's findings follow from its parameters (drawn in `patients`) and the numbers its
reports state. Labels (`LABELS`) are the only names zero-shot evaluation uses. A study's labels
hold only the findings its modalities can show (`SHOWN_BY`): ECG labels need an ECG,
`reduced_ef`, `lv_dilation` and `thick_walls` need echo or CMR, calcium labels need CT. Image
labels are computed from the clinically reported (rounded) numbers, so a label never
contradicts the number in the report or the manifest; sampled values keep a margin from every
threshold. `reduced_ef` (LVEF < 40%) is left out, as not stated, for a study whose echo or CMR
report calls the LVEF mildly reduced (40-51%): such a report is neither the finding nor its
normal negative, and scoring it either way would grade a model on a label its text
contradicts (CheXpert leaves uncertain mentions out of its metrics the same way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from mmcardio.datasets.synthetic.anatomy import HeartParams
from mmcardio.datasets.synthetic.ecg import ECGParams
from mmcardio.records import Measurement

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
            if modality in SHOWN_BY["reduced_ef"]
            and modality in self.modalities
            and "lvef" in values
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
