"""Training the report head (`mmcardio report train`), with pretraining's accelerate conventions.

Each training study gives one example per language it has a report in (its report and the
manifest's `translations`): the prompt holds its measurements, the zero-shot findings of its
embeddings and the reports of its `k_retrieved` most similar training studies of other
patients; the target is its own report. OUT/checkpoints/step_N (written whole, then renamed),
metrics.jsonl, config.yaml, `--resume`, run.json; OUT/final is the report-head folder
(`bundle.ReportBundle`).

The studies are read as their embeddings in the store: a training study the store does not
hold (one `mmcardio embed` could not read, as the store's skipped.json says, or one never
embedded) is left out, logged and listed in run.json's "skipped_studies" (kept across
`--resume`), under the run's failure limit (`mmcardio.failures`; default 1%, more stops the run).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmcardio.config import save_config
from mmcardio.errors import ConfigError
from mmcardio.eval.prompts import FINDINGS
from mmcardio.failures import FAILED_FRACTION_KEY, log_failures, read_skipped, remember_skipped
from mmcardio.io import atomic_path, write_json
from mmcardio.report.bundle import ReportBundle
from mmcardio.report.config import ReportHeadConfig
from mmcardio.report.evidence import (
    MODALITY_KEYS,
    STUDY_KEY,
    Archive,
    FindingClassifier,
    StudyEvidence,
    prompt_text,
    report_sections,
    store_embeddings,
)
from mmcardio.report.labeller import measured_findings
from mmcardio.report.model import (
    IGNORE,
    PREFIX_KEYS,
    ReportHead,
    build_tiny_lm,
    load_pretrained_lm,
    train_tokenizer,
)
from mmcardio.report.quality import EmbeddingOOD
from mmcardio.study import Study, read_manifest
from mmcardio.train.checkpoint import TrainState, check_resume_config, resolve_resume, restore
from mmcardio.train.steps import epoch_loader, run_steps

RESUMABLE_CHANGES = ("log_every", "checkpoint_every", "keep_checkpoints", "num_workers", FAILED_FRACTION_KEY)


@dataclass
class Example:
    study_id: str
    lang: str
    section: str
    embeddings: np.ndarray  # [len(PREFIX_KEYS), D], zeros where absent
    present: np.ndarray  # [len(PREFIX_KEYS)] bool
    prompt_ids: list[int]
    target_ids: list[int]


def stacked_embeddings(embeddings: dict[str, np.ndarray], section: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The prefix inputs in PREFIX_KEYS order: the section's exam and the fused study (every
    exam for the impression); zeros and absent elsewhere."""
    wanted = [k for k in PREFIX_KEYS if k in embeddings and (section in (k, "impression") or k == STUDY_KEY)]
    vectors = np.stack([embeddings[k] if k in wanted else np.zeros(dim, np.float32) for k in PREFIX_KEYS])
    return vectors.astype(np.float32), np.array([k in wanted for k in PREFIX_KEYS])


def cut_tokens(tokenizer, text: str, n: int) -> str:
    """`text` cut to its first `n` tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= n else tokenizer.decode(ids[:n])


def encode_example(tokenizer, cfg: ReportHeadConfig, evidence: StudyEvidence, lang: str, section: str,
                   target: str = "") -> Example:
    """One section of one study in one language as token ids (no target when drafting); the
    prompt holds the same section of the study's nearest archived studies in that exam."""
    key = STUDY_KEY if section == "impression" else section
    retrieved = [cut_tokens(tokenizer, n.text(lang, section), cfg.retrieved_tokens)
                 for n in evidence.neighbours.get(key, [])]
    prompt = tokenizer(prompt_text(evidence, lang, section, retrieved), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"][:cfg.max_target_tokens] if target else []
    dim = next(iter(evidence.embeddings.values())).shape[0]
    vectors, present = stacked_embeddings(evidence.embeddings, section, dim)
    eos = [tokenizer.eos_token_id] if target else []
    return Example(evidence.study_id, lang, section, vectors, present, prompt, target_ids + eos)


def collate(examples: list[Example], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad to the longest; labels only on target tokens. Left padding for generation."""
    rows = [e.prompt_ids + e.target_ids for e in examples]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (e, row) in enumerate(zip(examples, rows)):
        at = width - len(row) if left else 0
        ids[i, at: at + len(row)] = torch.tensor(row)
        mask[i, at: at + len(row)] = 1
        labels[i, at + len(e.prompt_ids): at + len(row)] = torch.tensor(e.target_ids, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "embeddings": torch.from_numpy(np.stack([e.embeddings for e in examples])),
            "present": torch.from_numpy(np.stack([e.present for e in examples]))}


def archive_of(studies: list[Study], embeddings: dict[str, dict[str, np.ndarray]]) -> Archive:
    rows = [{"study_id": s.study_id, "patient_id": s.patient_id, "labels": dict(s.labels),
             "sections": {lang: report_sections(s, lang) for lang in s.languages()}} for s in studies]
    return Archive.build([embeddings[s.study_id] for s in studies], rows)


def gather_evidence(study: Study, embeddings: dict[str, np.ndarray], classifier: FindingClassifier,
                    archive: Archive, cfg: ReportHeadConfig, measurements: dict | None = None) -> StudyEvidence:
    """The evidence of one study: its measurements (the manifest's unless given), per finding
    the zero-shot probability and the share of the `k_vote` most similar archived studies
    that have it, and per embedding key its `k_retrieved` nearest; never a study of its own
    patient (itself included)."""
    exclude = archive.patients.get(study.patient_id, [])
    measurements = dict(study.measurements if measurements is None else measurements)
    modal = {m: v for m, v in embeddings.items() if m in MODALITY_KEYS}
    probabilities = classifier.probabilities(modal)
    found = {key: archive.nearest(key, vector, max(cfg.k_retrieved, cfg.k_vote), exclude)
             for key, vector in embeddings.items()}
    votes = {}
    for name in probabilities:
        key = next(m for m in FINDINGS[name].modalities if m in modal)
        said = [n.labels[name] for n in found[key][:cfg.k_vote] if name in n.labels]
        votes[name] = float(np.mean(said)) if said else probabilities[name]
    evidence = StudyEvidence(study.study_id, [m for m in MODALITY_KEYS if m in modal], embeddings, measurements,
                             study.sex, probabilities, {}, {k: v[:cfg.k_retrieved] for k, v in found.items()},
                             votes, {k: (probabilities[k] + votes[k]) / 2 for k in probabilities})
    decide(evidence, classifier)
    return evidence


def decide(evidence: StudyEvidence, classifier: FindingClassifier) -> None:
    """Which findings the draft may state as present: the measurements decide what they can
    (LVEF < 40% is reduced EF; the heart rate sets sinus brady- or tachycardia when the
    rhythm is not atrial fibrillation), the scores against their thresholds the rest; the
    ECG is normal when it shows none of the other ECG findings."""
    present = classifier.present(evidence.scores)
    sinus = "afib" in present and not present["afib"]
    evidence.measured = {k: v for k, v in measured_findings(evidence.measurements, evidence.sex, sinus=sinus).items()
                         if k in present}
    present |= {k: bool(v) for k, v in evidence.measured.items()}
    if "normal_ecg" in present:
        present["normal_ecg"] = not any(v for k, v in present.items() if k != "normal_ecg" and
                                        FINDINGS[k].modalities == FINDINGS["normal_ecg"].modalities)
    evidence.present = present


@dataclass
class Prepared:
    bundle: ReportBundle
    examples: list[Example]
    skipped: dict[str, str]  # {study_id: reason} of the training studies left out


def embedded_studies(studies: list[Study], store, store_path: str | Path) -> tuple[list[Study], dict[str, str]]:
    """The studies with a study embedding in `store`, and {study_id: reason} of the others."""
    held = set(store.meta.loc[store.meta["modality"] == STUDY_KEY, "study_id"])
    skipped = {}
    for study in studies:
        if study.study_id in held:
            continue
        why = store.skipped.get(study.study_id)
        skipped[study.study_id] = (f"no embedding in the store {store_path}: "
                                   + (f"`mmcardio embed` could not read it ({why})" if why
                                      else "never embedded (run `mmcardio embed` on this manifest)"))
    return [s for s in studies if s.study_id in held], skipped


def prepare(cfg: ReportHeadConfig, manifest: str | Path, out: Path) -> Prepared:
    """The classifier, archive, OOD check, tokenizer, LM and examples of the training studies."""
    from mmcardio.retrieval.store import (
        EmbeddingStore,
        check_same_model,
        load_model,
        model_fingerprint,
    )

    if not cfg.clip_model or not cfg.store:
        raise ConfigError("set clip_model (a CardioCLIP folder) and store (its `mmcardio embed` store)",
                          field="clip_model" if not cfg.clip_model else "store")
    fingerprint = model_fingerprint(cfg.clip_model)
    store = EmbeddingStore.load(cfg.store)
    check_same_model(store.model, fingerprint, cfg.store)
    studies = [s for s in read_manifest(manifest) if s.split in cfg.train_splits and s.report]
    read, skipped = embedded_studies(studies, store, cfg.store)
    cfg.failure_policy.check(skipped, len(studies), manifest)
    studies = read
    if len(studies) < cfg.batch_size:
        raise ConfigError(f"{len(studies)} reported studies in splits {cfg.train_splits}; expected at least "
                          "batch_size", manifest)
    embeddings = store_embeddings(store, [s.study_id for s in studies])
    classifier = FindingClassifier.from_model(load_model(cfg.clip_model))
    archive = archive_of(studies, embeddings)
    ood = fit_ood(cfg, embeddings)
    evidence = [gather_evidence(s, embeddings[s.study_id], classifier, archive, cfg) for s in studies]
    classifier.fit_thresholds([e.scores for e in evidence], [s.labels for s in studies])
    for e in evidence:
        decide(e, classifier)
    by_id = {e.study_id: e for e in evidence}
    targets = [(s, lang, section, text) for s in studies for lang in cfg.languages if lang in s.languages()
               for section, text in report_sections(s, lang).items() if section in by_id[s.study_id].sections()]
    skeletons = [prompt_text(by_id[s.study_id], lang, section, []) for s, lang, section, _ in targets[:1000]]
    head = _head(cfg, out, [t for *_, t in targets] + skeletons, store.model["dim"])
    examples = [encode_example(head.tokenizer, cfg, by_id[s.study_id], lang, section, text)
                for s, lang, section, text in targets]
    bundle = ReportBundle(cfg, head, classifier, archive, ood, str(cfg.clip_model), fingerprint["fingerprint"],
                          int(store.model["dim"]))
    return Prepared(bundle, examples, skipped)


def fit_ood(cfg: ReportHeadConfig, embeddings: dict[str, dict[str, np.ndarray]]) -> EmbeddingOOD:
    """The embedding OOD check of each key the training studies have, with `ood_k`
    neighbours (fewer when a key has fewer studies: a small cohort still gets a check)."""
    by_key = {key: np.stack([e[key] for e in embeddings.values() if key in e])
              for key in PREFIX_KEYS if any(key in e for e in embeddings.values())}
    k = min(cfg.ood_k, min(len(v) for v in by_key.values()) - 1)
    if k < 1:
        raise ConfigError("the embedding OOD check needs at least 2 training studies of each modality",
                          field="train_splits")
    return EmbeddingOOD.fit(by_key, k=k, quantile=cfg.ood_quantile, margin=cfg.ood_margin)


def _head(cfg: ReportHeadConfig, out: Path, texts: list[str], clip_dim: int) -> ReportHead:
    """The LM (tiny: its tokenizer learned from `texts` once and kept in OUT/tokenizer for resumes)."""
    if cfg.lm != "tiny":
        lm, tokenizer = load_pretrained_lm(cfg.lm, cfg.lora_rank, cfg.lora_targets)
        return ReportHead(lm, tokenizer, clip_dim, cfg.prefix_tokens)
    from transformers import AutoTokenizer

    folder = out / "tokenizer"
    if (folder / "tokenizer.json").is_file():  # written whole: a kill never leaves half of it
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    else:
        tokenizer = train_tokenizer(texts, cfg.tiny.vocab_size)
        with atomic_path(folder) as tmp:
            tokenizer.save_pretrained(tmp)
    lm = build_tiny_lm(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    return ReportHead(lm, tokenizer, clip_dim, cfg.prefix_tokens)


def run_report_training(cfg: ReportHeadConfig, manifest: str | Path, out: str | Path,
                        resume: str | bool | None = None, progress: bool = True) -> dict:
    """Train, checkpoint, save OUT/final and OUT/run.json; returns the run summary."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    resume_from = resolve_resume(resume, out)
    if resume_from is not None:
        check_resume_config(out, cfg, RESUMABLE_CHANGES)
    set_seed(cfg.seed)
    with accelerator.main_process_first():  # the main process learns and saves the tokenizer first
        prepared = prepare(cfg, manifest, out)
    if accelerator.is_main_process:
        log_failures(prepared.skipped, "report train")
        remember_skipped(out, prepared.skipped, resumed=resume_from is not None)
    head = prepared.bundle.head
    trainable = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    from transformers import get_cosine_schedule_with_warmup

    # a prepared scheduler steps once per process per optimizer step (accelerate's convention)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps * accelerator.num_processes,
                                                cfg.max_steps * accelerator.num_processes)
    model, optimizer, scheduler = accelerator.prepare(head, optimizer, scheduler)
    state = restore(accelerator, resume_from, out)
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
    state = _train(cfg, accelerator, (model, optimizer, scheduler), prepared.examples, state, out, progress)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        prepared.bundle.head = accelerator.unwrap_model(model)
        prepared.bundle.save(out / "final")
        write_json(out / "run.json", _summary(cfg, accelerator, prepared, state, out))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return json.loads((out / "run.json").read_text(encoding="utf-8"))


def _train(cfg: ReportHeadConfig, accelerator, run: tuple, examples: list[Example], state: TrainState,
           out: Path, progress: bool) -> TrainState:
    model, optimizer, scheduler = run
    collate_fn = functools.partial(collate, pad_id=accelerator.unwrap_model(model).tokenizer.pad_token_id)

    def step(batch: dict) -> torch.Tensor:
        with accelerator.autocast():
            loss = model({k: v.to(accelerator.device) for k, v in batch.items()})
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    return run_steps(cfg, accelerator, lambda st: epoch_loader(cfg, accelerator, examples, st, collate_fn=collate_fn),
                     step, scheduler, state, out, "report head", progress)


def _summary(cfg: ReportHeadConfig, accelerator, prepared: Prepared, state: TrainState, out: Path) -> dict:
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if ln]
    head = prepared.bundle.head
    return {"status": "finished", "lm": cfg.lm, "steps": state.step, "world_size": accelerator.num_processes,
            "examples": len(prepared.examples),
            "skipped_studies": read_skipped(out),  # this session's and the earlier ones'
            "languages": sorted({e.lang for e in prepared.examples}),
            "lm_parameters": sum(p.numel() for p in head.lm.parameters()),
            "trainable_parameters": sum(p.numel() for p in head.parameters() if p.requires_grad),
            "lora_parameters": sum(p.numel() for n, p in head.lm.named_parameters() if "lora_" in n),
            "thresholds": prepared.bundle.classifier.thresholds,
            "first_loss": lines[0]["loss"] if lines else None, "final_loss": lines[-1]["loss"] if lines else None,
            "seconds": round(state.seconds, 2), "final": str(out / "final")}
