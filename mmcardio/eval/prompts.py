"""Prompt registry for zero-shot evaluation, in English and Chinese.

Per finding: the modalities that can show it, and several positive and negative phrasings
per language (the classifier averages their embeddings). Per regression target: value
templates filled over a grid of values (EchoCLIP-style regression by prompt similarity).
Users evaluating other findings add a `FindingPrompts` to a copy of `FINDINGS`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmcardio.errors import MMCardioError

LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class FindingPrompts:
    """Positive and negative phrasings of one finding, per language."""

    name: str
    modalities: tuple[str, ...]  # study modalities that can show the finding
    positive: dict[str, tuple[str, ...]]
    negative: dict[str, tuple[str, ...]]

    def classes(self, lang: str) -> list[list[str]]:
        """[positive prompts, negative prompts] in `lang` (class 0 is the finding)."""
        if lang not in self.positive:
            raise MMCardioError(f"no {lang!r} prompts for finding {self.name!r}; have "
                                f"{sorted(self.positive)}", field="lang")
        return [list(self.positive[lang]), list(self.negative[lang])]


@dataclass(frozen=True)
class ValuePrompts:
    """Templates with a `{v}` slot for a measurement, filled over `grid`."""

    measurement: str  # key in Study.measurements
    unit: str
    modalities: tuple[str, ...]
    grid: tuple[float, ...]
    templates: dict[str, tuple[str, ...]]

    def classes(self, lang: str) -> list[list[str]]:
        """One class per grid value: every template filled with that value."""
        return [[t.format(v=_number(v)) for t in self.templates[lang]] for v in self.grid]


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


ECG, ECHO, CMR, CT = "ecg", "echo", "cmr", "ct"


def _finding(name: str, modalities: tuple[str, ...], en_pos: tuple[str, ...],
             en_neg: tuple[str, ...], zh_pos: tuple[str, ...], zh_neg: tuple[str, ...]) -> FindingPrompts:
    return FindingPrompts(name, modalities, {"en": en_pos, "zh": zh_pos}, {"en": en_neg, "zh": zh_neg})


FINDINGS: dict[str, FindingPrompts] = {f.name: f for f in (
    _finding("normal_ecg", (ECG,),
             ("normal ECG", "sinus rhythm, normal electrocardiogram", "the ECG is within normal limits"),
             ("abnormal ECG", "the electrocardiogram is abnormal", "ECG with abnormal findings"),
             ("正常心电图", "窦性心律，心电图正常", "心电图在正常范围内"),
             ("异常心电图", "心电图异常", "心电图有异常表现")),
    _finding("sinus_bradycardia", (ECG,),
             ("sinus bradycardia", "the rhythm is sinus bradycardia", "slow sinus rhythm"),
             ("no sinus bradycardia", "normal heart rate", "sinus rhythm at a normal rate"),
             ("窦性心动过缓", "心律为窦性心动过缓", "窦性心律，心率缓慢"),
             ("无窦性心动过缓", "心率正常", "窦性心律，心率正常")),
    _finding("sinus_tachycardia", (ECG,),
             ("sinus tachycardia", "the rhythm is sinus tachycardia", "fast sinus rhythm"),
             ("no sinus tachycardia", "normal heart rate", "sinus rhythm at a normal rate"),
             ("窦性心动过速", "心律为窦性心动过速", "窦性心律，心率增快"),
             ("无窦性心动过速", "心率正常", "窦性心律，心率正常")),
    _finding("afib", (ECG,),
             ("atrial fibrillation", "the rhythm is atrial fibrillation", "irregularly irregular rhythm without P waves"),
             ("sinus rhythm, no atrial fibrillation", "no atrial fibrillation", "regular sinus rhythm"),
             ("心房颤动", "心律为心房颤动", "房颤，心律绝对不齐"),
             ("窦性心律，无心房颤动", "无房颤", "规则的窦性心律")),
    _finding("lbbb", (ECG,),
             ("left bundle branch block", "complete left bundle branch block", "wide QRS with left bundle branch block"),
             ("no left bundle branch block", "normal QRS duration", "normal intraventricular conduction"),
             ("左束支传导阻滞", "完全性左束支传导阻滞", "QRS波增宽，左束支传导阻滞"),
             ("无左束支传导阻滞", "QRS时限正常", "室内传导正常")),
    _finding("lvh", (ECG,),
             ("left ventricular hypertrophy", "voltage criteria for left ventricular hypertrophy", "LVH by voltage"),
             ("no left ventricular hypertrophy", "normal QRS voltage", "no voltage criteria for LVH"),
             ("左心室肥厚", "左室高电压，符合左心室肥厚", "心电图示左室肥厚"),
             ("无左心室肥厚", "QRS电压正常", "无左室高电压")),
    _finding("stemi_anterior", (ECG,),
             ("anterior ST elevation myocardial infarction", "ST elevation in the anterior leads", "anterior STEMI"),
             ("no ST elevation", "normal ST segments in the anterior leads", "no acute ischemic changes"),
             ("前壁ST段抬高型心肌梗死", "前壁导联ST段抬高", "急性前壁心梗"),
             ("无ST段抬高", "前壁导联ST段正常", "无急性缺血改变")),
    _finding("stemi_inferior", (ECG,),
             ("inferior ST elevation myocardial infarction", "ST elevation in the inferior leads", "inferior STEMI"),
             ("no ST elevation", "normal ST segments in the inferior leads", "no acute ischemic changes"),
             ("下壁ST段抬高型心肌梗死", "下壁导联ST段抬高", "急性下壁心梗"),
             ("无ST段抬高", "下壁导联ST段正常", "无急性缺血改变")),
    _finding("av_block_1", (ECG,),
             ("first degree AV block", "prolonged PR interval", "first degree atrioventricular block"),
             ("normal PR interval", "no AV block", "normal atrioventricular conduction"),
             ("一度房室传导阻滞", "PR间期延长", "一度房室阻滞"),
             ("PR间期正常", "无房室传导阻滞", "房室传导正常")),
    _finding("reduced_ef", (ECHO, CMR),
             ("reduced left ventricular ejection fraction", "left ventricular systolic dysfunction", "reduced LVEF"),
             ("normal left ventricular ejection fraction", "normal left ventricular systolic function", "preserved LVEF"),
             ("左室射血分数降低", "左心室收缩功能减低", "LVEF减低"),
             ("左室射血分数正常", "左心室收缩功能正常", "LVEF保留")),
    _finding("lv_dilation", (ECHO, CMR),
             ("dilated left ventricle", "left ventricular dilation", "enlarged left ventricle"),
             ("normal left ventricular size", "the left ventricle is not dilated", "normal LV volumes"),
             ("左心室扩大", "左室扩张", "左心室增大"),
             ("左心室大小正常", "左室无扩大", "左室容积正常")),
    _finding("thick_walls", (ECHO, CMR),
             ("thickened left ventricular walls", "increased wall thickness", "concentric left ventricular hypertrophy"),
             ("normal wall thickness", "the left ventricular walls are not thickened", "no hypertrophy"),
             ("左心室壁增厚", "室壁厚度增加", "左室向心性肥厚"),
             ("室壁厚度正常", "左心室壁无增厚", "无心肌肥厚")),
    _finding("coronary_calcium", (CT,),
             ("coronary artery calcification", "calcified coronary plaque", "coronary calcium present"),
             ("no coronary artery calcification", "coronary calcium score of zero", "no coronary calcium"),
             ("冠状动脉钙化", "冠脉钙化斑块", "可见冠状动脉钙化"),
             ("无冠状动脉钙化", "冠脉钙化积分为零", "未见冠脉钙化")),
    _finding("severe_calcium", (CT,),
             ("severe coronary artery calcification", "very high coronary calcium score", "extensive coronary calcium"),
             ("no severe coronary calcification", "mild or no coronary calcium", "low coronary calcium score"),
             ("重度冠状动脉钙化", "冠脉钙化积分很高", "广泛冠脉钙化"),
             ("无重度冠状动脉钙化", "轻度或无冠脉钙化", "冠脉钙化积分低")),
)}

VALUES: dict[str, ValuePrompts] = {v.measurement: v for v in (
    ValuePrompts(
        "lvef", "%", (ECHO, CMR), tuple(float(v) for v in np.arange(10, 81, 1)),
        {"en": ("LVEF {v}%", "left ventricular ejection fraction {v}%", "the ejection fraction is {v}%"),
         "zh": ("左室射血分数{v}%", "LVEF {v}%", "射血分数为{v}%")}),
)}


def finding(name: str) -> FindingPrompts:
    """The registry entry of `name`; an unknown name lists the known ones."""
    if name not in FINDINGS:
        raise MMCardioError(f"no prompts for finding {name!r}; known: {sorted(FINDINGS)}", field="finding")
    return FINDINGS[name]


def findings_for(modality: str) -> list[str]:
    """Findings `modality` can show; the fused "study" embedding can show every finding."""
    return [f.name for f in FINDINGS.values() if modality == "study" or modality in f.modalities]
