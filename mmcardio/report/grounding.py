"""Grounding a generated report: every sentence tied to its evidence, or corrected, or removed.

For each sentence of the LM's text:
1. Numbers (`numbers.ground_numbers`): a number that disagrees with the measurement it states
   is replaced by the measured value; a number no measurement supports removes the sentence.
2. Findings (`labeller.find_mentions`): a finding the measurements decide (LVEF < 40% is
   reduced EF, ...; `labeller.measured_findings`) must agree with them; otherwise the
   evidence's call (`train.decide`: the mean of the zero-shot probability and the share of
   similar studies with the finding, against its fitted threshold) must agree with what the
   sentence states. A disagreement the retrieved studies back (at least half of them share
   the statement) keeps the sentence, marked for review; else the sentence is removed. A
   finding none of the study's modalities can show is removed.
3. A sentence with neither (a description such as "no regional wall motion abnormality") is
   backed by the retrieved studies whose reports say the same (numbers aside); with none it
   is marked for review.
A sentence's confidence is the least confidence of its evidence. Every correction, removal
and mark is written to the grounding log.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from mmcardio.eval.prompts import FINDINGS
from mmcardio.report.evidence import StudyEvidence
from mmcardio.report.labeller import find_mentions
from mmcardio.report.numbers import ground_numbers
from mmcardio.report.text import is_header, split_sentences

#: Confidence of a number that agrees with a measurement that carries none of its own.
REPORTED_CONFIDENCE = 1.0
#: Share of retrieved studies that must state a finding as the sentence does to keep a
#: sentence the classifier does not back (it is then marked for review).
NEIGHBOUR_SUPPORT = 0.5
BRACKETED = re.compile(r"\s*[(（][^()（）]*[)）]")
#: Clause breaks outside brackets (brackets are handled first): commas and semicolons.
CLAUSE_BREAK = re.compile(r"([,，;；、]\s*)")


@dataclass
class DraftSentence:
    """One sentence of a draft, with what supports it."""

    text: str
    section: str
    evidence: list[dict] = field(default_factory=list)
    confidence: float = 1.0
    review: bool = False

    def cited(self) -> str:
        """The evidence in a few words: "lvef 35 %; afib score 0.82; S00012, S00045"."""
        parts = []
        for e in self.evidence:
            if e["kind"] == "measurement":
                parts.append(f"{e['key']} {e['value']:g} {e['unit']}" if "key" in e else
                             f"{e['finding']} {'present' if e['measured'] else 'absent'} by measurement")
            elif e["kind"] == "classifier":
                parts.append(f"{e['finding']} score {e['score']:.2f}")
            elif e["kind"] == "retrieved":
                parts.append(", ".join(e["studies"]) or "no retrieved study")
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {"text": self.text, "section": self.section, "confidence": round(self.confidence, 3),
                "review": self.review, "evidence": self.evidence}


@dataclass
class Grounded:
    sentences: list[DraftSentence]
    log: list[dict]


def _normalised(text: str) -> str:
    return re.sub(r"[\W\d_]+", " ", text.lower()).strip()


def _neighbour_sentences(evidence: StudyEvidence, lang: str) -> list[set[str]]:
    return [{_normalised(s.text) for s in split_sentences(n.text(lang), lang)} for n in evidence.retrieved()]


def _neighbour_share(evidence: StudyEvidence, finding: str, status: int) -> tuple[float, list[str]]:
    """Share of retrieved studies whose labels state `finding` as `status`, and their ids."""
    retrieved = evidence.retrieved()
    agree = [n.study_id for n in retrieved if n.labels.get(finding) == status]
    return len(agree) / max(len(retrieved), 1), agree


def _margin(score: float, threshold: float, status: int) -> float:
    """Confidence in [0.5, 1] of a call the evidence agrees with, from the score's margin."""
    if status == 1:
        margin = (score - threshold) / max(1 - threshold, 1e-6)
    else:
        margin = (threshold - score) / max(threshold, 1e-6)
    return 0.5 + 0.5 * min(max(margin, 0.0), 1.0)


def check_finding(evidence: StudyEvidence, thresholds: dict[str, float], finding: str,
                  status: int) -> tuple[str, dict]:
    """("supported" | "review" | "unsupported", evidence entry) for a stated finding."""
    if not any(m in evidence.modalities for m in FINDINGS[finding].modalities) or finding not in evidence.present:
        return "unsupported", {"kind": "modality", "finding": finding,
                               "detail": f"no {'/'.join(FINDINGS[finding].modalities)} in the study"}
    measured = evidence.measured.get(finding)
    if measured is not None and status != -1:
        entry = {"kind": "measurement", "finding": finding, "measured": measured, "confidence": 1.0}
        return ("supported" if measured == status else "unsupported"), entry
    score, cut = evidence.scores[finding], thresholds.get(finding, 0.5)
    share, ids = _neighbour_share(evidence, finding, 1 if status == -1 else status)
    entry = {"kind": "classifier", "finding": finding, "probability": round(evidence.probabilities[finding], 3),
             "vote": round(evidence.votes[finding], 3), "score": round(score, 3), "threshold": round(cut, 3),
             "retrieved_agree": ids}
    if status != -1 and evidence.present[finding] == (status == 1):
        return "supported", {**entry, "confidence": round(_margin(score, cut, status), 3)}
    verdict = "review" if share >= NEIGHBOUR_SUPPORT or status == -1 else "unsupported"
    return verdict, {**entry, "confidence": round(0.5 * share, 3)}


def _number_evidence(evidence: StudyEvidence, keys: list[str]) -> list[dict]:
    out = []
    for key in keys:
        m = evidence.measurements[key]
        confidence = getattr(m, "confidence", None)
        out.append({"kind": "measurement", "key": key, "value": m.value, "unit": m.unit,
                    "source": getattr(m, "source", "") or "manifest",
                    "confidence": REPORTED_CONFIDENCE if confidence is None else confidence})
    return out


def ground(text: str, lang: str, evidence: StudyEvidence, thresholds: dict[str, float],
           review_below: float) -> Grounded:
    """The draft's sentences with evidence and confidence, and the log of what changed."""
    sentences, log, seen, section = [], [], set(), ""
    neighbour_sentences = _neighbour_sentences(evidence, lang)
    for raw in split_sentences(text, lang):
        original = raw.text.strip()
        if not original:
            continue
        if is_header(original):
            section = original.rstrip(":：").strip()
            continue
        if _normalised(original) in seen:
            log.append({"sentence": original, "action": "removed", "reason": "repeats an earlier sentence"})
            continue
        seen.add(_normalised(original))
        kept = _ground_sentence(original, section, lang, evidence, thresholds, neighbour_sentences, log)
        if kept is not None:
            kept.review = kept.review or kept.confidence < review_below
            sentences.append(kept)
    return Grounded(sentences, log)


def _ground_sentence(original: str, section: str, lang: str, evidence: StudyEvidence,
                     thresholds: dict[str, float], neighbour_sentences: list[set[str]],
                     log: list[dict]) -> DraftSentence | None:
    checked = ground_numbers(original, evidence.measurements, lang)
    if checked.text is None:
        checked = _cut_unsupported(original, evidence, lang, log)
    else:
        log += [{"sentence": original, **c} for c in checked.changes if c["action"] != "kept"]
    if checked.text is None:
        return None
    items, review = _number_evidence(evidence, list(checked.keys)), False
    for mention in _mentions(checked.text, section, lang):
        verdict, entry = check_finding(evidence, thresholds, mention.finding, mention.status)
        if not any(e.get("finding") == mention.finding for e in items):  # one entry per finding
            items.append({**entry, "stated": mention.status})
        if verdict == "unsupported":
            log.append({"sentence": checked.text, "action": "removed", "finding": mention.finding,
                        "stated": mention.status, "reason": _why(entry)})
            return None
        if verdict == "review":
            review = True
            log.append({"sentence": checked.text, "action": "marked for review", "finding": mention.finding,
                        "stated": mention.status, "reason": _why(entry)})
    if not items:
        items.append(_retrieved_evidence(checked.text, evidence, neighbour_sentences))
        if items[0]["confidence"] == 0:
            review = True
            log.append({"sentence": checked.text, "action": "marked for review",
                        "reason": "no measurement, finding or retrieved report supports it"})
    confidence = min(float(e.get("confidence", 1.0)) for e in items)
    return DraftSentence(checked.text, section, items, confidence, review)


def _cut_unsupported(sentence: str, evidence: StudyEvidence, lang: str, log: list[dict]):
    """The sentence without the brackets and clauses whose numbers no measurement supports
    ("LVH by voltage criteria (Sokolow-Lyon 4.1 mV)" -> "LVH by voltage criteria" when the
    Sokolow-Lyon index was not measured), re-checked; its text is None when nothing of
    substance is left, and the sentence is then removed."""
    def supported(piece: str) -> bool:
        return ground_numbers(piece, evidence.measurements, lang).text is not None

    kept = BRACKETED.sub(lambda m: m.group() if supported(m.group()) else "", sentence)
    parts = CLAUSE_BREAK.split(kept)
    clauses = [c for c in parts[0::2] if supported(c)]
    joined = ("，" if lang == "zh" else ", ").join(c.strip().rstrip(".。;；") for c in clauses if c.strip())
    end = sentence.rstrip()[-1:]
    joined += end if joined and end in ".。;；" else ""
    checked = ground_numbers(joined, evidence.measurements, lang)
    if checked.text is None or not _normalised(checked.text) or _normalised(checked.text) == _normalised(sentence):
        log += [{"sentence": sentence, **c} for c in ground_numbers(sentence, evidence.measurements, lang).changes
                if c["action"] != "kept"]
        return replace(checked, text=None)
    log.append({"sentence": sentence, "action": "cut", "kept": checked.text,
                "reason": "brackets or clauses stating numbers no measurement supports were cut"})
    log += [{"sentence": joined, **c} for c in checked.changes if c["action"] != "kept"]
    return checked


def _mentions(text: str, section: str, lang: str) -> list:
    """The findings a sentence states, read under its section header (the header tells an
    ECG's "LVH" from an echo's)."""
    prefix = f"{section}: " if section else ""
    return [m for m in find_mentions(prefix + text, lang) if m.start >= len(prefix)]


def _retrieved_evidence(text: str, evidence: StudyEvidence, neighbour_sentences: list[set[str]]) -> dict:
    key = _normalised(text)
    retrieved = evidence.retrieved()
    ids = [n.study_id for n, said in zip(retrieved, neighbour_sentences) if key in said]
    return {"kind": "retrieved", "studies": ids, "confidence": round(len(ids) / max(len(retrieved), 1), 3)}


def _why(entry: dict) -> str:
    if entry["kind"] == "modality":
        return entry["detail"]
    if entry["kind"] == "measurement":
        return f"the measurements say {entry['finding']} is {'present' if entry['measured'] else 'absent'}"
    return (f"evidence score {entry['score']} (zero-shot p={entry['probability']}, similar studies "
            f"{entry['vote']:.0%}) against threshold {entry['threshold']}; "
            f"{len(entry['retrieved_agree'])} retrieved studies agree")
