"""Phantom reports in English or Chinese, written from a study's truth as a clinician would.

One section per modality present, in random order, each with a random header and its
sentences shuffled; every finding and every normal result has several phrasings with the
numbers and units of that modality ("LVEF 35%", "左室射血分数35%", "Agatston score 512");
negatives are sometimes stated ("no ST elevation"); an impression line lists the positive
findings by one of their names. Absent findings are never stated: phrases of one finding never
occur inside the phrases used for its absence (the tests check this on many studies).

Template tables are data, kept here rather than in a file, because tests and evaluation import
`FINDING_SENTENCES` / `FINDING_NAMES` / `GRADES` to check and build queries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np

from mmcardio.datasets.synthetic.findings import (
    LVEDV_UPPER_NORMAL_ML,
    REDUCED_EF_PCT,
    SEVERE_AGATSTON,
    THICK_WALL_MM,
    PatientTruth,
    mildly_reduced_ef,
    report_round,
)
from mmcardio.study import LANGS

Table = Mapping[str, tuple[str, ...]]


def _t(en: tuple[str, ...], zh: tuple[str, ...]) -> Table:
    return MappingProxyType({"en": en, "zh": zh})


#: Sentences that state a finding as present. Placeholders are numbers, except {grade}/{cgrade}.
FINDING_SENTENCES: Mapping[str, Table] = MappingProxyType(
    {
        "normal_ecg": _t(
            ("Normal ECG", "Normal electrocardiogram", "ECG within normal limits"),
            ("正常心电图", "心电图正常", "心电图大致正常"),
        ),
        "sinus_bradycardia": _t(
            (
                "sinus bradycardia, rate {hr} bpm",
                "sinus bradycardia at {hr} bpm",
                "rhythm: sinus bradycardia ({hr}/min)",
            ),
            ("窦性心动过缓，心率{hr}次/分", "窦缓，心率{hr}次/分", "节律：窦性心动过缓，{hr}次/分"),
        ),
        "sinus_tachycardia": _t(
            (
                "sinus tachycardia, rate {hr} bpm",
                "sinus tachycardia at {hr} bpm",
                "rhythm: sinus tachycardia ({hr}/min)",
            ),
            ("窦性心动过速，心率{hr}次/分", "窦速，心率{hr}次/分", "节律：窦性心动过速，{hr}次/分"),
        ),
        "afib": _t(
            (
                "atrial fibrillation with a ventricular rate of {hr} bpm",
                "AF, ventricular rate {hr}/min",
                "rhythm: atrial fibrillation, rate {hr} bpm",
                "irregularly irregular rhythm without P waves (atrial fibrillation), {hr} bpm",
            ),
            (
                "心房颤动，心室率{hr}次/分",
                "房颤，平均心室率{hr}次/分",
                "节律：心房颤动，心室率{hr}次/分",
                "P波消失，代之以f波，RR间期绝对不齐，心房颤动，心室率{hr}次/分",
            ),
        ),
        "lbbb": _t(
            (
                "left bundle branch block, QRS {qrs} ms",
                "complete LBBB (QRS duration {qrs} ms)",
                "broad QRS ({qrs} ms) with left bundle branch block morphology",
            ),
            (
                "完全性左束支传导阻滞，QRS时限{qrs} ms",
                "左束支阻滞（QRS {qrs} ms）",
                "QRS波增宽（{qrs} ms），呈左束支传导阻滞图形",
            ),
        ),
        "lvh": _t(
            (
                "LVH by voltage criteria (Sokolow-Lyon {sok} mV)",
                "left ventricular hypertrophy by voltage, SV1+RV5 {sok} mV",
                "increased QRS voltage (Sokolow-Lyon index {sok} mV) meeting ECG criteria for LVH",
            ),
            (
                "左室高电压（Sokolow-Lyon指数{sok} mV）",
                "心电图左室肥厚，SV1+RV5={sok} mV",
                "QRS电压增高（{sok} mV），符合左心室肥厚电压标准",
            ),
        ),
        "stemi_anterior": _t(
            (
                "ST elevation in V1-V4 (up to {st} mm in V2), consistent with acute anterior STEMI",
                "acute anterior ST-elevation myocardial infarction",
                "anterior ST-segment elevation in V1-V4 ({st} mm): anterior STEMI",
            ),
            (
                "V1-V4导联ST段抬高（V2达{st} mm），符合急性前壁STEMI",
                "急性前壁ST段抬高型心肌梗死",
                "胸前导联V1-V4 ST段抬高{st} mm，前壁STEMI",
            ),
        ),
        "stemi_inferior": _t(
            (
                (
                    "ST elevation in II, III and aVF (up to {st} mm) with reciprocal depression in aVL: "
                    "acute inferior STEMI"
                ),
                "acute inferior ST-elevation myocardial infarction",
                "inferior ST-segment elevation (II, III, aVF; {st} mm): inferior STEMI",
            ),
            (
                "II、III、aVF导联ST段抬高（达{st} mm），aVL导联ST段压低，急性下壁STEMI",
                "急性下壁ST段抬高型心肌梗死",
                "下壁导联（II、III、aVF）ST段抬高{st} mm，下壁STEMI",
            ),
        ),
        "av_block_1": _t(
            (
                "first-degree AV block (PR {pr} ms)",
                "PR interval prolonged to {pr} ms: first-degree atrioventricular block",
                "1st degree AV block, PR {pr} ms",
            ),
            (
                "一度房室传导阻滞（PR间期{pr} ms）",
                "PR间期延长至{pr} ms，一度房室阻滞",
                "I度房室阻滞，PR {pr} ms",
            ),
        ),
        "reduced_ef": _t(
            (
                "{grade} LV systolic function, LVEF {ef}%",
                "LVEF {ef}%: {grade} left ventricular systolic function",
                "left ventricular ejection fraction {ef}% ({grade} systolic function)",
                "LVEF {grade} at {ef}%",
            ),
            (
                "左室收缩功能{grade}，左室射血分数{ef}%",
                "LVEF {ef}%，左室收缩功能{grade}",
                "左室射血分数{ef}%（收缩功能{grade}）",
            ),
        ),
        "lv_dilation": _t(
            (
                "dilated left ventricle, LVEDV {edv} mL",
                "LV dilation (end-diastolic volume {edv} mL)",
                "enlarged LV cavity with LVEDV {edv} mL",
            ),
            (
                "左心室扩大，左室舒张末期容积{edv} mL",
                "左室腔增大（LVEDV {edv} mL）",
                "左室扩张，舒张末期容积{edv} mL",
            ),
        ),
        "thick_walls": _t(
            (
                "concentric LV hypertrophy, wall thickness {wt} mm",
                "increased LV wall thickness ({wt} mm)",
                "thickened LV walls (septum {wt} mm)",
            ),
            (
                "左心室向心性肥厚，室壁厚度{wt} mm",
                "左室壁增厚（{wt} mm）",
                "室间隔及左室壁增厚，厚度{wt} mm",
            ),
        ),
        "coronary_calcium": _t(
            (
                "Agatston score {ag}: {cgrade} coronary artery calcification",
                "coronary calcium present, Agatston score {ag}",
                "calcified coronary plaque, total Agatston score {ag}",
            ),
            (
                "Agatston积分{ag}，{cgrade}冠状动脉钙化",
                "冠脉钙化，Agatston积分{ag}",
                "冠脉钙化斑块，钙化总积分{ag}",
            ),
        ),
        "severe_calcium": _t(
            (
                "Agatston score {ag}: severe coronary calcification",
                "extensive coronary calcium (Agatston score {ag})",
                "heavy coronary artery calcification, Agatston score {ag}",
            ),
            (
                "Agatston积分{ag}，重度冠状动脉钙化",
                "冠脉广泛钙化（钙化积分{ag}）",
                "严重冠脉钙化，Agatston积分{ag}",
            ),
        ),
    }
)

#: Short names of each finding, used in the impression line.
FINDING_NAMES: Mapping[str, Table] = MappingProxyType(
    {
        "normal_ecg": _t(
            ("normal ECG", "ECG within normal limits", "normal electrocardiogram"),
            ("正常心电图", "心电图正常", "心电图大致正常"),
        ),
        "sinus_bradycardia": _t(
            ("sinus bradycardia", "bradycardia", "slow sinus rhythm"),
            ("窦性心动过缓", "窦缓", "心动过缓"),
        ),
        "sinus_tachycardia": _t(
            ("sinus tachycardia", "tachycardia", "fast sinus rhythm"),
            ("窦性心动过速", "窦速", "心动过速"),
        ),
        "afib": _t(("atrial fibrillation", "AF", "AFib"), ("心房颤动", "房颤", "心房纤颤")),
        "lbbb": _t(
            ("LBBB", "left bundle branch block", "complete left bundle branch block"),
            ("左束支传导阻滞", "左束支阻滞", "完全性左束支传导阻滞"),
        ),
        "lvh": _t(
            ("LVH by voltage criteria", "ECG-LVH", "left ventricular hypertrophy by voltage"),
            ("左室高电压", "心电图左室肥厚", "左心室肥厚电压标准"),
        ),
        "stemi_anterior": _t(
            ("anterior STEMI", "acute anterior myocardial infarction", "anterior ST-elevation MI"),
            ("急性前壁心肌梗死", "前壁STEMI", "急性前壁ST段抬高型心梗"),
        ),
        "stemi_inferior": _t(
            ("inferior STEMI", "acute inferior myocardial infarction", "inferior ST-elevation MI"),
            ("急性下壁心肌梗死", "下壁STEMI", "急性下壁ST段抬高型心梗"),
        ),
        "av_block_1": _t(
            ("first-degree AV block", "1st degree AV block", "first-degree atrioventricular block"),
            ("一度房室传导阻滞", "I度房室阻滞", "一度房室阻滞"),
        ),
        "reduced_ef": _t(
            (
                "LV systolic dysfunction",
                "heart failure with reduced ejection fraction",
                "impaired LV systolic function",
            ),
            ("左室收缩功能不全", "射血分数降低的心力衰竭", "左心收缩功能受损"),
        ),
        "lv_dilation": _t(
            ("LV dilation", "dilated left ventricle", "left ventricular enlargement"),
            ("左室扩大", "左心室扩张", "左室腔增大"),
        ),
        "thick_walls": _t(
            ("concentric LV hypertrophy", "increased LV wall thickness", "thickened LV walls"),
            ("左心室向心性肥厚", "左室壁增厚", "室壁肥厚"),
        ),
        "coronary_calcium": _t(
            ("coronary artery calcification", "coronary calcium", "calcified coronary plaque"),
            ("冠状动脉钙化", "冠脉钙化", "冠脉钙化斑块"),
        ),
        "severe_calcium": _t(
            (
                "severe coronary calcification",
                "extensive coronary calcium",
                "heavy coronary artery calcification",
            ),
            ("重度冠状动脉钙化", "冠脉广泛钙化", "严重冠脉钙化"),
        ),
    }
)

#: Words that fill {grade} (reduced EF: severe < 30%, else moderate) and {cgrade} (calcium).
GRADES: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "severe": _t(
            ("severely reduced", "markedly decreased", "severely impaired"),
            ("重度减低", "明显减低", "显著下降"),
        ),
        "moderate": _t(
            ("moderately reduced", "moderately impaired", "moderately decreased"),
            ("中度减低", "中度下降", "中度受损"),
        ),
        "minimal": _t(("minimal",), ("极轻度",)),
        "mild": _t(("mild",), ("轻度",)),
        "moderate_calcium": _t(("moderate",), ("中度",)),
    }
)

#: Normal results, negations and descriptions that are not labels.
STATEMENTS: Mapping[str, Table] = MappingProxyType(
    {
        "sinus_rhythm": _t(
            (
                "normal sinus rhythm, rate {hr} bpm",
                "sinus rhythm, rate {hr} bpm",
                "rhythm: sinus, {hr} bpm",
            ),
            ("窦性心律，心率{hr}次/分", "正常窦性心律，{hr}次/分", "节律：窦性，心率{hr}次/分"),
        ),
        "pr_normal": _t(
            ("PR {pr} ms", "PR interval {pr} ms", "normal PR interval ({pr} ms)"),
            ("PR间期{pr} ms", "PR间期正常（{pr} ms）", "PR {pr} ms"),
        ),
        "qrs_normal": _t(
            ("QRS {qrs} ms", "narrow QRS ({qrs} ms)", "QRS duration {qrs} ms"),
            ("QRS时限{qrs} ms", "QRS波群不宽（{qrs} ms）", "QRS {qrs} ms"),
        ),
        "strain": _t(
            (
                "secondary ST-T changes in the lateral leads (strain pattern)",
                "lateral repolarisation abnormality (strain)",
            ),
            ("侧壁导联继发性ST-T改变（劳损）", "侧壁导联ST段压低伴T波倒置（劳损型）"),
        ),
        "no_st_elevation": _t(
            ("no ST elevation", "no acute ST-segment changes", "ST segments isoelectric"),
            ("未见ST段抬高", "无急性ST段改变", "ST段无明显偏移"),
        ),
        "voltage_normal": _t(
            ("QRS voltage within normal limits", "normal QRS voltage"),
            ("QRS电压正常", "QRS波群电压在正常范围"),
        ),
        "q_anterior": _t(
            (
                "pathological Q waves in V1-V3 (old anterior infarction)",
                "QS complexes in V1-V3, old anterior infarct",
            ),
            ("V1-V3导联病理性Q波（陈旧性前壁心肌梗死）", "V1-V3呈QS型，陈旧性前壁梗死"),
        ),
        "q_inferior": _t(
            (
                "pathological Q waves in II, III and aVF (old inferior infarction)",
                "inferior Q waves (II, III, aVF), old inferior infarct",
            ),
            ("II、III、aVF导联病理性Q波（陈旧性下壁心肌梗死）", "下壁导联Q波，陈旧性下壁梗死"),
        ),
        "ef_normal": _t(
            (
                "normal LV systolic function, LVEF {ef}%",
                "LVEF {ef}%, preserved systolic function",
                "left ventricular ejection fraction {ef}% (normal)",
            ),
            (
                "左室收缩功能正常，左室射血分数{ef}%",
                "LVEF {ef}%，收缩功能正常",
                "左室射血分数{ef}%（正常范围）",
            ),
        ),
        "ef_mild": _t(
            (
                "mildly reduced LV systolic function, LVEF {ef}%",
                "LVEF {ef}% (mildly reduced)",
                "borderline-low LVEF of {ef}%",
            ),
            (
                "左室收缩功能轻度减低，左室射血分数{ef}%",
                "LVEF {ef}%（轻度减低）",
                "左室射血分数{ef}%，收缩功能轻度减低",
            ),
        ),
        "size_normal": _t(
            (
                "normal LV size, LVEDV {edv} mL",
                "LVEDV {edv} mL (normal)",
                "LV not dilated, LVEDV {edv} mL",
            ),
            (
                "左室大小正常，LVEDV {edv} mL",
                "左室舒张末期容积{edv} mL，左室不大",
                "左心室内径正常，舒张末期容积{edv} mL",
            ),
        ),
        "esv": _t(
            ("LVESV {esv} mL", "end-systolic volume {esv} mL"),
            ("左室收缩末期容积{esv} mL", "LVESV {esv} mL"),
        ),
        "walls_normal": _t(
            (
                "normal wall thickness ({wt} mm)",
                "LV wall thickness {wt} mm",
                "no LV hypertrophy (wall {wt} mm)",
            ),
            ("室壁厚度正常（{wt} mm）", "左室壁厚度{wt} mm", "左室壁不厚（{wt} mm）"),
        ),
        "akinetic_anterior": _t(
            (
                "akinesis of the anterior wall and apex",
                "anterior wall akinetic",
                "regional wall motion abnormality: akinetic anterior wall",
            ),
            ("左室前壁及心尖部运动消失", "前壁节段性室壁运动消失", "前壁无运动"),
        ),
        "akinetic_inferior": _t(
            (
                "akinesis of the inferior wall",
                "inferior wall akinetic",
                "regional wall motion abnormality: akinetic inferior wall",
            ),
            ("左室下壁运动消失", "下壁节段性室壁运动消失", "下壁无运动"),
        ),
        "motion_normal": _t(
            ("no regional wall motion abnormality", "normal regional wall motion"),
            ("未见节段性室壁运动异常", "室壁运动协调"),
        ),
        "lge_anterior": _t(
            ("late gadolinium enhancement in the anterior wall (infarct scar)",),
            ("前壁延迟强化（心肌梗死瘢痕）",),
        ),
        "lge_inferior": _t(
            ("late gadolinium enhancement in the inferior wall (infarct scar)",),
            ("下壁延迟强化（心肌梗死瘢痕）",),
        ),
        "la_volume": _t(
            ("LA volume {la} mL", "left atrial volume {la} mL"),
            ("左房容积{la} mL", "左心房容积{la} mL"),
        ),
        "lv_mass": _t(
            ("LV mass {mass} g", "LV myocardial mass {mass} g"),
            ("左室心肌质量{mass} g", "左室质量{mass} g"),
        ),
        "rvedv": _t(
            ("RVEDV {rv} mL", "RV end-diastolic volume {rv} mL"),
            ("右室舒张末期容积{rv} mL", "RVEDV {rv} mL"),
        ),
        "calcium_zero": _t(
            (
                "Agatston score 0",
                "calcium score 0, no calcified plaque detected",
                "zero calcium score (Agatston 0)",
            ),
            ("Agatston积分0", "钙化积分为0分，未见钙化斑块", "钙化积分0（Agatston法）"),
        ),
        "impression_normal": _t(
            ("no significant abnormality", "unremarkable study", "normal study"),
            ("未见明显异常", "检查未见异常", "各项检查大致正常"),
        ),
    }
)

HEADERS: Mapping[str, Table] = MappingProxyType(
    {
        "ecg": _t(
            ("ECG:", "12-lead ECG:", "Electrocardiogram:"),
            ("心电图：", "十二导联心电图：", "常规心电图："),
        ),
        "echo": _t(
            ("Echo:", "TTE:", "Transthoracic echocardiography:"),
            ("超声心动图：", "经胸超声心动图：", "心脏彩超："),
        ),
        "cmr": _t(
            ("CMR:", "Cardiac MRI:", "Cardiac magnetic resonance:"),
            ("心脏磁共振：", "心脏MRI：", "CMR："),
        ),
        "ct": _t(
            ("CT:", "Calcium-score CT:", "Cardiac CT:"),
            ("心脏CT：", "冠状动脉CT钙化积分：", "CT钙化积分："),
        ),
    }
)
IMPRESSION = _t(("Impression:", "Conclusion:", "Summary:"), ("结论：", "诊断意见：", "印象："))
ECG_FINDING_ORDER = (
    "afib",
    "sinus_bradycardia",
    "sinus_tachycardia",
    "lbbb",
    "lvh",
    "stemi_anterior",
    "stemi_inferior",
    "av_block_1",
)
NEGATION_PROBABILITY = 0.4


class _Writer:
    """Picks phrasings for one report: a language and a random generator."""

    def __init__(self, lang: str, rng: np.random.Generator):
        self.lang, self.rng = lang, rng

    def pick(self, options: tuple[str, ...]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def say(self, table: Table, **values: object) -> str:
        fills = {
            k: self.pick(GRADES[v][self.lang]) if k in ("grade", "cgrade") else v
            for k, v in values.items()
        }
        return self.pick(table[self.lang]).format(**fills)

    def maybe(self, probability: float) -> bool:
        return bool(self.rng.random() < probability)


def _numbers(measurements: dict) -> dict[str, object]:
    """Report-rounded numbers keyed by template placeholder."""
    names = {
        "heart_rate": "hr",
        "pr_interval": "pr",
        "qrs_duration": "qrs",
        "sokolow_lyon": "sok",
        "lvef": "ef",
        "lvedv": "edv",
        "lvesv": "esv",
        "wall_thickness": "wt",
        "lv_mass": "mass",
        "rvedv": "rv",
        "la_volume": "la",
        "agatston": "ag",
    }
    out: dict[str, object] = {
        names[k]: _fmt(report_round(k, m.value)) for k, m in measurements.items() if k in names
    }
    if "st_elevation" in measurements:  # spoken in mm of ECG paper (1 mm = 0.1 mV)
        out["st"] = _fmt(round(measurements["st_elevation"].value * 10))
    return out


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _ecg_sentences(truth: PatientTruth, w: _Writer) -> list[str]:
    f, n, e = truth.findings, _numbers(truth.measurements["ecg"]), truth.ecg
    rhythm = next((k for k in ("afib", "sinus_bradycardia", "sinus_tachycardia") if f[k]), None)
    out = [w.say(FINDING_SENTENCES[rhythm] if rhythm else STATEMENTS["sinus_rhythm"], **n)]
    if f["av_block_1"]:
        out.append(w.say(FINDING_SENTENCES["av_block_1"], **n))
    elif "pr" in n and w.maybe(0.5):
        out.append(w.say(STATEMENTS["pr_normal"], **n))
    if f["lbbb"]:
        out.append(w.say(FINDING_SENTENCES["lbbb"], **n))
    elif w.maybe(0.5):
        out.append(w.say(STATEMENTS["qrs_normal"], **n))
    if f["lvh"]:
        out.append(w.say(FINDING_SENTENCES["lvh"], **n))
        if e.strain:
            out.append(w.say(STATEMENTS["strain"]))
    elif w.maybe(NEGATION_PROBABILITY / 2):
        out.append(w.say(STATEMENTS["voltage_normal"]))
    for key in ("stemi_anterior", "stemi_inferior"):
        if f[key]:
            out.append(w.say(FINDING_SENTENCES[key], **n))
    if e.q_waves:
        out.append(w.say(STATEMENTS[f"q_{e.q_waves}"]))
    if not (f["stemi_anterior"] or f["stemi_inferior"] or e.lbbb or e.strain) and w.maybe(
        NEGATION_PROBABILITY
    ):
        out.append(w.say(STATEMENTS["no_st_elevation"]))
    if f["normal_ecg"] and w.maybe(0.7):
        out.append(w.say(FINDING_SENTENCES["normal_ecg"]))
    return out


def _ventricle_sentences(truth: PatientTruth, modality: str, w: _Writer) -> list[str]:
    """LV function, size, walls and wall motion as seen by echo or CMR (its own numbers)."""
    n = _numbers(truth.measurements[modality])
    ef, edv, wt = float(n["ef"]), float(n["edv"]), float(n.get("wt", 0))
    if ef < REDUCED_EF_PCT:
        out = [
            w.say(FINDING_SENTENCES["reduced_ef"], grade="severe" if ef < 30 else "moderate", **n)
        ]
    else:
        out = [w.say(STATEMENTS["ef_mild" if mildly_reduced_ef(ef) else "ef_normal"], **n)]
    dilated = edv > LVEDV_UPPER_NORMAL_ML[truth.sex]
    out.append(
        w.say(FINDING_SENTENCES["lv_dilation"] if dilated else STATEMENTS["size_normal"], **n)
    )
    if "esv" in n and w.maybe(0.5):
        out.append(w.say(STATEMENTS["esv"], **n))
    if "wt" in n and (wt >= THICK_WALL_MM or w.maybe(0.6)):
        out.append(
            w.say(
                FINDING_SENTENCES["thick_walls"]
                if wt >= THICK_WALL_MM
                else STATEMENTS["walls_normal"],
                **n,
            )
        )
    wall = truth.heart.akinetic_wall
    if wall:
        out.append(w.say(STATEMENTS[f"akinetic_{wall}"]))
        if modality == "cmr":
            out.append(w.say(STATEMENTS[f"lge_{wall}"]))
    elif w.maybe(NEGATION_PROBABILITY):
        out.append(w.say(STATEMENTS["motion_normal"]))
    return out


def _echo_sentences(truth: PatientTruth, w: _Writer) -> list[str]:
    out = _ventricle_sentences(truth, "echo", w)
    n = _numbers(truth.measurements["echo"])
    if "la" in n and w.maybe(0.4):
        out.append(w.say(STATEMENTS["la_volume"], **n))
    return out


def _cmr_sentences(truth: PatientTruth, w: _Writer) -> list[str]:
    out = _ventricle_sentences(truth, "cmr", w)
    n = _numbers(truth.measurements["cmr"])
    if "mass" in n:
        out.append(w.say(STATEMENTS["lv_mass"], **n))
    if "rv" in n and w.maybe(0.5):
        out.append(w.say(STATEMENTS["rvedv"], **n))
    return out


def _ct_sentences(truth: PatientTruth, w: _Writer) -> list[str]:
    n = _numbers(truth.measurements["ct"])
    score = float(n["ag"])
    if score <= 0:
        return [w.say(STATEMENTS["calcium_zero"])]
    if score >= SEVERE_AGATSTON:
        return [w.say(FINDING_SENTENCES["severe_calcium"], **n)]
    cgrade = "minimal" if score < 10 else "mild" if score < 100 else "moderate_calcium"
    return [w.say(FINDING_SENTENCES["coronary_calcium"], cgrade=cgrade, **n)]


SECTIONS: Mapping[str, Callable[[PatientTruth, _Writer], list[str]]] = MappingProxyType(
    {"ecg": _ecg_sentences, "echo": _echo_sentences, "cmr": _cmr_sentences, "ct": _ct_sentences}
)


def _section(header: str, sentences: list[str], lang: str) -> str:
    if lang == "zh":
        return header + "；".join(sentences) + "。"
    return header + " " + ". ".join(s[:1].upper() + s[1:] for s in sentences) + "."


def _impression(truth: PatientTruth, w: _Writer) -> str:
    labels = truth.labels()
    positive = [
        k for k in ECG_FINDING_ORDER + ("reduced_ef", "lv_dilation", "thick_walls") if labels.get(k)
    ]
    if labels.get("severe_calcium"):
        positive.append("severe_calcium")
    elif labels.get("coronary_calcium"):
        positive.append("coronary_calcium")
    names = [w.pick(FINDING_NAMES[k][w.lang]) for k in positive]
    if not names:
        names = [w.say(STATEMENTS["impression_normal"])]
    return _section(
        w.pick(IMPRESSION[w.lang]),
        ["，".join(names) if w.lang == "zh" else "; ".join(names)],
        w.lang,
    )


def write_report(truth: PatientTruth, lang: str, rng: np.random.Generator) -> str:
    """The whole report of the study in `lang` (see `write_report_parts`)."""
    return write_report_parts(truth, lang, rng)[0]


def write_report_parts(
    truth: PatientTruth, lang: str, rng: np.random.Generator
) -> tuple[str, dict[str, str]]:
    """The study's report in `lang` ("en" or "zh") and each exam's section by modality.

    Sections follow the modalities present (random order), each with its own numbers; half the
    reports end with an impression naming the positive findings (it belongs to no one exam).
    """
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    w = _Writer(lang, rng)
    sections = {
        m: _section(w.pick(HEADERS[m][lang]), _shuffled(SECTIONS[m](truth, w), rng), lang)
        for m in truth.modalities
    }
    parts = _shuffled(list(sections.values()), rng)
    if w.maybe(0.5):
        parts.append(_impression(truth, w))
    return "\n".join(parts), sections


def _shuffled(items: list[str], rng: np.random.Generator) -> list[str]:
    return [items[i] for i in rng.permutation(len(items))]
