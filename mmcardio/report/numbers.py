"""Numbers in report sentences: find each, tie it to the measurement it states, check it.

The numeric half of grounding: a drafted sentence may state a number only if a measurement of
the study supports it at the precision reports use. `find_numbers` reads a sentence in English
or Chinese as clinicians write it ("LVEF 35%", "左室射血分数35%", "SV1+RV5=3.8 mV", "ST段抬高
3 mm") and attributes each number to a measurement key: the nearest measurement phrase before
it in its clause decides, else a phrase closely after it, the unit checking the phrase (an "mL"
number is never LVEF). Lead names, ordinals, dates, "12-lead", "2D" and "A4C" are not numbers.
`ground_numbers` keeps a number that agrees, replaces one that disagrees by the measured value
and removes the sentence when a number has no measurement behind it.

Written by hand: no tokenizer or quantity parser we depend on knows clinical number grammar
(lead names, ST elevation in mm of ECG paper, phrase-to-measurement attribution).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from mmcardio.records import Measurement
from mmcardio.study import LANGUAGES

#: Unit of each reported measurement (the phantom's `findings.UNITS`; a test holds them equal).
MEASUREMENT_UNITS = MappingProxyType(
    {
        "lvef": "%", "lvedv": "mL", "lvesv": "mL", "lv_mass": "g", "wall_thickness": "mm",
        "rvedv": "mL", "la_volume": "mL", "agatston": "AU", "calcium_volume": "mm3",
        "heart_rate": "bpm", "qrs_duration": "ms", "pr_interval": "ms", "qt_interval": "ms",
        "sokolow_lyon": "mV", "st_elevation": "mV",
    }
)
#: Decimals a report states, in the measurement's unit; every other key is an integer.
#: ST elevation is stated in whole mm of ECG paper, i.e. to 0.1 mV.
REPORT_DECIMALS = MappingProxyType({"sokolow_lyon": 1, "st_elevation": 1})
#: A stated number agrees when within this many reporting steps of the measured value: half a
#: step accepts any rounding of the measurement (half-up or half-even) and nothing coarser.
TOLERANCE_STEPS = 0.5
#: Float slack, so that a value exactly half a step away (72.5 stated as 72) agrees.
FLOAT_SLACK = 1e-9
#: Units each key may be stated in, as stated units per measurement unit. ECG voltages are
#: also stated in mm of standard paper (10 mm = 1 mV), wall thickness also in cm.
STATED_UNITS = MappingProxyType(
    {
        "lvef": {"%": 1.0}, "lvedv": {"mL": 1.0}, "lvesv": {"mL": 1.0}, "lv_mass": {"g": 1.0},
        "wall_thickness": {"mm": 1.0, "cm": 0.1}, "rvedv": {"mL": 1.0}, "la_volume": {"mL": 1.0},
        "agatston": {"AU": 1.0}, "calcium_volume": {"mm3": 1.0}, "heart_rate": {"bpm": 1.0},
        "qrs_duration": {"ms": 1.0}, "pr_interval": {"ms": 1.0}, "qt_interval": {"ms": 1.0},
        "sokolow_lyon": {"mV": 1.0, "mm": 10.0}, "st_elevation": {"mV": 1.0, "mm": 10.0},
    }
)
#: Keys a bare number may state when it directly follows the key's phrase ("EF 35", "Agatston
#: 512"). Not voltages (mm or mV?) nor wall thickness (mm or cm?): there the unit sets the scale.
UNITLESS_KEYS = frozenset(
    {"lvef", "lvedv", "lvesv", "lv_mass", "rvedv", "la_volume", "agatston", "heart_rate",
     "qrs_duration", "pr_interval", "qt_interval"}
)
#: A unit that only one measurement is stated in names it without a phrase ("sinus, 72 bpm").
UNIT_DECIDES = MappingProxyType({"bpm": "heart_rate"})
#: Characters between a number and a phrase after it that may still name it ("35% LVEF").
FOLLOWING_GAP = 12
#: Phrases of measured quantities no key holds (RVEF, diameters, indexed values, prior
#: studies): a number after one is attributed to nothing, never to an earlier phrase.
OTHER = "other"

_UNIT_SPELLINGS = {
    "%": ("%", "％", "percent", "per cent", "pct"),
    "mL": ("mL", "毫升"),
    "bpm": ("bpm", "/min", "beats/min", "beats per minute", "次/分钟", "次/分", "次每分钟"),
    "ms": ("ms", "msec", "毫秒"),
    "mm": ("mm", "毫米"),
    "cm": ("cm", "厘米"),
    "mV": ("mV", "毫伏"),
    "g": ("g", "gram", "grams", "克"),
    "AU": ("AU", "points", "分"),
    "mm3": ("mm3", "mm³", "mm^3", "立方毫米"),
    # Quantities no key holds, spelled out so that "mmHg" is not read as "mm".
    OTHER: ("mmHg", "mm/s", "mm/mV", "cm2", "cm²", "cm/s", "m/s", "mL/m2", "mL/m²",
            "g/m2", "g/m²", "mL/min", "L/min", "L", "kg", "kg/m2", "kg/m²", "s", "sec", "°",
            "HU", "mg/dL", "mmol/L", "秒", "分钟", "岁", "years"),
}
_CANONICAL_UNIT = {
    spelling.lower(): unit for unit, spellings in _UNIT_SPELLINGS.items() for spelling in spellings
}
_UNIT = re.compile(
    r"[ \t\u00a0\u2009\u202f]*("
    + "|".join(re.escape(s) for s in sorted(_CANONICAL_UNIT, key=len, reverse=True))
    + r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)

# Measurement phrases by key; a space matches any run of spaces or hyphens ("end-diastolic").
_EN_PHRASES = {
    "lvef": ("LVEF", "EF", "(?:LV|left ventricular) (?:ejection fraction|EF)",
             "ejection fraction"),
    "lvedv": ("LVEDV", "EDV", "(?:LV |left ventricular )?end diastolic volume", "end diastolic",
              "end diastole"),
    "lvesv": ("LVESV", "ESV", "(?:LV |left ventricular )?end systolic volume", "end systolic",
              "end systole"),
    "lv_mass": ("(?:LV|left ventricular) (?:myocardial )?mass", "myocardial mass", "mass"),
    "wall_thickness": ("(?:maximal |max |LV |left ventricular )*wall thickness",
                       "(?:LV |left ventricular )?walls?", "(?:interventricular )?septum",
                       "septal thickness", "(?:LV )?posterior wall(?: thickness)?", "IVSd?",
                       "LVPWd?"),
    "rvedv": ("RVEDV", "(?:RV|right ventricular) (?:end diastolic volume|EDV)"),
    "la_volume": ("LAV", "(?:LA|left atrial) (?:end systolic )?volume"),
    "agatston": ("(?:total )?Agatston(?: calcium)?(?: score)?",
                 "(?:coronary (?:artery )?)?calcium score", "CAC(?:S| score)?"),
    "calcium_volume": ("(?:coronary )?calcium volume", "(?:calcium )?volume score"),
    "heart_rate": ("(?:mean |average )?(?:heart|ventricular|pulse) rate", "rate", "HR", "pulse"),
    "qrs_duration": ("QRS(?: duration| width| interval)?", "QRSd"),
    "pr_interval": ("P R(?: interval)?", "PQ(?: interval)?"),
    "qt_interval": ("QTc?[FB]?(?: interval)?", "corrected QT(?: interval)?"),
    "sokolow_lyon": ("Sokolow(?: Lyon)?(?: index| voltage| criteria)?",
                     r"[SR] V[1-6] \+ [SR] V[1-6]", "QRS voltage"),
    "st_elevation": ("ST(?: segment)? elevations?", "STE"),
    OTHER: ("RVEF", "RVESV", "(?:RV|right ventricular) (?:ejection fraction|EF|ESV|mass)",
            "(?:RV|right ventricular) (?:end systolic volume|wall(?: thickness)?)",
            "(?:RA|right atrial) (?:volume|area|size)",
            "(?:LV |left ventricular )?end (?:diastolic|systolic) (?:diameter|dimension)s?",
            "LVEDD", "LVESD", "LVID[ds]?", "(?:LA|left atrial) (?:diameter|dimension|area|size)",
            "(?:mass|volume) index", "indexed", "LVMI", "LAVI", "(?:LV)?[EF]DVi", "(?:LV)?ESVi",
            "stroke volume", "SV", "cardiac (?:output|index)", "fractional shortening", "FS",
            "GLS", "(?:global )?longitudinal strain", "TAPSE", "E/e'?", "E/A", "PASP", "RVSP",
            "(?:pulmonary )?(?:artery )?(?:systolic )?pressure", "gradient", "velocity", "Vmax",
            "valve area", "AVA", "LVOT", "aortic root", "(?:ascending )?aorta", "IVC",
            "blood pressure", "BP", "atrial rate", "respiratory rate", "(?:QRS )?axis",
            "RR(?: interval)?", "[PTQRS] waves?", "ST(?: segment)? depressions?",
            "depression", "Cornell(?: voltage| product)?", "stenosis", "age", "BMI", "weight",
            "height", "slice thickness", "prior(?: study| exam)?", "previous(?:ly)?",
            "baseline", "compared with", "reference", "normal (?:range|values?|limits?)",
            "upper limit(?: of normal)?", "ULN", "LLN"),
}
_ZH_PHRASES = {
    "lvef": ("左(?:心)?室射血分数", "射血分数", "左室EF"),
    "lvedv": ("左(?:心)?室舒张末期?容积", "舒张末期?容积", "舒张末期"),
    "lvesv": ("左(?:心)?室收缩末期?容积", "收缩末期?容积", "收缩末期"),
    "lv_mass": ("左(?:心)?室(?:心肌)?质量", "心肌质量", "质量"),
    "wall_thickness": ("(?:左(?:心)?室|室)壁(?:厚度?)?", "壁厚度?", "室间隔(?:厚度)?",
                       "左室后壁(?:厚度)?", "厚度"),
    "rvedv": ("右(?:心)?室舒张末期?容积",),
    "la_volume": ("左(?:心)?房容积",),
    "agatston": ("Agatston积分", "(?:冠脉|冠状动脉)?钙化总?积分", "积分"),
    "calcium_volume": ("钙化(?:体积|容积)",),
    "heart_rate": ("(?:平均)?心室率", "心率", "脉率"),
    "qrs_duration": ("QRS(?:波群?)?(?:时限|宽度|时间)?",),
    "pr_interval": ("P-?R间期",),
    "qt_interval": ("QTc?间期",),
    "sokolow_lyon": ("Sokolow-Lyon指数", "QRS(?:波群)?电压", "高电压"),
    "st_elevation": ("ST段?抬高",),
    OTHER: ("右(?:心)?室射血分数", "右(?:心)?室收缩末期?容积", "右(?:心)?房容积",
            "(?:左(?:心)?室)?(?:舒张|收缩)末期?内径", "左(?:心)?房内径", "内径", "质量指数",
            "容积指数", "每搏输出量", "心输出量", "心房率", "电轴", "RR间期", "ST段?压低", "压低",
            "狭窄", "压差", "流速", "血压", "肺动脉收缩压", "年龄", "较前", "既往", "上次",
            "正常值", "参考值", "正常范围"),
}


def _phrase_pattern(alias: str) -> re.Pattern:
    body = alias.replace(" ", r"[\s\-]*")
    return re.compile(rf"(?<![A-Za-z])(?:{body})(?![A-Za-z])", re.IGNORECASE)


def _lexicon(tables: tuple[dict, ...]) -> tuple[tuple[str, re.Pattern], ...]:
    """One pattern per alias: an alternation would stop at its first match, not the longest."""
    return tuple(
        (key, _phrase_pattern(alias))
        for table in tables
        for key, aliases in table.items()
        for alias in aliases
    )


#: Chinese text uses the English abbreviations too ("LVEF 35%，"), so zh reads both tables.
_LEXICONS = {
    "en": _lexicon((_EN_PHRASES,)),
    "zh": _lexicon((_EN_PHRASES, _ZH_PHRASES)),
    None: _lexicon((_EN_PHRASES, _ZH_PHRASES)),
}

_NUMBER = re.compile(r"(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?")
_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|"
          r"December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?(?![a-z])")
#: Dates, times and conduction ratios (10:30, 2:1): digits that state no quantity.
_DATES = re.compile(
    r"(?<![\d.])(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}"
    r"|\d{4}年(?:\d{1,2}月(?:\d{1,2}日)?)?|\d{1,2}月(?:\d{1,2}日)?|\d{1,2}日"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}(?:,?\s+\d{{4}})?"
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
    r"|\d{1,2}:\d{1,2}(?::\d{2})?)(?!\d)"
)
#: After a number: "12-lead", "4-chamber", "12 leads", "2度" (AV block degree), "3级".
_COUNT_AFTER = re.compile(r"[\-‐–]\s*[A-Za-z]|\s*(?:leads?|chambers?)(?![A-Za-z])|度|级|型|导联|腔")
_LEAD = r"(?:I{1,3}|aV[RLF]|V[1-9]R?)"
_LEAD_RANGE_BEFORE = re.compile(r"V\d\s*[-–—~]\s*$")  # the 4 of "V1-4"
_LEAD_BEFORE = re.compile(rf"(?<![A-Za-z]){_LEAD}\s*$")
_LEAD_AFTER = re.compile(rf"\s*(?:and\s+|和|及)?{_LEAD}(?![A-Za-z0-9])")
_RANGE_BEFORE = re.compile(
    r"\d\s*(?:%|mL|ms|mm|mV|g|bpm)?\s*(?:[-–—~～至到±]|(?<![A-Za-z])to|\+/-)\s*$", re.IGNORECASE
)
_RANGE_AFTER = re.compile(r"\s*(?:[-–—~～至到±]|to(?![A-Za-z])|\+/-)\s*\d")
_BOUND_BEFORE = re.compile(
    r"(?:[<>≤≥＜＞⩽⩾]|(?<![A-Za-z])(?:less than|greater than|more than|below|above|under|over|"
    r"at least|at most|exceeding)|小于|大于|低于|高于|超过|不足|不到)\s*=?\s*$",
    re.IGNORECASE,
)
_BOUND_AFTER = re.compile(
    r"\s*(?:以上|以下|以内|or (?:more|less|above|below|greater|higher|lower))", re.IGNORECASE
)
#: What may separate a phrase and a bare number it states ("Agatston score of 512", "积分为0").
_ADJACENT = re.compile(
    r"[\s:：=＝(（]*(?:(?:of|is|was|at|about|approximately|approx\.|around|measured|up to|"
    r"为|是|约为|约|达到|达)[\s:：=＝]*)*",
    re.IGNORECASE,
)
_THOUSANDS = re.compile(r"\d{3}(?!\d)")
_CLAUSE_SEPARATORS, _OPENING, _CLOSING = ",，;；、。", "(（[【", ")）]】"


@dataclass(frozen=True)
class NumberMention:
    """A number a sentence states.

    key: the measurement it states (a `MEASUREMENT_UNITS` key), or None when it states none.
    value: in the key's measurement unit (ST elevation stated in mm is given in mV); as
    stated when key is None.
    unit: as written ("mL", "次/分", "" for none). start, end: the number's span; text: its digits.
    """

    key: str | None
    value: float
    unit: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class NumberCheck:
    """A sentence's numbers checked against the study's measurements.

    text: the sentence with disagreeing numbers replaced, or None when it must be removed.
    changes: one entry per number, {"action": "kept" | "replaced" | "removed", "key", "stated",
    "measured", "unit", "reason"}, values in the stated unit; a removed sentence lists only the
    numbers that removed it. keys: the measurements the kept sentence cites (its evidence).
    """

    text: str | None
    changes: list[dict] = field(default_factory=list)
    keys: tuple[str, ...] = ()


class _Phrase(NamedTuple):
    start: int
    end: int
    key: str
    text: str


class _Unit(NamedTuple):
    written: str
    canonical: str  # a `_UNIT_SPELLINGS` key, "" when no unit is written
    end: int


def find_numbers(sentence: str, lang: str | None = None) -> list[NumberMention]:
    """Every number `sentence` states, in order, each attributed to its measurement key."""
    return [mention for mention, _ in _mentions(sentence, lang)]


def ground_numbers(
    sentence: str, measurements: Mapping[str, Measurement], lang: str | None = None
) -> NumberCheck:
    """Keep, correct or remove `sentence` so that no number in it contradicts `measurements`.

    A number within half a reporting step of its measurement is kept; another is replaced by
    the measured value at reporting precision, in the unit the sentence states (the rest of
    the sentence byte-identical); a number no measurement of the study supports removes it.
    """
    mentions = _mentions(sentence, lang)
    removals = [
        _removal(m, why, measurements) for m, why in mentions if not _measured(m.key, measurements)
    ]
    if removals:
        return NumberCheck(None, removals)
    changes, text = [], sentence
    for mention, _ in reversed(mentions):  # right to left, so earlier spans stay valid
        change = _check(mention, _checked_unit(mention.key, measurements[mention.key]))
        if change["action"] == "replaced":
            text = text[: mention.start] + change["replacement"] + text[mention.end :]
        changes.insert(0, {k: v for k, v in change.items() if k != "replacement"})
    return NumberCheck(text, changes, tuple(dict.fromkeys(m.key for m, _ in mentions)))


def reported_decimals(key: str, unit: str | None = None) -> int:
    """Decimals a report states `key` with in `unit` (one of its `STATED_UNITS`, default the
    measurement unit): LVEF 0, Sokolow-Lyon 1 in mV, ST elevation 1 in mV and 0 in mm."""
    scale = _scale(key, unit)
    return max(0, REPORT_DECIMALS.get(key, 0) - round(math.log10(scale)))


def format_reported(key: str, value: float, unit: str | None = None) -> str:
    """`value` (in the key's measurement unit) as a report states it in `unit`: "35", "3.8"."""
    decimals = reported_decimals(key, unit)
    return f"{round(value * _scale(key, unit), decimals) + 0.0:.{decimals}f}"  # + 0.0: no "-0"


def _scale(key: str, unit: str | None) -> float:
    return STATED_UNITS[key][unit] if unit else 1.0


def _mentions(sentence: str, lang: str | None) -> list[tuple[NumberMention, str]]:
    """Each number with the reason for its key (or for having none)."""
    if lang is not None and lang not in LANGUAGES:
        raise ValueError(f"lang must be one of {LANGUAGES} or None, got {lang!r}")
    phrases = _phrases(sentence, lang)
    masked = [m.span() for m in _DATES.finditer(sentence)] + [(p.start, p.end) for p in phrases]
    cuts = _clause_cuts(sentence)
    out = []
    for number in _NUMBER.finditer(sentence):
        if any(lo <= number.start() < hi for lo, hi in masked) or _not_a_quantity(
            sentence, number, phrases
        ):
            continue
        unit = _unit_at(sentence, number.end())
        key, why = _attribute(sentence, number, unit, phrases, _clause(cuts, number.start()))
        stated = _parse(number.group())
        value = stated / _scale(key, unit.canonical) if key else stated
        out.append((NumberMention(key, value, unit.written, *number.span(), number.group()), why))
    return out


def _phrases(sentence: str, lang: str | None) -> list[_Phrase]:
    """Measurement phrases in `sentence`; of overlapping ones the longest ("RV end-diastolic
    volume" over "end-diastolic volume")."""
    found = [
        _Phrase(m.start(), m.end(), key, m.group())
        for key, pattern in _LEXICONS[lang]
        for m in pattern.finditer(sentence)
        if m.end() > m.start()
    ]
    chosen: list[_Phrase] = []
    for p in sorted(found, key=lambda p: (p.start - p.end, p.start)):
        if all(p.end <= c.start or c.end <= p.start for c in chosen):
            chosen.append(p)
    return sorted(chosen)


def _not_a_quantity(sentence: str, number: re.Match, phrases: list[_Phrase]) -> bool:
    """Lead names (V1, SV1), views (A4C), ordinals (1st, 第2), "2D", "12-lead", "2度"."""
    before, after = sentence[: number.start()], sentence[number.end() :]
    glued_to_phrase = any(p.end == number.start() for p in phrases)  # "LVEF35%"
    if before[-1:].isascii() and before[-1:].isalpha() and not glued_to_phrase:
        return True
    if after[:1].isascii() and after[:1].isalpha() and not _UNIT.match(after):
        return True
    return bool(
        _LEAD_RANGE_BEFORE.search(before) or before.endswith("第") or _COUNT_AFTER.match(after)
    )


def _unit_at(sentence: str, end: int) -> _Unit:
    match = _UNIT.match(sentence, end)
    if match is None:
        return _Unit("", "", end)
    return _Unit(match.group(1), _CANONICAL_UNIT[match.group(1).lower()], match.end())


def _attribute(
    sentence: str, number: re.Match, unit: _Unit, phrases: list[_Phrase], clause: tuple[int, int]
) -> tuple[str | None, str]:
    """The key `number` states and why: the nearest phrase before it in its clause, else one
    closely after it, else a unit only one measurement has; the unit must fit the phrase."""
    start, (lo, hi) = number.start(), clause
    if _RANGE_BEFORE.search(sentence[:start]) or _RANGE_AFTER.match(sentence, unit.end):
        return None, "one end of a range, not a measured value"
    if _BOUND_BEFORE.search(sentence[:start]) or _BOUND_AFTER.match(sentence, unit.end):
        return None, "a bound (<, >, below, 以上), not a measured value"
    if unit.canonical == OTHER:
        return None, f"no reported measurement is stated in {unit.written!r}"
    before = [p for p in phrases if lo <= p.start and p.end <= start]
    if before and before[-1].key == OTHER:
        return None, f"{before[-1].text!r} is not a reported measurement"
    if before and _fits(before[-1].key, unit, sentence[before[-1].end : start]):
        return before[-1].key, f"stated after {before[-1].text!r}"
    after = next((p for p in phrases if unit.end <= p.start < hi), None)
    if after and _follows_closely(sentence, unit, after):
        return after.key, f"stated before {after.text!r}"
    if unit.canonical in UNIT_DECIDES:
        return UNIT_DECIDES[unit.canonical], f"only one measurement is stated in {unit.written!r}"
    if before:
        return None, f"{before[-1].text!r} is not stated in {unit.written or 'a bare number'!r}"
    return None, "no measurement phrase in its clause"


def _fits(key: str, unit: _Unit, gap: str) -> bool:
    """A unit the key is stated in, or a bare number right after the key's phrase."""
    if unit.canonical:
        return unit.canonical in STATED_UNITS[key]
    return key in UNITLESS_KEYS and _ADJACENT.fullmatch(gap) is not None


def _follows_closely(sentence: str, unit: _Unit, phrase: _Phrase) -> bool:
    gap = sentence[unit.end : phrase.start]
    return (
        phrase.key != OTHER
        and bool(unit.canonical)
        and unit.canonical in STATED_UNITS[phrase.key]
        and len(gap) <= FOLLOWING_GAP
        and not any(c.isdigit() for c in gap)
    )


def _clause_cuts(sentence: str) -> list[int]:
    """Where clauses end: at , ; 、 。 outside brackets, not in "1,024" nor between lead names
    ("ST elevation in II, III and aVF (up to 2 mm)" is one clause)."""
    depth, cuts = 0, []
    for i, char in enumerate(sentence):
        if char in _OPENING:
            depth += 1
        elif char in _CLOSING:
            depth = max(0, depth - 1)  # a fragment may close a bracket it never opened
        elif char in _CLAUSE_SEPARATORS and depth == 0 and not _joins(sentence, i):
            cuts.append(i)
    return cuts


def _joins(sentence: str, i: int) -> bool:
    """A separator that joins rather than ends: thousands ("1,024"), lists of leads."""
    if sentence[i] == "," and sentence[i - 1 : i].isdigit() and _THOUSANDS.match(sentence, i + 1):
        return True
    return bool(_LEAD_BEFORE.search(sentence[:i]) and _LEAD_AFTER.match(sentence, i + 1))


def _clause(cuts: list[int], position: int) -> tuple[int, int]:
    lo = max((c + 1 for c in cuts if c < position), default=0)
    hi = min((c for c in cuts if c > position), default=10**9)
    return lo, hi


def _parse(digits: str) -> float:
    return float(digits.replace(",", ""))


def _measured(key: str | None, measurements: Mapping[str, Measurement]) -> bool:
    return key is not None and key in measurements and math.isfinite(measurements[key].value)


def _checked_unit(key: str, measurement: Measurement) -> Measurement:
    """The measurement, refused when its unit is not the key's (units are set once, upstream)."""
    if measurement.unit != MEASUREMENT_UNITS[key]:
        raise ValueError(
            f"measurements[{key!r}]: expected a value in {MEASUREMENT_UNITS[key]!r}, "
            f"got {measurement.unit!r}"
        )
    return measurement


def _removal(mention: NumberMention, why: str, measurements: Mapping[str, Measurement]) -> dict:
    if mention.key is None:
        reason = f"states no measurement ({why})"
    else:
        reason = f"no {mention.key} measurement in this study supports it"
    return {
        "action": "removed", "key": mention.key, "stated": _parse(mention.text), "measured": None,
        "unit": mention.unit or (MEASUREMENT_UNITS[mention.key] if mention.key else ""),
        "reason": reason,
    }


def _check(mention: NumberMention, measurement: Measurement) -> dict:
    """Kept, or replaced by the measured value at reporting precision, in the stated unit."""
    key, written = mention.key, mention.unit
    unit = _CANONICAL_UNIT[written.lower()] if written else MEASUREMENT_UNITS[key]
    stated = _parse(mention.text)
    replacement = format_reported(key, measurement.value, unit)
    step = 10.0 ** -reported_decimals(key, unit)
    distance = abs(stated - measurement.value * _scale(key, unit))
    agrees = distance <= TOLERANCE_STEPS * step + FLOAT_SLACK
    return {
        "action": "kept" if agrees else "replaced", "key": key, "stated": stated,
        "measured": float(replacement), "unit": unit,
        "reason": "agrees at reporting precision" if agrees
        else f"stated {mention.text} {unit}, measured {replacement} {unit}",
        "replacement": replacement,
    }
