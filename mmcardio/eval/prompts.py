"""Prompt registry for zero-shot evaluation, in English and Chinese.

Per finding: the modalities that can show it, and several positive and negative phrasings
per language (the classifier averages their embeddings). Negative phrasings state the normal
counterpart as reports do ("sinus rhythm", "normal PR interval") rather than the finding's own
words under a negation ("no atrial fibrillation"): a text tower that learned from reports alone
has rarely seen a negated finding, and would place it next to the finding itself. Per regression target: value
templates filled over a grid of values (EchoCLIP-style regression by prompt similarity); a template
may also state the clinical grade of each value (`{grade}`, from guideline bands), because
reports write "LVEF 35%, moderately reduced" and the words carry the value as much as the digits.

An evaluation embeds a `PromptSet`: `default_prompts()` (the registry below), or a YAML/JSON file
of the same shape (`load_prompts`, `mmcardio zeroshot --prompts FILE`; `PromptSet.to_dict()`
writes the default one as a starting point).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmcardio.config import read_mapping
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.modality import STUDY_MODALITIES
from mmcardio.study import LANGUAGES


@dataclass(frozen=True)
class FindingPrompts:
    """Positive and negative phrasings of one finding, per language."""

    name: str
    modalities: tuple[str, ...]  # study modalities that can show the finding
    category: str  # rhythm, conduction, function, calcium, ... (see HEADLINE)
    positive: dict[str, tuple[str, ...]]
    negative: dict[str, tuple[str, ...]]

    def classes(self, lang: str) -> list[list[str]]:
        """[positive prompts, negative prompts] in `lang` (class 0 is the finding)."""
        if lang not in self.positive:
            raise MMCardioError(f"no {lang!r} prompts for finding {self.name!r}; have "
                                f"{sorted(self.positive)}", field="lang")
        return [list(self.positive[lang]), list(self.negative[lang])]


@dataclass(frozen=True)
class Band:
    """Values from `lower` (inclusive) up to the next band's lower bound share a grade word."""

    lower: float
    words: dict[str, str]  # language -> word


@dataclass(frozen=True)
class ValuePrompts:
    """Templates with a `{v}` slot for a measurement (and optionally `{grade}`, the word of the
    value's band in `bands`, ascending), filled over `grid`."""

    measurement: str  # key in Study.measurements
    unit: str
    modalities: tuple[str, ...]
    grid: tuple[float, ...]
    templates: dict[str, tuple[str, ...]]
    bands: tuple[Band, ...] = ()

    def __post_init__(self) -> None:
        graded = [t for ts in self.templates.values() for t in ts if "{grade}" in t]
        if graded and not self.bands:
            raise MMCardioError(f"template {graded[0]!r} has a {{grade}} slot but {self.measurement} "
                                "has no grade bands", field="bands")

    def grade(self, value: float, lang: str) -> str:
        """The word of the band `value` falls in (values below every band take the first)."""
        band = next((b for b in reversed(self.bands) if value >= b.lower), self.bands[0])
        return band.words[lang]

    def classes(self, lang: str) -> list[list[str]]:
        """One class per grid value: every template filled with that value (and its grade)."""
        return [[t.format(v=_number(v), grade=self.grade(v, lang) if self.bands else "")
                 for t in self.templates[lang]] for v in self.grid]


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


ECG, ECHO, CMR, CT = "ecg", "echo", "cmr", "ct"


def _finding(name: str, modalities: tuple[str, ...], category: str, en_pos: tuple[str, ...],
             en_neg: tuple[str, ...], zh_pos: tuple[str, ...], zh_neg: tuple[str, ...]) -> FindingPrompts:
    return FindingPrompts(name, modalities, category, {"en": en_pos, "zh": zh_pos},
                          {"en": en_neg, "zh": zh_neg})


FINDINGS: dict[str, FindingPrompts] = {f.name: f for f in (
    _finding("normal_ecg", (ECG,), "normal",
             ("normal ECG", "sinus rhythm, normal electrocardiogram", "the ECG is within normal limits"),
             ("abnormal ECG", "the electrocardiogram is abnormal", "ECG with abnormal findings"),
             ("正常心电图", "窦性心律，心电图正常", "心电图在正常范围内"),
             ("异常心电图", "心电图异常", "心电图有异常表现")),
    _finding("sinus_bradycardia", (ECG,), "rhythm",
             ("sinus bradycardia", "the rhythm is sinus bradycardia", "slow sinus rhythm"),
             ("sinus rhythm", "normal heart rate", "sinus rhythm at a normal rate"),
             ("窦性心动过缓", "心律为窦性心动过缓", "窦性心律，心率缓慢"),
             ("窦性心律", "心率正常", "窦性心律，心率正常")),
    _finding("sinus_tachycardia", (ECG,), "rhythm",
             ("sinus tachycardia", "the rhythm is sinus tachycardia", "fast sinus rhythm"),
             ("sinus rhythm", "normal heart rate", "sinus rhythm at a normal rate"),
             ("窦性心动过速", "心律为窦性心动过速", "窦性心律，心率增快"),
             ("窦性心律", "心率正常", "窦性心律，心率正常")),
    _finding("afib", (ECG,), "rhythm",
             ("atrial fibrillation", "the rhythm is atrial fibrillation", "irregularly irregular rhythm without P waves"),
             ("sinus rhythm", "regular sinus rhythm", "normal sinus rhythm with P waves"),
             ("心房颤动", "心律为心房颤动", "房颤，心律绝对不齐"),
             ("窦性心律", "规则的窦性心律", "正常窦性心律")),
    _finding("lbbb", (ECG,), "conduction",
             ("left bundle branch block", "complete left bundle branch block", "wide QRS with left bundle branch block"),
             ("normal QRS duration", "narrow QRS complex", "normal intraventricular conduction"),
             ("左束支传导阻滞", "完全性左束支传导阻滞", "QRS波增宽，左束支传导阻滞"),
             ("QRS时限正常", "QRS波不宽", "室内传导正常")),
    _finding("lvh", (ECG,), "hypertrophy",
             ("left ventricular hypertrophy", "voltage criteria for left ventricular hypertrophy", "LVH by voltage"),
             ("normal QRS voltage", "QRS voltage within normal limits", "normal voltage"),
             ("左心室肥厚", "左室高电压，符合左心室肥厚", "心电图示左室肥厚"),
             ("QRS电压正常", "QRS波电压在正常范围", "电压正常")),
    _finding("stemi_anterior", (ECG,), "ischemia",
             ("anterior ST elevation myocardial infarction", "ST elevation in the anterior leads", "anterior STEMI"),
             ("no ST elevation", "normal ST segments in the anterior leads", "no acute ischemic changes"),
             ("前壁ST段抬高型心肌梗死", "前壁导联ST段抬高", "急性前壁心梗"),
             ("无ST段抬高", "前壁导联ST段正常", "无急性缺血改变")),
    _finding("stemi_inferior", (ECG,), "ischemia",
             ("inferior ST elevation myocardial infarction", "ST elevation in the inferior leads", "inferior STEMI"),
             ("no ST elevation", "normal ST segments in the inferior leads", "no acute ischemic changes"),
             ("下壁ST段抬高型心肌梗死", "下壁导联ST段抬高", "急性下壁心梗"),
             ("无ST段抬高", "下壁导联ST段正常", "无急性缺血改变")),
    _finding("av_block_1", (ECG,), "conduction",
             ("first degree AV block", "PR interval prolonged", "first degree atrioventricular block"),
             ("normal PR interval", "PR interval 160 ms", "normal PR interval (150 ms)"),
             ("一度房室传导阻滞", "PR间期延长", "一度房室阻滞"),
             ("PR间期正常", "PR间期160 ms", "PR间期正常（150 ms）")),
    _finding("reduced_ef", (ECHO, CMR), "function",
             ("reduced left ventricular ejection fraction", "left ventricular systolic dysfunction", "reduced LVEF"),
             ("normal left ventricular ejection fraction", "normal left ventricular systolic function", "preserved LVEF"),
             ("左室射血分数降低", "左心室收缩功能减低", "LVEF减低"),
             ("左室射血分数正常", "左心室收缩功能正常", "LVEF保留")),
    _finding("lv_dilation", (ECHO, CMR), "size",
             ("dilated left ventricle", "left ventricular dilation", "enlarged left ventricle"),
             ("normal left ventricular size", "normal LV size", "normal LV volumes"),
             ("左心室扩大", "左室扩张", "左心室增大"),
             ("左心室大小正常", "左室大小正常", "左室容积正常")),
    _finding("thick_walls", (ECHO, CMR), "hypertrophy",
             ("thickened left ventricular walls", "increased wall thickness", "concentric left ventricular hypertrophy"),
             ("normal wall thickness", "normal left ventricular wall thickness", "walls of normal thickness"),
             ("左心室壁增厚", "室壁厚度增加", "左室向心性肥厚"),
             ("室壁厚度正常", "左心室壁厚度正常", "室壁厚度在正常范围")),
    _finding("coronary_calcium", (CT,), "calcium",
             ("coronary artery calcification", "calcified coronary plaque", "coronary calcium present"),
             ("zero calcium score", "coronary calcium score of zero", "Agatston score 0"),
             ("冠状动脉钙化", "冠脉钙化斑块", "可见冠状动脉钙化"),
             ("钙化积分为零", "冠脉钙化积分为零", "Agatston积分0")),
    _finding("severe_calcium", (CT,), "calcium",
             ("severe coronary artery calcification", "very high coronary calcium score", "extensive coronary calcium"),
             ("minimal coronary calcification", "mild or no coronary calcium", "low coronary calcium score"),
             ("重度冠状动脉钙化", "冠脉钙化积分很高", "广泛冠脉钙化"),
             ("少量冠脉钙化", "轻度或无冠脉钙化", "冠脉钙化积分低")),
)}

#: LVEF grades of the ASE/EACVI 2015 chamber quantification guideline: normal from 52%,
#: mildly reduced 41-51%, moderately reduced 30-40%, severely reduced below 30%.
LVEF_BANDS = (Band(0.0, {"en": "severely reduced", "zh": "重度减低"}),
              Band(30.0, {"en": "moderately reduced", "zh": "中度减低"}),
              Band(41.0, {"en": "mildly reduced", "zh": "轻度减低"}),
              Band(52.0, {"en": "normal", "zh": "正常"}))

VALUES: dict[str, ValuePrompts] = {v.measurement: v for v in (
    ValuePrompts(
        "lvef", "%", (ECHO, CMR), tuple(float(v) for v in np.arange(10, 81, 1)),
        {"en": ("LVEF {v}%, {grade} systolic function",
                "{grade} left ventricular systolic function with an ejection fraction of {v}%",
                "the ejection fraction is {v}% ({grade})"),
         "zh": ("LVEF {v}%，收缩功能{grade}", "左心室收缩功能{grade}，射血分数{v}%",
                "射血分数为{v}%（{grade}）")},
        LVEF_BANDS),
)}


#: What each modality is read for in practice, by finding category: the headline macro AUROC
#: averages these (rhythm and conduction from the ECG, systolic function from echo and CMR,
#: calcium from CT); the other findings a modality shows are reported beside it.
HEADLINE: dict[str, tuple[str, ...]] = {ECG: ("rhythm", "conduction"), ECHO: ("function",),
                                        CMR: ("function",), CT: ("calcium",)}


@dataclass(frozen=True)
class PromptSet:
    """What a zero-shot evaluation embeds: findings to classify (by name), measurements to
    regress from value prompts (by measurement), and the finding categories each modality is
    read for (its headline)."""

    findings: Mapping[str, FindingPrompts]
    values: Mapping[str, ValuePrompts]
    headline: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(HEADLINE))

    def findings_for(self, modality: str) -> list[str]:
        """Findings `modality` can show; the fused "study" embedding can show every finding."""
        return [f.name for f in self.findings.values() if modality == "study" or modality in f.modalities]

    def headline_findings(self, modality: str) -> list[str]:
        """Findings of `modality`'s headline categories; for the fused "study", all of them."""
        categories = {c for m, cs in self.headline.items() if modality in (m, "study") for c in cs}
        return [f for f in self.findings_for(modality) if self.findings[f].category in categories]

    def to_dict(self) -> dict[str, Any]:
        """The JSON/YAML form `prompts_from_dict` and `load_prompts` read."""
        def lists(by_lang: Mapping[str, tuple[str, ...]]) -> dict[str, list[str]]:
            return {lang: list(texts) for lang, texts in by_lang.items()}
        return {
            "findings": {name: {"modalities": list(f.modalities), "category": f.category,
                                "positive": lists(f.positive), "negative": lists(f.negative)}
                         for name, f in self.findings.items()},
            "values": {name: {"unit": v.unit, "modalities": list(v.modalities), "grid": list(v.grid),
                              "templates": lists(v.templates),
                              "bands": [{"lower": b.lower, "words": dict(b.words)} for b in v.bands]}
                       for name, v in self.values.items()},
            "headline": {m: list(cs) for m, cs in self.headline.items()}}


def default_prompts() -> PromptSet:
    """The built-in registry: 14 findings of the ECG, echo, CMR and CT, and LVEF values."""
    return PromptSet(dict(FINDINGS), dict(VALUES), dict(HEADLINE))


def load_prompts(path: str | Path) -> PromptSet:
    """A prompt set from a YAML or JSON file shaped as `PromptSet.to_dict()`: `findings`
    {name: {modalities, category, positive: {lang: [...]}, negative: {lang: [...]}}}, `values`
    {measurement: {unit, modalities, grid, templates: {lang: [...]}, bands (optional)}} and
    `headline` {modality: [category, ...]} (optional: the built-in one). Every language of
    `study.LANGUAGES` needs its prompts."""
    return prompts_from_dict(read_mapping(path), str(path))


def prompts_from_dict(data: Any, source: str = "<dict>") -> PromptSet:
    """Check and build a prompt set; errors name `source`, the field and what was expected."""
    def fail(where: str, expected: str, got: Any) -> ConfigError:
        shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:80] + "..."
        return ConfigError(f"expected {expected}, got {shown}", source, where)

    def mapping(value: Any, where: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict:
        """`value` as a mapping; with `required`, of those keys (and `optional` ones) only."""
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise fail(where, "a mapping", value)
        keys = (*required, *optional)
        if keys and (set(value) - set(keys) or set(required) - set(value)):
            wanted = (f"the keys {list(required)}" + (f" and optionally {list(optional)}" if optional else "")
                      if required else f"keys among {list(optional)}")
            raise fail(where, wanted, sorted(value))
        return value

    def text(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise fail(where, "a non-empty text", value)
        return value

    def texts(value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise fail(where, "a non-empty list of texts", value)
        return tuple(text(t, f"{where}[{i}]") for i, t in enumerate(value))

    def number(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(where, "a number", value)
        return float(value)

    def per_language(value: Any, where: str, read=texts) -> dict:
        mapping(value, where, LANGUAGES)
        return {lang: read(value[lang], f"{where}.{lang}") for lang in LANGUAGES}

    def modalities(value: Any, where: str) -> tuple[str, ...]:
        known = [str(m) for m in STUDY_MODALITIES]
        if not set(texts(value, where)) <= set(known):
            raise fail(where, f"modalities among {known}", value)
        return tuple(value)

    def templates(value: Any, where: str) -> dict[str, tuple[str, ...]]:
        out = per_language(value, where)
        for lang, ts in out.items():
            for i, t in enumerate(ts):
                try:
                    t.format(v=0, grade="")
                except (KeyError, IndexError, ValueError):
                    raise fail(f"{where}.{lang}[{i}]", "a template with a {v} slot (and optionally "
                               "{grade})", t) from None
        return out

    top = mapping(data, "prompts", optional=("findings", "values", "headline"))
    findings = {}
    for name, entry in mapping(top.get("findings", {}), "findings").items():
        at = f"findings.{name}"
        mapping(entry, at, ("modalities", "category", "positive", "negative"))
        findings[name] = FindingPrompts(name, modalities(entry["modalities"], f"{at}.modalities"),
                                        text(entry["category"], f"{at}.category"),
                                        per_language(entry["positive"], f"{at}.positive"),
                                        per_language(entry["negative"], f"{at}.negative"))
    values = {}
    for name, entry in mapping(top.get("values", {}), "values").items():
        at = f"values.{name}"
        mapping(entry, at, ("unit", "modalities", "grid", "templates"), ("bands",))
        grid = entry["grid"] if isinstance(entry["grid"], list) and entry["grid"] else None
        if grid is None:
            raise fail(f"{at}.grid", "a non-empty list of numbers", entry["grid"])
        bands = [mapping(b, f"{at}.bands[{i}]", ("lower", "words")) for i, b in enumerate(entry.get("bands", []))]
        try:
            values[name] = ValuePrompts(
                name, text(entry["unit"], f"{at}.unit"), modalities(entry["modalities"], f"{at}.modalities"),
                tuple(number(v, f"{at}.grid[{i}]") for i, v in enumerate(grid)),
                templates(entry["templates"], f"{at}.templates"),
                tuple(Band(number(b["lower"], f"{at}.bands[{i}].lower"),
                           per_language(b["words"], f"{at}.bands[{i}].words", text)) for i, b in enumerate(bands)))
        except ConfigError:
            raise
        except MMCardioError as err:
            raise ConfigError(err.problem, source, f"{at}.{err.field}") from None
    headline = ({m: texts(cs, f"headline.{m}") for m, cs in mapping(top["headline"], "headline").items()}
                if "headline" in top else dict(HEADLINE))
    return PromptSet(findings, values, headline)
