"""Phantom reports in English or Chinese, written from a study's truth as a clinician would.

One section per modality present, in random order, each with a random header and its
sentences shuffled; every finding and every normal result has several phrasings with the
numbers and units of that modality ("LVEF 35%", "左室射血分数35%", "Agatston score 512");
negatives are sometimes stated ("no ST elevation"); an impression line lists the positive
findings by one of their names. Absent findings are never stated: phrases of one finding never
occur inside the phrases used for its absence (the tests check this on many studies).

The phrasings are data, one file per language (`templates/<lang>.yaml`, read by
`phrasebook`); this module decides what a report says and in which order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from importlib import resources
from types import MappingProxyType

import numpy as np
import yaml

from mmcardio.datasets.synthetic.findings import (
    LABELS,
    LVEDV_UPPER_NORMAL_ML,
    REDUCED_EF_PCT,
    SEVERE_AGATSTON,
    THICK_WALL_MM,
    PatientTruth,
    mildly_reduced_ef,
    report_round,
)
from mmcardio.errors import ConfigError
from mmcardio.study import LANGUAGES

Phrasings = tuple[str, ...]
#: The language whose phrasebook every other must match entry for entry.
REFERENCE_LANGUAGE = "en"
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


@dataclasses.dataclass(frozen=True)
class Phrasebook:
    """One language's phrasings; every entry holds interchangeable phrasings of one thing."""

    finding_sentences: Mapping[str, Phrasings]  # a finding stated as present
    finding_names: Mapping[str, Phrasings]  # short names, for the impression line
    grades: Mapping[str, Phrasings]  # words for {grade} and {cgrade}
    statements: Mapping[str, Phrasings]  # normal results, negations, descriptions
    headers: Mapping[str, Phrasings]  # section headers by modality
    impression: Phrasings  # header of the impression line


@functools.cache
def phrasebook(lang: str) -> Phrasebook:
    """The phrasings of `lang` (one of `LANGUAGES`), read once from the package's templates."""
    if lang not in LANGUAGES:
        raise ValueError(f"lang must be one of {LANGUAGES}, got {lang!r}")
    text = (resources.files(__package__) / "templates" / f"{lang}.yaml").read_text("utf-8")
    path = f"{__package__}/templates/{lang}.yaml"
    book = _parse(yaml.safe_load(text), path)
    _check_entries(book, lang, path)
    return book


def _parse(data: object, path: str) -> Phrasebook:
    """A phrasebook file as immutable tables: the cached book is shared by every caller."""
    sections = [f.name for f in dataclasses.fields(Phrasebook)]
    if not isinstance(data, dict) or sorted(data) != sorted(sections):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"expected the sections {sections}, found {found}", path)
    tables: dict[str, object] = {}
    for name in sections:
        if name == "impression":  # a single list, not a table of entries
            tables[name] = _phrasings(data[name], path, name)
        elif isinstance(data[name], dict):
            tables[name] = MappingProxyType(
                {key: _phrasings(value, path, f"{name}.{key}") for key, value in data[name].items()}
            )
        else:
            raise ConfigError("expected a mapping of entries to their phrasings", path, name)
    return Phrasebook(**tables)


def _phrasings(value: object, path: str, field: str) -> Phrasings:
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise ConfigError(f"expected a non-empty list of strings, got {value!r}", path, field)
    return tuple(value)


def _check_entries(book: Phrasebook, lang: str, path: str) -> None:
    """Every finding has phrasings, and every language has the reference language's entries."""
    wanted = {"finding_sentences": LABELS, "finding_names": LABELS, "headers": tuple(SECTIONS)}
    if lang != REFERENCE_LANGUAGE:
        reference = phrasebook(REFERENCE_LANGUAGE)
        wanted = {
            name: tuple(getattr(reference, name)) for name in ("grades", "statements", *wanted)
        }
    for name, keys in wanted.items():
        missing = [key for key in keys if key not in getattr(book, name)]
        if missing:
            raise ConfigError(f"no phrasings for {missing}", path, name)


class _Writer:
    """Picks phrasings for one report: a language's phrasebook and a random generator."""

    def __init__(self, lang: str, rng: np.random.Generator):
        self.lang, self.book, self.rng = lang, phrasebook(lang), rng

    def pick(self, options: Phrasings) -> str:
        return options[int(self.rng.integers(len(options)))]

    def say(self, options: Phrasings, **values: object) -> str:
        fills = {
            k: self.pick(self.book.grades[v]) if k in ("grade", "cgrade") else v
            for k, v in values.items()
        }
        return self.pick(options).format(**fills)

    def finding(self, name: str, **values: object) -> str:
        return self.say(self.book.finding_sentences[name], **values)

    def statement(self, name: str, **values: object) -> str:
        return self.say(self.book.statements[name], **values)

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
    out = [w.finding(rhythm, **n) if rhythm else w.statement("sinus_rhythm", **n)]
    if f["av_block_1"]:
        out.append(w.finding("av_block_1", **n))
    elif "pr" in n and w.maybe(0.5):
        out.append(w.statement("pr_normal", **n))
    if f["lbbb"]:
        out.append(w.finding("lbbb", **n))
    elif w.maybe(0.5):
        out.append(w.statement("qrs_normal", **n))
    if f["lvh"]:
        out.append(w.finding("lvh", **n))
        if e.strain:
            out.append(w.statement("strain"))
    elif w.maybe(NEGATION_PROBABILITY / 2):
        out.append(w.statement("voltage_normal"))
    for key in ("stemi_anterior", "stemi_inferior"):
        if f[key]:
            out.append(w.finding(key, **n))
    if e.q_waves:
        out.append(w.statement(f"q_{e.q_waves}"))
    if not (f["stemi_anterior"] or f["stemi_inferior"] or e.lbbb or e.strain) and w.maybe(
        NEGATION_PROBABILITY
    ):
        out.append(w.statement("no_st_elevation"))
    if f["normal_ecg"] and w.maybe(0.7):
        out.append(w.finding("normal_ecg"))
    return out


def _ventricle_sentences(truth: PatientTruth, modality: str, w: _Writer) -> list[str]:
    """LV function, size, walls and wall motion as seen by echo or CMR (its own numbers)."""
    n = _numbers(truth.measurements[modality])
    ef, edv, wt = float(n["ef"]), float(n["edv"]), float(n.get("wt", 0))
    if ef < REDUCED_EF_PCT:
        out = [w.finding("reduced_ef", grade="severe" if ef < 30 else "moderate", **n)]
    else:
        out = [w.statement("ef_mild" if mildly_reduced_ef(ef) else "ef_normal", **n)]
    dilated = edv > LVEDV_UPPER_NORMAL_ML[truth.sex]
    out.append(w.finding("lv_dilation", **n) if dilated else w.statement("size_normal", **n))
    if "esv" in n and w.maybe(0.5):
        out.append(w.statement("esv", **n))
    if "wt" in n and (wt >= THICK_WALL_MM or w.maybe(0.6)):
        out.append(
            w.finding("thick_walls", **n)
            if wt >= THICK_WALL_MM
            else w.statement("walls_normal", **n)
        )
    wall = truth.heart.akinetic_wall
    if wall:
        out.append(w.statement(f"akinetic_{wall}"))
        if modality == "cmr":
            out.append(w.statement(f"lge_{wall}"))
    elif w.maybe(NEGATION_PROBABILITY):
        out.append(w.statement("motion_normal"))
    return out


def _echo_sentences(truth: PatientTruth, w: _Writer) -> list[str]:
    out = _ventricle_sentences(truth, "echo", w)
    n = _numbers(truth.measurements["echo"])
    if "la" in n and w.maybe(0.4):
        out.append(w.statement("la_volume", **n))
    return out


def _cmr_sentences(truth: PatientTruth, w: _Writer) -> list[str]:
    out = _ventricle_sentences(truth, "cmr", w)
    n = _numbers(truth.measurements["cmr"])
    if "mass" in n:
        out.append(w.statement("lv_mass", **n))
    if "rv" in n and w.maybe(0.5):
        out.append(w.statement("rvedv", **n))
    return out


def _ct_sentences(truth: PatientTruth, w: _Writer) -> list[str]:
    n = _numbers(truth.measurements["ct"])
    score = float(n["ag"])
    if score <= 0:
        return [w.statement("calcium_zero")]
    if score >= SEVERE_AGATSTON:
        return [w.finding("severe_calcium", **n)]
    cgrade = "minimal" if score < 10 else "mild" if score < 100 else "moderate_calcium"
    return [w.finding("coronary_calcium", cgrade=cgrade, **n)]


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
    names = [w.pick(w.book.finding_names[k]) for k in positive]
    if not names:
        names = [w.statement("impression_normal")]
    return _section(
        w.pick(w.book.impression),
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
    w = _Writer(lang, rng)
    sections = {
        m: _section(w.pick(w.book.headers[m]), _shuffled(SECTIONS[m](truth, w), rng), lang)
        for m in truth.modalities
    }
    parts = _shuffled(list(sections.values()), rng)
    if w.maybe(0.5):
        parts.append(_impression(truth, w))
    return "\n".join(parts), sections


def _shuffled(items: list[str], rng: np.random.Generator) -> list[str]:
    return [items[i] for i in rng.permutation(len(items))]
