"""Scoring report drafts (`mmcardio eval report`) on a labelled split.

- Finding F1: the labeller (`report.labeller`) reads each draft; its positive findings are
  compared with the study's labels on every (study, finding) pair the labels state (micro
  F1, and macro over findings); a study the head declined counts as a draft stating nothing.
  The retrieval-only baseline copies the report of the most similar archived study and is
  scored the same way on the same studies.
- Numeric contradictions: every number left in a final draft is checked once more against
  the measurements (`numbers.ground_numbers`); any it would change or remove counts.
- Abstention: on the clean studies, and on the same studies with their ECG made a flat line,
  pure noise or its leads shuffled (and their echo clips blanked).
- BLEU-4 (sacrebleu; its Chinese tokenizer for ZH) and ROUGE-L (rouge-score; characters
  as tokens for ZH) of drafts against the reports.
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from mmcardio.records import ECG
from mmcardio.report.labeller import label_report
from mmcardio.report.numbers import ground_numbers
from mmcardio.study import Study

OOD_KINDS = ("flat_line", "noise", "shuffled_leads", "blank_clip")


def finding_f1(texts: Sequence[str], labels: Sequence[dict[str, int]], lang: str) -> dict:
    """Micro and macro F1 of the findings the labeller reads in `texts` against `labels`."""
    from sklearn.metrics import f1_score

    truth, pred, names = [], [], []
    for text, stated in zip(texts, labels):
        read = label_report(text, lang)
        for name, y in stated.items():
            truth.append(int(y))
            pred.append(int(read.get(name) == 1))
            names.append(name)
    truth, pred, names = np.array(truth), np.array(pred), np.array(names)
    per = {n: float(f1_score(truth[names == n], pred[names == n], zero_division=0))
           for n in sorted(set(names.tolist())) if truth[names == n].any()}
    return {"micro": float(f1_score(truth, pred, zero_division=0)) if len(truth) else None,
            "macro": float(np.mean(list(per.values()))) if per else None, "per_finding": per,
            "pairs": len(truth)}


class _Characters:
    """rouge-score tokenizer for Chinese: one token per character (its default drops them)."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def text_scores(hypotheses: Sequence[str], references: Sequence[str], lang: str) -> dict:
    import sacrebleu
    from rouge_score import rouge_scorer

    if not hypotheses:
        return {"bleu4": None, "rougeL": None}
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize="zh" if lang == "zh" else "13a")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=lang == "en",
                                      tokenizer=_Characters() if lang == "zh" else None)
    rouge = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)]
    return {"bleu4": round(bleu.score / 100, 4), "rougeL": round(float(np.mean(rouge)), 4) if rouge else None}


def numeric_contradictions(draft) -> list[dict]:
    """Numbers in a final draft that the measurements do not support."""
    found = []
    for sentence in draft.sentences:
        check = ground_numbers(sentence.text, draft_measurements(draft), draft.lang)
        found += [{"study_id": draft.study_id, "sentence": sentence.text, **c}
                  for c in check.changes if c["action"] != "kept"]
    return found


def draft_measurements(draft) -> dict:
    from mmcardio.records import Measurement

    return {k: Measurement(v["value"], v["unit"]) for k, v in draft.evidence.get("measurements", {}).items()}


def corrupted(records: dict, kind: str, rng: np.random.Generator) -> dict | None:
    """`records` with one input made unusable, or None when the study lacks that input."""
    ecg: ECG | None = records.get("ecg")
    if kind == "blank_clip":
        if "echo" not in records:
            return None
        blank = [(view, replace(v, frames=np.zeros_like(v.frames))) for view, v in records["echo"]]
        return {**records, "echo": blank}
    if ecg is None:
        return None
    if kind == "flat_line":
        signal = np.zeros_like(ecg.signal)
    elif kind == "noise":
        signal = rng.normal(0.0, 0.3, ecg.signal.shape).astype(ecg.signal.dtype)
    else:
        order = rng.permutation(len(ecg.signal))
        while np.array_equal(order, np.arange(len(order))):
            order = rng.permutation(len(ecg.signal))
        signal = ecg.signal[order]
    return {**records, "ecg": replace(ecg, signal=signal)}


def evaluate_drafts(drafter, studies: Sequence[Study], languages: Sequence[str], ood_studies: int = 20,
                    seed: int = 0, progress: bool = True) -> dict:
    """Every figure of the module docstring, on `studies` (a labelled split)."""
    from tqdm import tqdm

    start, rng = time.perf_counter(), np.random.default_rng(seed)
    screened, evidence, records_of = {}, {}, {}
    for i, study in enumerate(tqdm(studies, desc="screen", unit="study", disable=not progress)):
        records = drafter.processor.read_records(study)
        if i < ood_studies:  # kept to be corrupted below; the others are not held in memory
            records_of[study.study_id] = records
        reasons, embeddings = drafter.screen(study, records)
        screened[study.study_id] = reasons
        if not reasons:
            evidence[study.study_id] = drafter.evidence(study, embeddings)
    result = {"studies": len(studies), "languages": list(languages), "by_language": {}, "examples": {}}
    drafts_by_lang = {}
    for lang in languages:
        ready = [s for s in studies if s.study_id in evidence and lang in s.languages()]
        drafts = drafter.draft_many([evidence[s.study_id] for s in ready], lang)
        drafts_by_lang[lang] = drafts
        result["by_language"][lang] = _language_scores(ready, drafts, evidence, lang)
        kept = [d for d in drafts if not d.abstained]
        result["examples"][lang] = kept[0].to_json() if kept else None
    clean_total = sum(len([s for s in studies if lang in s.languages()]) for lang in languages)
    result["screened_out"] = {s.study_id: r for s, r in ((s, screened[s.study_id]) for s in studies) if r}
    clean_abstained = sum(len(screened[s.study_id]) > 0 for lang in languages for s in studies
                          if lang in s.languages())
    clean_abstained += sum(d.abstained for drafts in drafts_by_lang.values() for d in drafts)
    result["abstain_clean"] = clean_abstained / max(clean_total, 1)
    result["ood"] = _ood_abstention(drafter, studies[:ood_studies], records_of, languages[0], rng, progress)
    counts = [v for v in result["ood"].values() if v["inputs"]]
    result["abstain_ood"] = (sum(v["abstained"] for v in counts) / max(sum(v["inputs"] for v in counts), 1))
    result["numeric_contradictions"] = sum(v["numeric_contradictions"] for v in result["by_language"].values())
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def _language_scores(studies: Sequence[Study], drafts: Sequence, evidence: dict, lang: str) -> dict:
    """Scores of the drafts and of the retrieval-only baseline on the same studies; a draft
    the head declined counts as an empty text (it states nothing)."""
    references = [s.in_language(lang).report for s in studies]
    labels = [s.labels for s in studies]
    texts = ["" if d.abstained else d.body for d in drafts]
    nearest = [(evidence[s.study_id].neighbours.get("study", [])[:1] or [None])[0] for s in studies]
    baseline = [n.text(lang) if n else "" for n in nearest]
    kept = [d for d in drafts if not d.abstained]
    contradictions = [c for d in kept for c in numeric_contradictions(d)]
    return {"drafts": len(drafts), "abstained": len(drafts) - len(kept),
            "abstain_reasons": _reason_counts(d for d in drafts if d.abstained),
            "finding_f1": finding_f1(texts, labels, lang), "baseline_finding_f1": finding_f1(baseline, labels, lang),
            **text_scores(texts, references, lang), "baseline_text": text_scores(baseline, references, lang),
            "numeric_contradictions": len(contradictions), "contradiction_examples": contradictions[:5],
            "corrections": sum(len(d.grounding_log) for d in kept),
            "sentences_for_review": sum(s.review for d in kept for s in d.sentences),
            "sentences": sum(len(d.sentences) for d in kept)}


def _reason_counts(drafts) -> dict[str, int]:
    """How often each first reason (figures masked) made a draft abstain."""
    counts: dict[str, int] = {}
    for draft in drafts:
        for reason in draft.reasons[:1]:
            head = re.sub(r"\d+(?:\.\d+)?", "#", reason.split(" (")[0])[:80]
            counts[head] = counts.get(head, 0) + 1
    return counts


def _ood_abstention(drafter, studies: Sequence[Study], records_of: dict, lang: str,
                    rng: np.random.Generator, progress: bool) -> dict:
    from tqdm import tqdm

    out = {}
    for kind in OOD_KINDS:
        drafts = []
        for study in tqdm(studies, desc=f"abstain ({kind})", unit="study", disable=not progress):
            changed = corrupted(records_of[study.study_id], kind, rng)
            if changed is None:
                continue
            drafts.append(drafter.draft(study, lang, records=changed))
        abstained = sum(d.abstained for d in drafts)
        out[kind] = {"inputs": len(drafts), "abstained": abstained,
                     "share": abstained / len(drafts) if drafts else None, "reasons": _reason_counts(drafts)}
    return out
