"""Zero-shot evaluation of a CardioCLIP model on a manifest.

Classification: per finding, positive and negative prompts are embedded, averaged and
renormalised (as open_clip's `build_zero_shot_classifier`); a study's probability is the softmax
over the two class logits with the model's logit scale. Regression (EchoCLIP-style): similarity
to value prompts over a grid, softmax-weighted (or top-k) mean of the grid values. Retrieval:
report text <-> study embeddings both directions, and finding queries ("atrial fibrillation")
embedded as search queries (`CardioCLIP.encode_query`). Plus a linear-probe baseline, calibration,
subgroup AUROC by sex and age band, and the Chinese-vs-English gap. The findings and value
prompts are a `PromptSet` passed in (`prompts.default_prompts()` unless the user gives a file);
the Chinese and English report pairs come from the manifest's reports and `translations`.

Outputs in the output folder: metrics.json, report.md and PNG plots.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from mmcardio.errors import MMCardioError
from mmcardio.eval import metrics as M
from mmcardio.eval.prompts import PromptSet, default_prompts
from mmcardio.eval.retrieval import (
    bilingual_reports,
    finding_queries,
    language_gap,
    retrieval_by_modality,
)
from mmcardio.io import write_json
from mmcardio.retrieval.store import (
    EmbeddingStore,
    embed_manifest,
    labelled,
    load_model,
    measurements_of,
)
from mmcardio.study import LANGUAGES, read_manifest

if TYPE_CHECKING:
    from accelerate import Accelerator

TextEncoder = Callable[[list[str]], np.ndarray]


# --- zero-shot heads -------------------------------------------------------------------------

def class_embeddings(encode_text: TextEncoder, classes: Sequence[Sequence[str]],
                     batch_size: int = 256) -> np.ndarray:
    """[C, D] class embeddings: each class's prompt embeddings L2-normalised, averaged and
    renormalised. Done here rather than with open_clip's build_zero_shot_classifier because
    our classes have their own prompt lists of different lengths, not shared templates."""
    flat = [prompt for prompts in classes for prompt in prompts]
    chunks = [encode_text(flat[i:i + batch_size]) for i in range(0, len(flat), batch_size)]
    emb = _l2(np.concatenate(chunks))
    bounds = np.cumsum([0] + [len(p) for p in classes])
    means = np.stack([emb[a:b].mean(axis=0) for a, b in itertools.pairwise(bounds)])
    return _l2(means)


def encode_classes(encode_text: TextEncoder, groups: Mapping[Hashable, Sequence[Sequence[str]]],
                   batch_size: int = 256) -> dict[Hashable, np.ndarray]:
    """`class_embeddings` of several classifiers (key -> classes) in one batched pass."""
    keys = list(groups)
    emb = class_embeddings(encode_text, [c for k in keys for c in groups[k]], batch_size)
    bounds = np.cumsum([0] + [len(groups[k]) for k in keys])
    return {k: emb[a:b] for k, (a, b) in zip(keys, itertools.pairwise(bounds))}


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def class_probabilities(vectors: np.ndarray, classes: np.ndarray, logit_scale: float) -> np.ndarray:
    """[n, C] softmax over `logit_scale * vectors @ classes.T`."""
    logits = torch.from_numpy(logit_scale * (vectors @ classes.T))
    return logits.softmax(dim=-1).numpy()


def predict_values(vectors: np.ndarray, value_classes: np.ndarray, grid: Sequence[float],
                   logit_scale: float, top_k: int | None = None) -> np.ndarray:
    """Estimate a measurement per study from its similarity to value prompts: the
    softmax-weighted mean of the grid (default) or the plain mean of the top-k values."""
    grid = np.asarray(grid, dtype=float)
    sims = vectors @ value_classes.T
    if top_k:
        return grid[np.argsort(-sims, axis=1, kind="stable")[:, :top_k]].mean(axis=1)
    weights = class_probabilities(vectors, value_classes, logit_scale)
    return weights @ grid


# --- evaluation context ----------------------------------------------------------------------

@dataclass
class EvalContext:
    """What every evaluation step needs: the embeddings, the split, a text encoder (of
    prompts and reports), the prompt set, and the encoder of search queries (default: the same)."""

    store: EmbeddingStore
    split: str
    encode_text: TextEncoder
    logit_scale: float
    prompts: PromptSet
    n_bootstrap: int = 1000
    seed: int = 0
    ece_bins: int = 10
    progress: bool = False
    heads: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    encode_query: TextEncoder | None = None

    def keys_for(self, modalities: Sequence[str]) -> list[str]:
        """Store keys among `modalities`, plus the fused "study" embedding."""
        return [k for k in self.store.keys if k in modalities or k == "study"]

    def build_heads(self, languages: Sequence[str] = LANGUAGES) -> None:
        """Class embeddings of every finding and value target per language, from one batched
        pass over all prompts (a text-tower call per finding costs far more)."""
        groups = {(lang, p.name): p.classes(lang) for lang in languages for p in self.prompts.findings.values()}
        groups |= {(lang, v.measurement): v.classes(lang) for lang in languages
                   for v in self.prompts.values.values()}
        self.heads = encode_classes(self.encode_text, groups)


@dataclass
class Curve:
    """Labels and zero-shot probabilities of one finding on one modality in one language."""

    lang: str
    finding: str
    modality: str
    y: np.ndarray
    prob: np.ndarray
    meta: pd.DataFrame


def classify(ctx: EvalContext, lang: str) -> tuple[list[dict], list[Curve], list[dict]]:
    """Zero-shot AUROC/AUPRC (bootstrap CIs) and ECE per finding and modality."""
    rows, curves, skipped = [], [], []
    for prompts in tqdm(ctx.prompts.findings.values(), desc=f"zero-shot ({lang})", unit="finding",
                        disable=not ctx.progress):
        classes = ctx.heads[(lang, prompts.name)]
        for key in ctx.keys_for(prompts.modalities):
            vectors, y, meta = labelled(*ctx.store.select(key, split=ctx.split), prompts.name)
            if not M.has_both_classes(y):
                skipped.append({"lang": lang, "finding": prompts.name, "modality": key,
                                "n": int(y.size), "reason": "needs positive and negative studies"})
                continue
            prob = class_probabilities(vectors, classes, ctx.logit_scale)[:, 0]
            curves.append(Curve(lang, prompts.name, key, y, prob, meta))
            rows.append({"lang": lang, "finding": prompts.name, "modality": key,
                         "n": int(y.size), "n_pos": int(y.sum()),
                         "auroc": M.bootstrap_ci("auroc", y, prob, ctx.n_bootstrap, ctx.seed).as_dict(),
                         "auprc": M.bootstrap_ci("auprc", y, prob, ctx.n_bootstrap, ctx.seed).as_dict(),
                         "ece": M.expected_calibration_error(y, prob, ctx.ece_bins)})
    return rows, curves, skipped


def subgroups(curves: Sequence[Curve]) -> list[dict]:
    """AUROC by sex and by age band for each curve, with the largest gap of each grouping."""
    rows = []
    for c in curves:
        sex = M.subgroup_auroc(c.y, c.prob, [s if isinstance(s, str) else None for s in c.meta["sex"]])
        age = M.subgroup_auroc(c.y, c.prob, [M.age_band(a) for a in c.meta["age"].astype(float)])
        rows.append({"lang": c.lang, "finding": c.finding, "modality": c.modality,
                     "sex": sex, "age": age,
                     "largest_gap": _nanmax([sex["largest_gap"], age["largest_gap"]])})
    return rows


def linear_probe(ctx: EvalContext, train_split: str = "train") -> list[dict]:
    """Logistic regression on frozen train-split embeddings: AUROC on the evaluation split,
    and precision@10 of its ranking, the finding-query precision the embeddings allow when
    the query direction is learned from labels rather than written as text."""
    if ctx.split in (train_split, "all"):
        return []
    rows = []
    for prompts in ctx.prompts.findings.values():
        for key in ctx.keys_for(prompts.modalities):
            x_tr, y_tr, _ = labelled(*ctx.store.select(key, split=train_split), prompts.name)
            x_te, y_te, _ = labelled(*ctx.store.select(key, split=ctx.split), prompts.name)
            if not (M.has_both_classes(y_tr) and M.has_both_classes(y_te)):
                continue
            probe = LogisticRegression(max_iter=1000, class_weight="balanced").fit(x_tr, y_tr)
            score = probe.predict_proba(x_te)[:, 1]
            rows.append({"finding": prompts.name, "modality": key, "n_train": int(y_tr.size),
                         "n_test": int(y_te.size),
                         "auroc": M.bootstrap_ci("auroc", y_te, score, ctx.n_bootstrap, ctx.seed).as_dict(),
                         "precision_at_10": float(M.precision_at_k(score[None], y_te[None] == 1)[0])})
    return rows


def regress(ctx: EvalContext, lang: str, top_k: int | None = None) -> tuple[list[dict], dict]:
    """Value-prompt regression per measurement and modality: MAE and Pearson r."""
    rows, points = [], {}
    for target in ctx.prompts.values.values():
        classes = ctx.heads[(lang, target.measurement)]
        for key in ctx.keys_for(target.modalities):
            vectors, meta = ctx.store.select(key, split=ctx.split)
            values = [measurements_of(r).get(target.measurement) for _, r in meta.iterrows()]
            keep = np.array([v is not None for v in values], dtype=bool)
            if keep.sum() < 2:
                continue
            true = np.array([v for v in values if v is not None])
            pred = predict_values(vectors[keep], classes, target.grid, ctx.logit_scale, top_k)
            rows.append({"lang": lang, "measurement": target.measurement, "unit": target.unit,
                         "modality": key, **M.regression_metrics(true, pred)})
            points[(lang, target.measurement, key)] = (true, pred)
    return rows, points


def summarise(results: dict, prompts: PromptSet) -> dict:
    """Headline numbers (English prompts unless named): per-modality macro AUROC over the
    findings each modality is read for (`prompts.headline`; `macro_auroc_all` over every
    finding it shows), LVEF MAE from echo, ECE, the largest subgroup AUROC gap; finding-query
    precision@10 by the modality that shows the finding and its Chinese-English gap; exact
    report-to-study retrieval."""
    english = [r for r in results["classification"] if r["lang"] == "en"]
    mean_auroc = {lang: _nanmean([r["auroc"]["value"] for r in results["classification"]
                                  if r["lang"] == lang]) for lang in LANGUAGES}
    keys = list(dict.fromkeys(r["modality"] for r in english))
    macro = {key: _nanmean([r["auroc"]["value"] for r in english if r["modality"] == key
                            and r["finding"] in prompts.headline_findings(key)]) for key in keys}
    macro_all = {key: _nanmean([r["auroc"]["value"] for r in english if r["modality"] == key])
                 for key in keys}
    lvef = {r["modality"]: r["mae"] for r in results["regression"]
            if r["lang"] == "en" and r["measurement"] == "lvef"}
    precision = {lang: _nanmean([r["precision_at_10"] for r in results["finding_queries"]
                                 if r["lang"] == lang and r["modality"] != "study"])
                 for lang in LANGUAGES}
    summary = {
        "zeroshot": {"macro_auroc": macro, "macro_auroc_all": macro_all,
                     "ef_mae": lvef.get("echo", float("nan")), "ef_mae_by_modality": lvef,
                     "ece": _nanmean([r["ece"] for r in english]),
                     "subgroup_auroc_gap": _nanmax([r["largest_gap"] for r in results["subgroups"]]),
                     "mean_auroc": mean_auroc,
                     "zh_en_auroc_gap": mean_auroc["zh"] - mean_auroc["en"]},
        "retrieval": {"precision_at_10": precision["en"],
                      "precision_at_10_zh": precision["zh"],
                      "zh_en_gap": precision["zh"] - precision["en"],
                      "probe_precision_at_10": _nanmean([r["precision_at_10"] for r in results["linear_probe"]
                                                         if r["modality"] != "study"]),
                      "precision_at_10_study": _nanmean(
                          [r["precision_at_10"] for r in results["finding_queries"]
                           if r["lang"] == "en" and r["modality"] == "study"])},
    }
    text_to_study = results["retrieval"].get("study", {}).get("text_to_study")
    if text_to_study:
        summary["retrieval"].update({
            "recall_at_1": text_to_study["R@1"], "recall_at_10": text_to_study["R@10"],
            "mrr": text_to_study["MRR"], "median_rank": text_to_study["median_rank"]})
    return summary


def _nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _nanmax(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(max(values)) if values else float("nan")


# --- entry point -----------------------------------------------------------------------------

def numpy_encoder(encode: Callable[[list[str]], torch.Tensor]) -> TextEncoder:
    """A CardioCLIP's text method (`encode_text`, `encode_query`) as a numpy function
    (no gradients)."""
    def run(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return encode(list(texts)).float().cpu().numpy()
    return run


def model_logit_scale(model) -> float:
    """The model's contrastive temperature as a multiplier: exp of the learned log scale,
    clamped at 100 as in CardioCLIP.forward (and CLIP)."""
    return float(model.logit_scale.detach().exp().clamp(max=100.0))


def evaluate_zeroshot(model_folder: str | Path, manifest: str | Path, out: str | Path,
                      split: str = "test", store: str | Path | None = None,
                      prompts: PromptSet | None = None, n_bootstrap: int = 1000, seed: int = 0,
                      batch_size: int = 8, regression_top_k: int | None = None,
                      progress: bool = True, accelerator: Accelerator | None = None,
                      cache: str | Path | None = None, ecg_leads: Sequence[str] | None = None) -> dict:
    """Evaluate `model_folder` zero-shot on `manifest`'s `split`; write metrics.json, report.md
    and plots to `out`. Embeddings come from `store` (default OUT/store), which is filled with
    any studies of the manifest it does not hold yet. `prompts`: the findings and values to
    evaluate (default: `default_prompts()`). `ecg_leads`: give the ECG tower only these leads
    (e.g. ["I"]: the model as a single-lead wearable would use it)."""
    from mmcardio.eval.plots import write_plots
    from mmcardio.eval.report import write_report

    start = time.perf_counter()
    out, manifest = Path(out), Path(manifest)
    store_folder = Path(store) if store else out / "store"
    embed_manifest(model_folder, manifest, store_folder, batch_size, progress, accelerator, cache, ecg_leads)
    if accelerator is not None and not accelerator.is_main_process:
        return {}
    studies = read_manifest(manifest)
    emb = EmbeddingStore.load(store_folder).subset([s.study_id for s in studies])
    if split != "all" and not (emb.meta["split"] == split).any():
        raise MMCardioError(f"no study in split {split!r}; the manifest has splits "
                            f"{sorted(set(emb.meta['split']))} (or use 'all')", manifest, "split")
    model = load_model(model_folder, accelerator.device if accelerator else "cpu")
    prompts = prompts or default_prompts()
    ctx = EvalContext(emb, split, numpy_encoder(model.encode_text), model_logit_scale(model), prompts,
                      n_bootstrap, seed, progress=progress, encode_query=numpy_encoder(model.encode_query))
    evaluation = run_evaluation(ctx, bilingual_reports(studies), regression_top_k)
    evaluated = emb.meta if split == "all" else emb.meta[emb.meta["split"] == split]
    results = {"model": emb.model, "manifest": str(manifest), "split": split, "out": str(out),
               "store": str(store_folder), "ecg_leads": list(ecg_leads) if ecg_leads else "all",
               "n_studies": int(evaluated["study_id"].nunique()),
               "logit_scale": ctx.logit_scale, "n_bootstrap": n_bootstrap, "seed": seed,
               "ece_bins": ctx.ece_bins, "prompts": prompts.to_dict(), **evaluation.metrics}
    results["plots"] = write_plots(out, evaluation.curves, evaluation.points, evaluation.ranks,
                                   {name: v.unit for name, v in prompts.values.items()})
    results["seconds"] = round(time.perf_counter() - start, 3)
    write_json(out / "metrics.json", results)
    write_report(results, out / "report.md")
    return results


@dataclass
class Evaluation:
    """Metrics (JSON-ready) and the raw arrays the plots draw."""

    metrics: dict
    curves: list[Curve]
    points: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]
    ranks: dict[str, np.ndarray]


def run_evaluation(ctx: EvalContext, reports: Mapping[str, Mapping[str, str]],
                   regression_top_k: int | None = None) -> Evaluation:
    """Every evaluation step on `ctx`: zero-shot classification and regression in each
    language, linear probe, subgroups, retrieval and the Chinese-vs-English gap (over the
    studies `reports` gives in every language: study_id -> language -> whole report)."""
    if not ctx.heads:
        ctx.build_heads()
    classification, curves, skipped, regression, points = [], [], [], [], {}
    for lang in LANGUAGES:
        rows, lang_curves, lang_skipped = classify(ctx, lang)
        classification += rows
        curves += lang_curves
        skipped += lang_skipped
        reg_rows, reg_points = regress(ctx, lang, regression_top_k)
        regression += reg_rows
        points.update(reg_points)
    retrieval_results, ranks = retrieval_by_modality(ctx.store, ctx.split, ctx.prompts)
    metrics = {"classification": classification, "skipped": skipped,
               "linear_probe": linear_probe(ctx),
               "subgroups": subgroups([c for c in curves if c.lang == "en"]),
               "regression": regression, "retrieval": retrieval_results,
               "finding_queries": [row for lang in LANGUAGES for row in finding_queries(
                   ctx.store, ctx.split, ctx.encode_query or ctx.encode_text, lang, ctx.prompts)],
               "language": language_gap(ctx.store, ctx.split, ctx.encode_text, reports)}
    metrics["summary"] = summarise(metrics, ctx.prompts)
    return Evaluation(metrics, curves, points, ranks)
