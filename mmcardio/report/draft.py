"""Drafting a report for one study: `ReportDrafter(head_folder).draft(study, lang)` -> `ReportDraft`.

Before the LM writes a word, the head checks what it is given: the study's signals and
images (`quality`: flat line, noise, swapped leads, blank clips), modalities it was not
trained on, and how far each embedding lies from the training studies' (`EmbeddingOOD`).
Any failure abstains, naming the check and the value. Otherwise it gathers the evidence
(measurements, zero-shot findings, similar archived reports), generates, grounds every
sentence (`grounding`), and abstains still when nothing is left or the draft's mean
confidence is below the head's `min_confidence`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmcardio.errors import MMCardioError
from mmcardio.records import Measurement
from mmcardio.report.bundle import ReportBundle
from mmcardio.report.evidence import MODALITY_KEYS, STUDY_KEY, StudyEvidence
from mmcardio.report.grounding import DraftSentence, ground
from mmcardio.report.quality import check_study_inputs
from mmcardio.report.train import collate, encode_example, gather_evidence
from mmcardio.study import LANGUAGES, Study

BANNER = {"en": "DRAFT for physician review: generated from the study and similar reports; "
                "check every sentence against the images.",
          "zh": "草稿，须经医师审核：由本检查及相似报告生成，请逐句对照图像核实。"}
ABSTAIN = {"en": "No draft: the report head cannot draft this study.", "zh": "未生成草稿：无法为本检查起草报告。"}


@dataclass
class ReportDraft:
    """A draft (or an abstention) with its evidence and the log of every correction."""

    study_id: str
    lang: str
    abstained: bool
    reasons: list[str] = field(default_factory=list)
    sentences: list[DraftSentence] = field(default_factory=list)
    grounding_log: list[dict] = field(default_factory=list)
    confidence: float = 0.0
    generated: str = ""  # the LM's text before grounding
    evidence: dict = field(default_factory=dict)  # probabilities, retrieved ids, measurements used
    omitted: list[dict] = field(default_factory=list)  # classifier findings the draft does not state

    @property
    def sections(self) -> dict[str, list[DraftSentence]]:
        out: dict[str, list[DraftSentence]] = {}
        for s in self.sentences:
            out.setdefault(s.section, []).append(s)
        return out

    @property
    def body(self) -> str:
        """The draft's text without the banner (what scores compare with a report)."""
        sep = "" if self.lang == "zh" else " "  # sentences keep their own final punctuation
        lines = [(f"{title}: " if title else "") + sep.join(s.text for s in items)
                 for title, items in self.sections.items()]
        return "\n".join(lines)

    def text(self) -> str:
        """For people: the banner, then each section; review marks and confidences."""
        if self.abstained:
            return "\n".join([ABSTAIN[self.lang], *(f"- {r}" for r in self.reasons)])
        lines = [BANNER[self.lang]]
        for title, items in self.sections.items():
            lines.append(f"{title}:" if title else "")
            lines += [f"  {'[review] ' if s.review else ''}{s.text}  [{s.confidence:.2f}: {s.cited()}]"
                      for s in items]
        return "\n".join(line for line in lines if line)

    def to_json(self) -> dict:
        return {"study_id": self.study_id, "lang": self.lang, "status": "abstained" if self.abstained else "draft",
                "label": "draft for physician review", "reasons": self.reasons,
                "confidence": round(self.confidence, 3), "body": self.body,
                "sections": {t: [s.to_json() for s in items] for t, items in self.sections.items()},
                "grounding_log": self.grounding_log, "generated": self.generated, "evidence": self.evidence,
                "omitted": self.omitted}


class ReportDrafter:
    """A report head and the CardioCLIP it reads, ready to draft."""

    def __init__(self, head: str | Path, clip_model: str | Path | None = None, device: str = "cpu"):
        from mmcardio.processor import CardioProcessor
        from mmcardio.retrieval.store import check_same_model, load_model, model_fingerprint

        self.bundle = ReportBundle.load(head, device)
        self.clip_folder = Path(clip_model or self.bundle.clip_model)
        check_same_model({"fingerprint": self.bundle.clip_fingerprint}, model_fingerprint(self.clip_folder), head)
        self.clip = load_model(self.clip_folder, device)
        self.processor = CardioProcessor.from_model(self.clip)

    # -- evidence -------------------------------------------------------------------------
    def embed(self, records: Mapping) -> dict[str, np.ndarray]:
        inputs = self.processor.sample(self.processor.prepare_records(records))
        out = self.clip.encode_study(inputs)
        return {k: torch.nn.functional.normalize(v.float(), dim=-1).cpu().numpy()
                for k, v in out.items() if k in (*MODALITY_KEYS, STUDY_KEY)}

    def screen(self, study: Study, records: Mapping | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
        """Reasons not to draft, and the embeddings when there are none."""
        reasons = [f"{m} untrained_modality: this model has no {m} tower"
                   for m in study.modalities() if m not in self.clip.modalities]
        records = dict(records) if records is not None else self.processor.read_records(study)
        as_read = {k: [video for _, video in v] if k == "echo" else v for k, v in records.items()}
        reasons += [f"{q.modality} {q.code}: {q.message}" for q in check_study_inputs(as_read)]
        if reasons:
            return reasons, {}
        embeddings = self.embed(records)
        issues = [self.bundle.ood.check(key, vector) for key, vector in embeddings.items()]
        return [f"{q.modality} {q.code}: {q.message}" for q in issues if q is not None], embeddings

    def evidence(self, study: Study, embeddings: dict[str, np.ndarray],
                 measurements: Mapping[str, Measurement] | None = None) -> StudyEvidence:
        """The evidence of `study`: its measurements (the manifest's unless given), the
        classifier's findings and its archived neighbours (never itself or its patient)."""
        return gather_evidence(study, embeddings, self.bundle.classifier, self.bundle.archive,
                               self.bundle.config, measurements)

    # -- drafting -------------------------------------------------------------------------
    def draft(self, study: Study, lang: str = "en", records: Mapping | None = None,
              measurements: Mapping[str, Measurement] | None = None) -> ReportDraft:
        """Screen, gather evidence, generate and ground one study's draft."""
        reasons, embeddings = self.screen(study, records)
        if reasons:
            return ReportDraft(study.study_id, lang, True, reasons)
        return self.draft_many([self.evidence(study, embeddings, measurements)], lang)[0]

    @torch.no_grad()
    def draft_many(self, evidence: Sequence[StudyEvidence], lang: str, batch_size: int = 32) -> list[ReportDraft]:
        """Drafts of screened studies: every section of every study generated in batches,
        then each study's sections joined and grounded."""
        if lang not in LANGUAGES or lang not in self.bundle.config.languages:
            raise MMCardioError(f"the head drafts in {self.bundle.config.languages}; got {lang!r}", field="lang")
        head, cfg = self.bundle.head, self.bundle.config
        jobs = [(i, section) for i, ev in enumerate(evidence) for section in ev.sections()]
        texts: dict[tuple[int, str], str] = {}
        for start in range(0, len(jobs), batch_size):
            part = jobs[start: start + batch_size]
            examples = [encode_example(head.tokenizer, cfg, evidence[i], lang, section) for i, section in part]
            batch = {k: v.to(head.device) for k, v in collate(examples, head.tokenizer.pad_token_id, left=True).items()}
            ids, _ = head.generate(batch, cfg.max_target_tokens, cfg.repetition_penalty)
            texts |= {job: head.tokenizer.decode(row, skip_special_tokens=True).strip() for job, row in zip(part, ids)}
        return [self.finish(ev, lang, "\n".join(texts[(i, s)] for s in ev.sections() if texts[(i, s)]))
                for i, ev in enumerate(evidence)]

    def finish(self, ev: StudyEvidence, lang: str, generated: str) -> ReportDraft:
        """Ground the generated text; abstain when too little of it stands."""
        cfg, thresholds = self.bundle.config, self.bundle.classifier.thresholds
        grounded = ground(generated, lang, ev, thresholds, cfg.review_below)
        confidence = float(np.mean([s.confidence for s in grounded.sentences])) if grounded.sentences else 0.0
        draft = ReportDraft(ev.study_id, lang, False, [], grounded.sentences, grounded.log, confidence, generated,
                            _evidence_summary(ev), _omitted(ev, grounded.sentences))
        if not grounded.sentences:
            draft.abstained, draft.reasons = True, ["no generated sentence is supported by the evidence"]
        elif confidence < cfg.min_confidence:
            draft.abstained = True
            draft.reasons = [f"low confidence: mean sentence confidence {confidence:.2f} below {cfg.min_confidence}"]
        return draft


def _evidence_summary(ev: StudyEvidence) -> dict:
    return {"modalities": ev.modalities,
            "measurements": {k: {"value": m.value, "unit": m.unit} for k, m in ev.measurements.items()},
            "probabilities": {k: round(p, 3) for k, p in ev.probabilities.items()},
            "votes": {k: round(p, 3) for k, p in ev.votes.items()},
            "present": {k: v for k, v in ev.present.items()},
            "retrieved": {key: [{"study_id": n.study_id, "score": round(n.score, 4)} for n in found]
                          for key, found in ev.neighbours.items()}}


def _omitted(ev: StudyEvidence, sentences: Sequence[DraftSentence]) -> list[dict]:
    """Findings the classifier calls present that no kept sentence states."""
    stated = {e.get("finding") for s in sentences for e in s.evidence}
    return [{"finding": k, "score": round(ev.scores.get(k, ev.probabilities[k]), 3)}
            for k, present in ev.present.items() if present and k not in stated]
