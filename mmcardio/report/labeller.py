"""Findings stated in English or Chinese report text: a rule-based labeller after CheXpert's
(Irvin et al., AAAI 2019): mentions, then negation and uncertainty, then one label per finding.

1. Mentions: the lexicon's patterns (`lexicon/<lang>.yaml`: per finding its mentions, normal
   statements and unsettled grades, plus statements that are not one finding, such as "sinus
   rhythm", "right bundle branch block" or "old inferior infarct") are matched sentence by
   sentence (`text.split_sentences`); where matches overlap the longest wins.
2. Cues: a negation or uncertainty cue before or after a mention, in the same clause, decides
   its status (1 stated, 0 negated, -1 uncertain); "no LBBB, AF or LVH" negates all three.
   Normal statements ("normal LV size", "narrow QRS") state a finding as absent by themselves.
   ST elevation is placed by the lead names next to it (V1-V4 anterior, II, III, aVF
   inferior); "LVH" is a voltage finding in an ECG read and wall thickness in echo/CMR.
3. Numbers: guideline thresholds in the lexicon turn numbers into labels ("LVEF 35%",
   "钙化积分 512", "PR间期210 ms", a sinus rate of 52/min).
4. Aggregation (`label_report`), per finding: the worded mentions decide when there are any,
   else the numeric ones (explicit wording beats a number: "sinus bradycardia, rate 61");
   among them positive beats uncertain beats negative (CheXpert's rule). Then: severe
   coronary calcium implies coronary calcium, and no coronary calcium no severe calcium; a
   stated rhythm (AF, sinus bradycardia, sinus tachycardia) excludes the other two; a normal
   ECG is negative when any other ECG finding is positive or an abnormal ECG statement is
   made ("Q waves", "RBBB", "abnormal ECG"), positive when stated, and positive also when the
   text describes an ECG rhythm (sinus rhythm) and no ECG finding is positive or uncertain
   (CheXpert's "No Finding"). Findings the text does not state are left out.

`measured_findings` applies the same thresholds to measurements (the grounding checks drafts
with it). By hand because no library does this for ECG/echo/CT reports in both languages:
NegBio and negspacy are English-only, chest-radiograph-specific or need a parser model.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import yaml

from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.eval.prompts import FINDINGS
from mmcardio.report.text import Sentence, detect_language, section_kind, split_sentences
from mmcardio.study import LANGUAGES

#: The CheXpert policies for uncertain labels (U-Ignore, U-Ones, U-Zeros).
UNCERTAIN_POLICIES = {"ignore": None, "positive": 1, "negative": 0}
#: Findings read on the ECG, besides normal_ecg itself.
ECG_FINDINGS = tuple(n for n, f in FINDINGS.items() if f.modalities == ("ecg",) and n != "normal_ecg")
#: Rhythm findings that exclude each other.
RHYTHMS = ("afib", "sinus_bradycardia", "sinus_tachycardia")
_ALNUM = "A-Za-z0-9"
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_SECTION_CONTEXT = {"ecg": "ecg", "echo": "imaging", "cmr": "imaging", "ct": "imaging"}
_POLARITY_RANK = {"blocker": 0, "normal": 1, "finding": 2}


@dataclass(frozen=True)
class Mention:
    """A finding stated in the text: status 1 present, 0 absent, -1 uncertain; `cue` is the
    negation or uncertainty cue or the numeric rule that decided it ("" when stated plainly)."""

    finding: str
    status: int
    start: int
    end: int
    text: str
    cue: str = ""


# ---------------------------------------------------------------------------------- lexicon
@dataclass(frozen=True)
class Term:
    """One kind of statement: its patterns and what it says about the findings."""

    name: str
    pattern: re.Pattern
    asserts: Mapping[str, int]
    negated: Mapping[str, int]
    polarity: str = "finding"  # finding | normal (takes no cue) | blocker (says nothing)
    rhythm: str = ""  # sinus | non_sinus
    weak: bool = False  # dropped when the text states a non-sinus rhythm
    territory: str = ""  # elevation | depression
    context: Mapping[str, Mapping[str, int]] | None = None


@dataclass(frozen=True)
class Rule:
    """A guideline threshold: `positive` / `negative` as (operator, value) in the base unit."""

    finding: str
    positive: tuple[str, float] | None
    negative: tuple[str, float] | None
    sex: str | None = None

    def status(self, values: list[float]) -> tuple[int, str] | None:
        """(status, the comparison that decided it) when every value meets one side."""
        for status, test in ((1, self.positive), (0, self.negative)):
            if test and all(_OPS[test[0]](v, test[1]) for v in values):
                return status, f"{test[0]} {test[1]:g}"
        return None


@dataclass(frozen=True)
class Quantity:
    """A measurement written as a number: its keywords, units and thresholds."""

    name: str
    keywords: re.Pattern
    number: re.Pattern
    units: Mapping[str, float]  # lower-case unit -> factor to the base unit
    unit: str
    unit_required: bool
    unit_alone: bool
    requires: str
    plausible: tuple[float, float]
    rules: tuple[Rule, ...]

    def values(self, match: re.Match) -> list[float] | None:
        """The number (or both ends of a range) in the base unit, or None if it is not this quantity."""
        unit = match.group("unit")
        if unit is None and self.unit_required:
            return None
        factor = self.units[unit.lower()] if unit else 1.0
        values = [float(v.replace(",", "")) * factor for v in match.group("a", "b") if v is not None]
        low, high = self.plausible
        return values if all(low <= v <= high for v in values) else None


@dataclass(frozen=True)
class Scope:
    words: bool  # gaps counted in words (else in characters)
    pre_gap: int
    post_gap: int
    terminators: re.Pattern
    separators: re.Pattern
    list_end: re.Pattern | None


@dataclass(frozen=True)
class Lexicon:
    lang: str
    source: str
    terms: tuple[Term, ...]
    territories: Mapping[str, re.Pattern]
    contexts: Mapping[str, re.Pattern]
    cues: tuple[tuple[str, str, re.Pattern], ...]  # (negation | uncertainty, pre | post, pattern)
    scope: Scope
    quantities: tuple[Quantity, ...]
    keywords: re.Pattern  # every quantity's keywords: a number's window stops at the next
    window: int


@functools.cache
def lexicon(lang: str) -> Lexicon:
    """The lexicon of `lang` (one of `study.LANGUAGES`), read once from the package and checked:
    every finding of `FINDINGS` has mentions, every pattern compiles, and the numeric
    thresholds equal the English ones."""
    if lang not in LANGUAGES:
        raise MMCardioError(f"expected a language among {list(LANGUAGES)}, got {lang!r}", field="lang")
    file = resources.files(__package__) / "lexicon" / f"{lang}.yaml"
    lex = parse_lexicon(yaml.safe_load(file.read_text("utf-8")), str(file), lang)
    if lang != "en":
        _same_thresholds(lex, lexicon("en"))
    return lex


def _same_thresholds(lex: Lexicon, reference: Lexicon) -> None:
    ours, theirs = ({q.name: q.rules for q in x.quantities} for x in (lex, reference))
    for name in sorted(set(ours) | set(theirs)):
        if ours.get(name) != theirs.get(name):
            raise ConfigError(f"thresholds differ from {reference.source}: {ours.get(name)} against "
                              f"{theirs.get(name)}", lex.source, f"numeric.quantities.{name}.rules")


class _Reader:
    """Checks a lexicon mapping; errors name the file, the field and what was expected."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, expected: str, got: Any) -> ConfigError:
        shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:80] + "..."
        return ConfigError(f"expected {expected}, got {shown}", self.source, where)

    def mapping(self, value: Any, where: str, required: tuple = (), optional: tuple = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, "a mapping", value)
        missing = [k for k in required if k not in value]
        unknown = sorted(set(value) - {*required, *optional}) if required or optional else []
        if missing or unknown:
            said = ", ".join(x for x in (f"missing {missing}" if missing else "",
                                         f"unknown {unknown}" if unknown else "") if x)
            raise ConfigError(f"{said}; expected the keys {list(required)}"
                              + (f" and optionally {list(optional)}" if optional else ""), self.source, where)
        return value

    def texts(self, value: Any, where: str, empty: bool = False) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or not (value or empty):
            raise self.fail(where, "a list of regex texts", value)
        return value

    def regex(self, value: Any, where: str, bounded: bool = True) -> re.Pattern:
        """The patterns as one regex (longest first), each outside longer words when `bounded`."""
        for i, text in enumerate(self.texts(value, where)):
            try:
                re.compile(text)
            except re.error as err:
                raise self.fail(f"{where}[{i}]", f"a regular expression ({err})", text) from None
        body = "|".join(sorted(value, key=len, reverse=True))
        if bounded:
            body = (f"(?:(?<![{_ALNUM}])|(?![{_ALNUM}]))(?:{body})"
                    f"(?:(?![{_ALNUM}])|(?<![{_ALNUM}]))")
        return re.compile(body, re.IGNORECASE)

    def statuses(self, value: Any, where: str) -> dict[str, int]:
        self.mapping(value, where)
        for name, status in value.items():
            if name not in FINDINGS or status not in (1, 0, -1) or isinstance(status, bool):
                raise self.fail(f"{where}.{name}", f"a finding of {list(FINDINGS)} with 1, 0 or -1", status)
        return dict(value)

    def integer(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(where, "a non-negative integer", value)
        return value

    def choice(self, value: Any, where: str, choices: tuple) -> Any:
        if value not in choices:
            raise self.fail(where, f"one of {list(choices)}", value)
        return value


def parse_lexicon(data: Any, source: str = "<lexicon>", lang: str = "en") -> Lexicon:
    """A lexicon from its YAML mapping (see `lexicon/en.yaml`); raises ConfigError naming
    `source` and the field."""
    r = _Reader(source)
    top = r.mapping(data, "lexicon", ("findings", "terms", "territories", "contexts", "cues", "scope", "numeric"))
    terms = _finding_terms(r, top["findings"]) + _other_terms(r, top["terms"])
    territories = r.mapping(top["territories"], "territories", ("stemi_anterior", "stemi_inferior"))
    contexts = r.mapping(top["contexts"], "contexts", ("ecg", "imaging"))
    quantities, window = _quantities(r, top["numeric"])
    keywords = "|".join(f"(?:{q.keywords.pattern})" for q in quantities)
    return Lexicon(lang, source, tuple(terms),
                   {k: r.regex(v, f"territories.{k}") for k, v in territories.items()},
                   {k: r.regex(v, f"contexts.{k}") for k, v in contexts.items()},
                   _cue_patterns(r, top["cues"]), _scope(r, top["scope"]), quantities,
                   re.compile(keywords, re.IGNORECASE), window)


def _finding_terms(r: _Reader, value: Any) -> list[Term]:
    findings = r.mapping(value, "findings", tuple(FINDINGS))
    out = []
    for name, entry in findings.items():
        at = f"findings.{name}"
        r.mapping(entry, at, ("mentions",), ("normal", "unsettled", "rhythm"))
        rhythm = r.choice(entry.get("rhythm", ""), f"{at}.rhythm", ("", "sinus", "non_sinus"))
        out.append(Term(f"{name}.mentions", r.regex(entry["mentions"], f"{at}.mentions"), {name: 1},
                        {name: 0}, rhythm=rhythm))
        for kind, polarity, says in (("normal", "normal", {name: 0}), ("unsettled", "blocker", {})):
            if kind in entry:
                out.append(Term(f"{name}.{kind}", r.regex(entry[kind], f"{at}.{kind}"), says, {}, polarity))
    return out


def _other_terms(r: _Reader, value: Any) -> list[Term]:
    out = []
    for name, entry in r.mapping(value, "terms").items():
        at = f"terms.{name}"
        r.mapping(entry, at, ("patterns",), ("asserts", "negated", "polarity", "rhythm", "weak", "territory", "context"))
        if ("asserts" in entry) == ("context" in entry):
            raise r.fail(at, "either `asserts` or `context`", sorted(entry))
        asserts = r.statuses(entry.get("asserts", {}), f"{at}.asserts")
        context = None
        if "context" in entry:
            ctx = r.mapping(entry["context"], f"{at}.context", ("ecg", "imaging"))
            context = {k: r.statuses(v, f"{at}.context.{k}") for k, v in ctx.items()}
        negated = (r.statuses(entry["negated"], f"{at}.negated") if "negated" in entry
                   else {f: 0 for f, v in asserts.items() if v == 1})
        out.append(Term(name, r.regex(entry["patterns"], f"{at}.patterns"), asserts, negated,
                        r.choice(entry.get("polarity", "finding"), f"{at}.polarity", ("finding", "normal", "blocker")),
                        r.choice(entry.get("rhythm", ""), f"{at}.rhythm", ("", "sinus", "non_sinus")),
                        r.choice(entry.get("weak", False), f"{at}.weak", (True, False)),
                        r.choice(entry.get("territory", ""), f"{at}.territory", ("", "elevation", "depression")),
                        context))
    return out


def _cue_patterns(r: _Reader, value: Any) -> tuple[tuple[str, str, re.Pattern], ...]:
    cues = r.mapping(value, "cues", ("negation", "uncertainty"))
    out = []
    for kind, sides in cues.items():
        for side, patterns in r.mapping(sides, f"cues.{kind}", ("pre", "post")).items():
            out.append((kind, side, r.regex(patterns, f"cues.{kind}.{side}")))
    return tuple(out)


def _scope(r: _Reader, value: Any) -> Scope:
    s = r.mapping(value, "scope", ("unit", "pre_gap", "post_gap", "terminators", "separators", "list_end"))
    separators = r.regex(s["separators"], "scope.separators")
    list_end = r.texts(s["list_end"], "scope.list_end", empty=True)
    return Scope(r.choice(s["unit"], "scope.unit", ("words", "characters")) == "words",
                 r.integer(s["pre_gap"], "scope.pre_gap"), r.integer(s["post_gap"], "scope.post_gap"),
                 r.regex(s["terminators"], "scope.terminators"),
                 re.compile(rf"(?:\s*(?:{separators.pattern})\s*)*|\s*", re.IGNORECASE),
                 r.regex(list_end, "scope.list_end") if list_end else None)


def _quantities(r: _Reader, value: Any) -> tuple[tuple[Quantity, ...], int]:
    numeric = r.mapping(value, "numeric", ("window", "quantities"))
    out = []
    for name, q in r.mapping(numeric["quantities"], "numeric.quantities").items():
        at = f"numeric.quantities.{name}"
        r.mapping(q, at, ("keywords", "units", "unit_required", "plausible", "rules"), ("unit_alone", "requires"))
        units = r.mapping(q["units"], f"{at}.units")
        if not units or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in units.values()):
            raise r.fail(f"{at}.units", "a mapping {unit: factor to the base unit}", units)
        plausible = q["plausible"]
        if not (isinstance(plausible, list) and len(plausible) == 2
                and all(isinstance(v, (int, float)) for v in plausible)):
            raise r.fail(f"{at}.plausible", "[lowest, highest]", plausible)
        out.append(Quantity(name, r.regex(q["keywords"], f"{at}.keywords"), _number_pattern(units),
                            {str(u).lower(): float(f) for u, f in units.items()}, str(next(iter(units))),
                            r.choice(q["unit_required"], f"{at}.unit_required", (True, False)),
                            r.choice(q.get("unit_alone", False), f"{at}.unit_alone", (True, False)),
                            r.choice(q.get("requires", ""), f"{at}.requires", ("", "sinus")),
                            (float(plausible[0]), float(plausible[1])), _rules(r, q["rules"], f"{at}.rules")))
    return tuple(out), r.integer(numeric["window"], "numeric.window")


def _number_pattern(units: Mapping[str, float]) -> re.Pattern:
    """A number or range ("35", "55-60", "1,250", "0.21") and one of `units` after it; a
    number inside a word ("V1", "2D") or followed by other letters ("75th") is none."""
    unit = "|".join(re.escape(u) for u in sorted(units, key=len, reverse=True))
    value = r"\d{1,3}(?:,\d{3})+(?![\d.])|\d+(?:\.\d+)?"
    return re.compile(rf"(?<![{_ALNUM}.,])(?P<a>{value})(?:\s*(?:-|–|~|～|to|至)\s*(?P<b>{value}))?"
                      rf"(?:\s*(?P<unit>{unit})(?![A-Za-z]))?(?![{_ALNUM}])", re.IGNORECASE)


def _rules(r: _Reader, value: Any, where: str) -> tuple[Rule, ...]:
    if not isinstance(value, list) or not value:
        raise r.fail(where, "a list of rules", value)
    out = []
    for i, rule in enumerate(value):
        at = f"{where}[{i}]"
        r.mapping(rule, at, ("finding",), ("positive", "negative", "sex"))
        r.choice(rule["finding"], f"{at}.finding", tuple(FINDINGS))
        tests = [_comparison(r, rule.get(side), f"{at}.{side}") for side in ("positive", "negative")]
        if tests == [None, None]:
            raise r.fail(at, "a positive or a negative comparison", rule)
        out.append(Rule(rule["finding"], *tests, r.choice(rule.get("sex"), f"{at}.sex", (None, "F", "M"))))
    return tuple(out)


def _comparison(r: _Reader, value: Any, where: str) -> tuple[str, float] | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)\s*", str(value))
    if not match:
        raise r.fail(where, "a comparison such as '< 40' or '>= 52'", value)
    return match.group(1), float(match.group(2))


# ----------------------------------------------------------------------------- one sentence
@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    term: Term


@dataclass(frozen=True)
class _Cue:
    start: int
    end: int
    kind: str  # negation | uncertainty
    sides: frozenset[str]  # pre and/or post


@dataclass(frozen=True)
class _Found:
    """A mention with how it was found: its term (None for a number), whether it was asserted
    (no cue), and the exam its sentence is about."""

    mention: Mention
    term: Term | None
    asserted: bool
    context: str | None

    @property
    def worded(self) -> bool:
        return self.term is not None


def _matches(lex: Lexicon, text: str, sentences: list[Sentence]) -> list[list[_Match]]:
    """Per sentence, the matches of every term within it, overlaps resolved longest first."""
    inside = _sentence_of(sentences)
    grouped: list[list[_Match]] = [[] for _ in sentences]
    for term in lex.terms:
        for m in term.pattern.finditer(text):
            where = inside(m.start())
            if m.end() > m.start() and where is not None and where == inside(m.end() - 1):
                grouped[where].append(_Match(m.start(), m.end(), term))
    for found in grouped:
        found.sort(key=lambda m: (m.start - m.end, m.start, _POLARITY_RANK[m.term.polarity]))
    return [sorted(_non_overlapping(found), key=lambda m: m.start) for found in grouped]


def _non_overlapping(items: list) -> list:
    taken: list = []
    for item in items:
        if all(item.end <= o.start or item.start >= o.end for o in taken):
            taken.append(item)
    return taken


def _sentence_of(sentences: list[Sentence]):
    """A function: text position -> index of the sentence holding it, or None."""
    starts = [s.start for s in sentences]

    def index(pos: int) -> int | None:
        i = bisect.bisect_right(starts, pos) - 1
        return i if i >= 0 and pos < sentences[i].end else None
    return index


def _cues(lex: Lexicon, text: str, sentences: list[Sentence], matches: list[list[_Match]]) -> list[list[_Cue]]:
    """Per sentence, the cues outside every mention, overlaps resolved longest first
    ("cannot be ruled out" is one cue, not "ruled out")."""
    inside = _sentence_of(sentences)
    spans: list[dict[tuple[int, int, str], set[str]]] = [{} for _ in sentences]
    for kind, side, pattern in lex.cues:
        for m in pattern.finditer(text):
            where = inside(m.start())
            if m.end() > m.start() and where is not None and all(
                    m.end() <= x.start or m.start() >= x.end for x in matches[where]):
                spans[where].setdefault((m.start(), m.end(), kind), set()).add(side)
    out = []
    for found in spans:
        cues = [_Cue(s, e, k, frozenset(sides)) for (s, e, k), sides in found.items()]
        cues.sort(key=lambda c: (c.start - c.end, c.start, c.kind != "uncertainty"))
        out.append(sorted(_non_overlapping(cues), key=lambda c: c.start))
    return out


def _gap_ok(scope: Scope, gap: str, limit: int, comma: bool = False) -> bool:
    """A cue reaches across `gap`: short, no terminator, and no comma unless `comma` (a post
    cue: "LVH, may be normal variant")."""
    if scope.terminators.search(gap) or re.search(r"[，\n]" if comma else r"[,，\n]", gap):
        return False
    size = len(re.findall(r"[A-Za-z0-9]+", gap)) if scope.words else len(re.sub(r"\s", "", gap))
    return size <= limit


def _chain(scope: Scope, text: str, matches: list[_Match], i: int, step: int) -> list[int]:
    """Match `i` and the matches listed with it going in direction `step` ("A, B or C")."""
    chain, j = [i], i
    while 0 <= j + step < len(matches) and matches[j + step].term.polarity != "normal":
        a, b = sorted((matches[j], matches[j + step]), key=lambda m: m.start)
        if not scope.separators.fullmatch(text[a.end:b.start]):
            break
        j += step
        chain.append(j)
    chain.sort()
    return _list_part(scope, text, matches, chain, near_start=step > 0)


def _list_part(scope: Scope, text: str, matches: list[_Match], chain: list[int], near_start: bool) -> list[int]:
    """With a comma list, only the items up to the last one joined by "or"/"and" belong to it:
    "no LBBB, sinus tachycardia" lists nothing. `near_start`: the cue is before the list."""
    if scope.list_end is None or len(chain) == 1:
        return chain
    seps = [text[matches[a].end:matches[b].start] for a, b in itertools.pairwise(chain)]
    joined = [n for n, s in enumerate(seps) if scope.list_end.search(s)]
    bare = [n for n, s in enumerate(seps) if "," in s and n > max(joined, default=-1)]
    if not bare:
        return chain
    return chain[:bare[0] + 1] if near_start else chain[bare[-1] + 1:]


def _cue_targets(scope: Scope, text: str, matches: list[_Match], cue: _Cue) -> list[int]:
    """The matches a cue reaches: forward when it can come first ("possible AF") and a finding
    follows it, else backward when it can come last ("AF?", "LBBB, not excluded")."""
    if "pre" in cue.sides:
        after = [i for i, m in enumerate(matches) if m.start >= cue.end]
        if after and matches[after[0]].term.polarity != "normal" and _gap_ok(
                scope, text[cue.end:matches[after[0]].start], scope.pre_gap):
            return _chain(scope, text, matches, after[0], 1)
    if "post" in cue.sides:
        before = [i for i, m in enumerate(matches) if m.end <= cue.start]
        if before and matches[before[-1]].term.polarity != "normal" and _gap_ok(
                scope, text[matches[before[-1]].end:cue.start], scope.post_gap, comma=True):
            return _chain(scope, text, matches, before[-1], -1)
    return []


def _statuses(lex: Lexicon, text: str, matches: list[_Match], cues: list[_Cue]) -> list[_Cue | None]:
    """Per match, the cue that decides it (uncertainty over negation) or None."""
    decided: list[_Cue | None] = [None] * len(matches)
    for cue in cues:
        for i in _cue_targets(lex.scope, text, matches, cue):
            if decided[i] is None or (decided[i].kind == "negation" and cue.kind == "uncertainty"):
                decided[i] = cue
    return decided


def _places(lex: Lexicon, text: str, sentence: Sentence, matches: list[_Match]) -> dict[int, set[str]]:
    """Per ST-change match, the territories whose lead names are nearest to it."""
    changes = [i for i, m in enumerate(matches) if m.term.territory]
    out: dict[int, set[str]] = {}
    if not changes:
        return out
    for finding, pattern in lex.territories.items():
        for t in pattern.finditer(text, sentence.start, sentence.end):
            if any(t.start() < m.end and m.start < t.end() for m in matches):
                continue
            nearest = min(changes, key=lambda i: max(matches[i].start - t.end(), t.start() - matches[i].end))
            out.setdefault(nearest, set()).add(finding)
    return out


def _resolved(term: Term, places: set[str], context: str | None) -> Term:
    """The term with its context and territories applied."""
    if term.context is not None:
        asserts = dict(term.context.get(context, {})) if context else {}
        term = replace(term, asserts=asserts, negated={f: 0 for f, v in asserts.items() if v == 1}, context=None)
    if term.territory == "elevation" and places:
        term = replace(term, asserts={**term.asserts, **{f: 1 for f in places}}, negated={f: 0 for f in places})
    return term


def _worded(text: str, match: _Match, term: Term, cue: _Cue | None, context: str | None) -> list[_Found]:
    if cue is None:
        values = term.asserts
    elif cue.kind == "negation":
        values = term.negated
    else:
        values = {f: -1 for f in term.asserts}
    said = text[cue.start:cue.end] if cue else ""
    return [_Found(Mention(f, v, match.start, match.end, text[match.start:match.end], said), term,
                   cue is None, context) for f, v in values.items()]


def _numeric(lex: Lexicon, text: str, sentence: Sentence, matches: list[_Match], decided: list,
             context: str | None) -> list[_Found]:
    asserted = [m.term.rhythm for m, cue in zip(matches, decided) if cue is None]
    sinus = "sinus" in asserted and "non_sinus" not in asserted
    out = []
    for q, kw_start, number, values in _readings(lex, text, sentence, matches, sinus):
        for rule in q.rules:
            decision = None if rule.sex else rule.status(values)
            if decision:
                cue = f"{q.name} {'-'.join(f'{v:g}' for v in values)} {q.unit} {decision[1]}"
                out.append(_Found(Mention(rule.finding, decision[0], kw_start, number.end(),
                                          text[kw_start:number.end()], cue), None, True, context))
    return out


def _readings(lex: Lexicon, text: str, sentence: Sentence, matches: list[_Match], sinus: bool):
    """(quantity, where it starts, the number match, values) of the numbers in a sentence."""
    stops = sorted({m.start() for m in lex.keywords.finditer(text, sentence.start, sentence.end)}
                   | {m.start for m in matches})
    for q in lex.quantities:
        if q.requires == "sinus" and not sinus:
            continue
        read = set()
        for kw in q.keywords.finditer(text, sentence.start, sentence.end):
            end = min([s for s in stops if s >= kw.end()] + [kw.end() + lex.window, sentence.end])
            hit = _number_after(q, text, kw.end(), end, sentence.end)
            if hit:
                read.add(hit[0].start())
                yield q, kw.start(), *hit
        if q.unit_alone:
            for number in q.number.finditer(text, sentence.start, sentence.end):
                values = q.values(number) if number.group("unit") else None
                if values and number.start() not in read:
                    yield q, number.start(), number, values


def _number_after(q: Quantity, text: str, start: int, window_end: int, sentence_end: int):
    """The first number of `q` that starts before `window_end`, with its values."""
    for number in q.number.finditer(text, start, sentence_end):
        if number.start() >= window_end:
            return None
        values = q.values(number)
        if values:
            return number, values
    return None


# --------------------------------------------------------------------------------- the text
def _sections(sentences: list[Sentence]) -> tuple[list[Sentence], list[str | None]]:
    """The sentences that are not headers, and the exam of the section each is in."""
    body, sections, kind = [], [], None
    for s in sentences:
        header = section_kind(s.text)
        if header is None:
            body.append(s)
            sections.append(kind)
        else:
            kind = _SECTION_CONTEXT.get(header)
    return body, sections


def _exam_of(finding: str) -> str:
    return "ecg" if FINDINGS[finding].modalities == ("ecg",) else "imaging"


def _contexts(lex: Lexicon, body: list[Sentence], sections: list[str | None],
              matches: list[list[_Match]]) -> list[str | None]:
    """The exam each sentence is about ("ecg" or "imaging"): its section's, else that of its
    words and of the findings it states when they agree, else the one exam of the whole text."""
    kinds = []
    for s, mine in zip(body, matches):
        words = {k for k, p in lex.contexts.items() if p.search(s.text)}
        kinds.append(words | {_exam_of(f) for m in mine for f in m.term.asserts})
    headed = {k for k in sections if k}
    whole = headed or (set().union(*kinds) if kinds else set())
    fallback = next(iter(whole)) if len(whole) == 1 else None
    return [section or (next(iter(k)) if len(k) == 1 else fallback) for section, k in zip(sections, kinds)]


def _found(text: str, lang: str) -> list[_Found]:
    """Every mention in `text`, worded and numeric, before aggregation."""
    lex = lexicon(lang)
    body, sections = _sections(split_sentences(text, lang))
    matches = _matches(lex, text, body)
    contexts = _contexts(lex, body, sections, matches)
    out = []
    for sentence, context, mine, cues in zip(body, contexts, matches, _cues(lex, text, body, matches)):
        decided = _statuses(lex, text, mine, cues)
        places = _places(lex, text, sentence, mine)
        for i, (match, cue) in enumerate(zip(mine, decided)):
            out += _worded(text, match, _resolved(match.term, places.get(i, set()), context), cue, context)
        out += _numeric(lex, text, sentence, mine, decided, context)
    non_sinus = any(f.asserted and f.term is not None and f.term.rhythm == "non_sinus" for f in out)
    return [f for f in out if not (non_sinus and f.term is not None and f.term.weak)]


def find_mentions(text: str, lang: str | None = None) -> list[Mention]:
    """The findings `text` states, one Mention per (statement, finding), in text order."""
    found = _found(text, lang or detect_language(text))
    return sorted((f.mention for f in found), key=lambda m: (m.start, m.end))


def _combine(statuses: list[int]) -> int | None:
    """CheXpert's aggregation: positive beats uncertain beats negative."""
    return next((s for s in (1, -1, 0) if s in statuses), None)


def label_report(text: str, lang: str | None = None) -> dict[str, int]:
    """{finding: 1 | 0 | -1} for the findings `text` states (see the module's aggregation rules)."""
    found = _found(text, lang or detect_language(text))
    labels = {}
    for name in FINDINGS:
        mine = [f for f in found if f.mention.finding == name]
        status = _combine([f.mention.status for f in mine if f.worded] or [f.mention.status for f in mine])
        if status is not None and name != "normal_ecg":
            labels[name] = status
    _imply(labels)
    normal = _normal_ecg(found, labels)
    if normal is not None:
        labels["normal_ecg"] = normal
    return {name: labels[name] for name in FINDINGS if name in labels}


def _imply(labels: dict[str, int]) -> None:
    if labels.get("severe_calcium") == 1:
        labels["coronary_calcium"] = 1
    if labels.get("coronary_calcium") == 0:
        labels.setdefault("severe_calcium", 0)
    for rhythm in RHYTHMS:
        if labels.get(rhythm) == 1:
            for other in RHYTHMS:
                labels.setdefault(other, 0)


def _normal_ecg(found: list[_Found], labels: dict[str, int]) -> int | None:
    said = [f.mention.status for f in found if f.mention.finding == "normal_ecg"]
    ecg = [labels.get(name) for name in ECG_FINDINGS]
    if 1 in ecg or 0 in said:
        return 0
    if said:
        return _combine(said)
    rhythm = any(f.asserted and f.term is not None and f.term.rhythm == "sinus" and f.context != "imaging"
                 for f in found)
    return 1 if rhythm and -1 not in ecg else None


def labels_for_manifest(labels: Mapping[str, int], uncertain: str = "ignore") -> dict[str, int]:
    """Labels as a manifest holds them (0 or 1): uncertain ones dropped ("ignore", CheXpert's
    U-Ignore), read as present ("positive", U-Ones) or as absent ("negative", U-Zeros)."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise MMCardioError(f"expected one of {list(UNCERTAIN_POLICIES)}, got {uncertain!r}", field="uncertain")
    value = UNCERTAIN_POLICIES[uncertain]
    return {name: (value if status == -1 else int(status)) for name, status in labels.items()
            if status != -1 or value is not None}


def measured_findings(measurements: Mapping[str, Any], sex: str | None = None,
                      sinus: bool = False) -> dict[str, int]:
    """{finding: 0 | 1} that measurements ({key: Measurement}, keys such as "lvef",
    "wall_thickness", "agatston", "pr_interval", "lvedv") decide by the lexicon's thresholds;
    sex-specific ones (LVEDV) only when `sex` is known, and the heart rate's (sinus
    bradycardia, tachycardia) only when the rhythm is known to be sinus. A measurement in a
    unit the lexicon does not list decides nothing."""
    out: dict[str, int] = {}
    for q in lexicon("en").quantities:
        m = measurements.get(q.name)
        factor = q.units.get(str(getattr(m, "unit", "")).lower()) if m is not None else None
        if factor is None or (q.requires and not (q.requires == "sinus" and sinus)):
            continue
        for rule in q.rules:
            decision = rule.status([float(m.value) * factor]) if rule.sex in (None, sex) else None
            if decision:
                out[rule.finding] = decision[0]
    if out.get("severe_calcium") == 1:
        out["coronary_calcium"] = 1
    return out
