"""What a draft may rest on: zero-shot finding probabilities, retrieved similar studies and
the measurements, gathered per study, and the prompt text the language model reads.

`FindingClassifier` is CardioCLIP's zero-shot classifier (each finding's positive and
negative prompt embeddings, softmax at the model's logit scale) with a decision threshold per
finding on its score (see `train.gather_evidence`), fitted on the training split's labels
(the F1-best cut: zero-shot probabilities are not calibrated). `Archive` is the reference
archive: the training studies' embeddings of each modality and fused (FAISS inner-product
indexes) with their report sections in each language.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from mmcardio.errors import MMCardioError
from mmcardio.eval.prompts import FINDINGS
from mmcardio.io import write_json
from mmcardio.records import Measurement

STUDY_KEY = "study"
MODALITY_KEYS = ("ecg", "echo", "cmr", "ct")


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


@dataclass
class FindingClassifier:
    """Zero-shot probability of each finding from the embeddings of the modalities that show
    it (the mean over those the study has), and the threshold that calls it present."""

    classes: dict[str, np.ndarray]  # finding -> [2, D] positive, negative class embeddings
    logit_scale: float
    thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model, lang: str = "en") -> FindingClassifier:
        """The classes of every finding of the prompt registry, embedded by `model`'s text tower."""
        from mmcardio.eval.zeroshot import encode_classes, model_logit_scale, numpy_encoder

        groups = {name: prompts.classes(lang) for name, prompts in FINDINGS.items()}
        classes = encode_classes(numpy_encoder(model.encode_text), groups)
        return cls({k: np.asarray(v, np.float32) for k, v in classes.items()}, model_logit_scale(model))

    def present(self, scores: Mapping[str, float]) -> dict[str, bool]:
        return {k: p >= self.thresholds.get(k, 0.5) for k, p in scores.items()}

    def probabilities(self, embeddings: Mapping[str, np.ndarray]) -> dict[str, float]:
        """finding -> P(present) for the findings the study's modalities can show."""
        out = {}
        for name, classes in self.classes.items():
            shown = [embeddings[m] for m in FINDINGS[name].modalities if m in embeddings]
            if shown:
                logits = self.logit_scale * (_l2(np.stack(shown)) @ classes.T)
                p = np.exp(logits - logits.max(axis=1, keepdims=True))
                out[name] = float((p[:, 0] / p.sum(axis=1)).mean())
        return out

    def fit_thresholds(self, scores: Sequence[Mapping[str, float]], labels: Sequence[Mapping[str, int]]) -> None:
        """The F1-best threshold of each finding's score on labelled studies (0.5 when a
        finding has no positive and negative example)."""
        from sklearn.metrics import precision_recall_curve

        for name in self.classes:
            pairs = [(p[name], y[name]) for p, y in zip(scores, labels) if name in p and name in y]
            y = np.array([v for _, v in pairs])
            if len(set(y.tolist())) < 2:
                self.thresholds[name] = 0.5
                continue
            precision, recall, cuts = precision_recall_curve(y, np.array([p for p, _ in pairs]))
            f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
            self.thresholds[name] = float(cuts[int(np.argmax(f1[:-1]))])

    def save(self, folder: Path) -> None:
        save_file({k: v for k, v in self.classes.items()}, str(folder / "classifier.safetensors"))
        write_json(folder / "classifier.json", {"logit_scale": self.logit_scale, "thresholds": self.thresholds})

    @classmethod
    def load(cls, folder: Path) -> FindingClassifier:
        info = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
        return cls(dict(load_file(str(folder / "classifier.safetensors"))), info["logit_scale"],
                   info["thresholds"])


#: Report sections a draft is written in, in order: one per exam, then the impression.
SECTIONS = (*MODALITY_KEYS, "impression")
#: The measurements each exam states (its section's prompt holds these only).
MEASURED_BY = {
    "ecg": ("heart_rate", "pr_interval", "qrs_duration", "qt_interval", "sokolow_lyon", "st_elevation"),
    "echo": ("lvef", "lvedv", "lvesv", "wall_thickness", "la_volume"),
    "cmr": ("lvef", "lvedv", "lvesv", "lv_mass", "wall_thickness", "rvedv"),
    "ct": ("agatston", "calcium_volume"),
    "impression": (),
}


def report_sections(study, lang: str) -> dict[str, str]:
    """The study's report in `lang` by section: each exam's own report (the manifest's
    `reports`, else the whole report cut at its section headers), and the rest as the impression."""
    from mmcardio.report.text import section_kind, split_sentences

    s = study.in_language(lang)
    exams = {m: s.reports[m].strip() for m in MODALITY_KEYS if s.reports.get(m, "").strip()}
    if exams:
        rest = s.report
        for text in exams.values():
            rest = rest.replace(text, "")
        return {**exams, **({"impression": rest.strip()} if rest.strip() else {})}
    out: dict[str, list[str]] = {}
    section = "impression"
    for sentence in split_sentences(s.report, lang):
        kind = section_kind(sentence.text)
        section = (kind if kind in MODALITY_KEYS else "impression") if kind else section
        out.setdefault(section, []).append(sentence.text)
    return {k: " ".join(v) for k, v in out.items()}


@dataclass
class Neighbour:
    study_id: str
    score: float
    sections: dict[str, dict[str, str]]  # language -> section -> text
    labels: dict[str, int]

    def text(self, lang: str, section: str | None = None) -> str:
        """One section in `lang` (else in the report's language), or the whole report."""
        by_section = self.sections.get(lang) or next(iter(self.sections.values()), {})
        if section is not None:
            return by_section.get(section, "")
        return "\n".join(by_section[k] for k in SECTIONS if by_section.get(k))


class Archive:
    """Reported studies to retrieve from: embeddings per key (each modality and the fused
    "study"), each in a FAISS inner-product index, and their report sections by language."""

    def __init__(self, vectors: dict[str, np.ndarray], members: dict[str, np.ndarray], rows: list[dict]):
        import faiss

        self.vectors = {k: _l2(np.asarray(v, np.float32)) for k, v in vectors.items()}
        self.members, self.rows = {k: np.asarray(v, np.int64) for k, v in members.items()}, rows
        self.patients: dict[str, list[str]] = {}
        for row in rows:
            self.patients.setdefault(row["patient_id"], []).append(row["study_id"])
        self.indexes = {}
        for key, v in self.vectors.items():
            self.indexes[key] = faiss.IndexFlatIP(v.shape[1])
            self.indexes[key].add(v)

    @classmethod
    def build(cls, embeddings: list[dict[str, np.ndarray]], rows: list[dict]) -> Archive:
        """From each row's embeddings {key: vector} (the keys a study has)."""
        keys = sorted({k for e in embeddings for k in e})
        members = {k: np.array([i for i, e in enumerate(embeddings) if k in e]) for k in keys}
        return cls({k: np.stack([embeddings[i][k] for i in members[k]]) for k in keys}, members, rows)

    def nearest(self, key: str, vector: np.ndarray, k: int, exclude: Sequence[str] = ()) -> list[Neighbour]:
        """The k archived studies most similar in `key`'s embedding, leaving out `exclude`
        (the study itself, or every study of its patient)."""
        if key not in self.indexes or k == 0:
            return []
        wanted = min(k + len(exclude), len(self.members[key]))
        scores, found = self.indexes[key].search(_l2(np.asarray(vector, np.float32))[None], wanted)
        rows = [(float(s), self.rows[self.members[key][i]]) for s, i in zip(scores[0], found[0]) if i >= 0]
        return [Neighbour(r["study_id"], s, r["sections"], r["labels"]) for s, r in rows
                if r["study_id"] not in exclude][:k]

    def save(self, folder: Path) -> None:
        save_file({**{f"vectors.{k}": v for k, v in self.vectors.items()},
                   **{f"members.{k}": v for k, v in self.members.items()}}, str(folder / "archive.safetensors"))
        lines = [json.dumps(r, ensure_ascii=False) for r in self.rows]
        (folder / "archive.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> Archive:
        rows = [json.loads(line) for line in (folder / "archive.jsonl").read_text(encoding="utf-8").splitlines()
                if line]
        arrays = load_file(str(folder / "archive.safetensors"))
        part = {kind: {n.split(".", 1)[1]: v for n, v in arrays.items() if n.startswith(kind + ".")}
                for kind in ("vectors", "members")}
        return cls(part["vectors"], part["members"], rows)


@dataclass
class StudyEvidence:
    """Everything a draft of one study may cite."""

    study_id: str
    modalities: list[str]
    embeddings: dict[str, np.ndarray]  # modality keys and "study", unit norm
    measurements: dict[str, Measurement]
    sex: str | None
    probabilities: dict[str, float]
    present: dict[str, bool]
    neighbours: dict[str, list[Neighbour]]  # by key: each modality's and the study's nearest
    votes: dict[str, float] = field(default_factory=dict)  # share of similar studies with each finding
    scores: dict[str, float] = field(default_factory=dict)  # mean of probability and vote
    measured: dict[str, int] = field(default_factory=dict)  # what the measurements decide

    def retrieved(self) -> list[Neighbour]:
        """Every retrieved study once, the fused study's nearest first."""
        seen, out = set(), []
        for key in (STUDY_KEY, *MODALITY_KEYS):
            for n in self.neighbours.get(key, []):
                if n.study_id not in seen:
                    seen.add(n.study_id)
                    out.append(n)
        return out

    def sections(self) -> list[str]:
        """The sections a draft of this study writes: its exams, then the impression."""
        return [*self.modalities, "impression"]


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value % 1 else str(int(value))


def prompt_text(evidence: StudyEvidence, lang: str, section: str, retrieved: Sequence[str]) -> str:
    """The LM's prompt for one section: language, section, the measurements that exam states
    (by key, in the key's unit), the findings it can show that the measurements or the
    classifier call present (all of them for the impression), and the same section of the
    retrieved reports (already cut to length), in a fixed language-neutral layout."""
    measured = "; ".join(f"{k} {_number(m.value)}" for k, m in sorted(evidence.measurements.items())
                         if k in MEASURED_BY[section])
    findings = ", ".join(sorted(k for k, v in evidence.present.items()
                                if v and (section == "impression" or section in FINDINGS[k].modalities)))
    lines = [f"<{lang}> section: {section}; exams: {' '.join(evidence.modalities)}; sex: {evidence.sex or '?'}",
             f"measurements: {measured or 'none'}", f"findings: {findings or 'none'}"]
    lines += [f"similar {i + 1}: {text}" for i, text in enumerate(retrieved)]
    return "\n".join(lines) + "\nreport:"


def store_embeddings(store, study_ids: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """study_id -> {key: unit vector} for the modality keys and "study" of an EmbeddingStore."""
    wanted, out = set(study_ids), {}
    for row, vector in zip(store.meta.itertuples(index=False), store.vectors):
        if row.study_id in wanted and row.modality in (*MODALITY_KEYS, STUDY_KEY):
            out.setdefault(row.study_id, {})[row.modality] = vector
    missing = [s for s in study_ids if STUDY_KEY not in out.get(s, {})]
    if missing:
        raise MMCardioError(f"{len(missing)} studies have no embedding in the store (first: {missing[:3]}); "
                            "run `mmcardio embed` on the manifest with the same model")
    return out
