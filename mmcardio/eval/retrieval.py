"""Retrieval evaluation: report text <-> study embeddings, both directions, per modality;
finding queries (precision@10 of studies with the finding); the Chinese-vs-English gaps.

Queries and candidates are the evaluation split's studies that have both a report and the
modality; the exact match is the study's own report (or embedding). Exact search by matrix
product: evaluation sets are small, and exact scores make the metrics independent of any
FAISS approximation.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmcardio.errors import MMCardioError
from mmcardio.eval import metrics as M
from mmcardio.eval.prompts import FINDINGS, findings_for
from mmcardio.retrieval.store import EmbeddingStore, labelled, labels_of


def paired(store: EmbeddingStore, key: str, split: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Report-text and `key` vectors of the `split` studies having both, row-aligned by study."""
    text_vecs, text_meta = store.select("text", split=split)
    key_vecs, key_meta = store.select(key, split=split)
    with_text = set(text_meta["study_id"])
    common = [s for s in key_meta["study_id"] if s in with_text]
    t_pos = pd.Index(text_meta["study_id"]).get_indexer(common)
    k_pos = pd.Index(key_meta["study_id"]).get_indexer(common)
    return text_vecs[t_pos], key_vecs[k_pos], key_meta.iloc[k_pos].reset_index(drop=True)


def retrieval_by_modality(store: EmbeddingStore, split: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Text->study and study->text metrics for every store key (finding-consistent precision
    judged on the findings the key can show); also the text->study ranks for plots."""
    out, ranks = {}, {}
    for key in [k for k in store.keys if k != "text"]:
        text_vecs, key_vecs, meta = paired(store, key, split)
        if len(meta) < 2:
            continue
        labels = [labels_of(r) for _, r in meta.iterrows()]
        sim = text_vecs @ key_vecs.T
        findings = findings_for(key)
        t2s = M.retrieval_metrics(sim, None, labels, labels, findings=findings)
        s2t = M.retrieval_metrics(sim.T, None, labels, labels, findings=findings)
        ranks[key] = np.array(t2s.pop("ranks"))
        s2t.pop("ranks")
        out[key] = {"text_to_study": t2s, "study_to_text": s2t}
    return out, ranks


def read_truth(path: Path | None) -> dict[str, dict]:
    """truth.jsonl rows by study_id (empty when there is no such file)."""
    if path is None or not path.is_file():
        return {}
    rows = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[str(row["study_id"])] = row
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise MMCardioError(f"line {n}: expected a JSON object with a study_id ({err})", path) from None
    return rows


def report_pairs(meta: pd.DataFrame, truth: dict[str, dict]) -> tuple[list[int], list[str], list[str]]:
    """Rows with both an English and a Chinese report, and those reports: from truth.jsonl
    when present, else the manifest report in its own language."""
    keep, en, zh = [], [], []
    for i, row in meta.iterrows():
        t = truth.get(row["study_id"], {})
        own = {row["report_lang"]: row["report"]} if row["report"] else {}
        report_en, report_zh = t.get("report_en") or own.get("en"), t.get("report_zh") or own.get("zh")
        if report_en and report_zh:
            keep.append(i)
            en.append(report_en)
            zh.append(report_zh)
    return keep, en, zh


def language_gap(store: EmbeddingStore, split: str, encode_text: Callable[[list[str]], np.ndarray],
                 truth: dict[str, dict]) -> dict[str, Any]:
    """Text->study retrieval against fused study embeddings with each study's English, then
    Chinese, report as the query (exact-study match); mrr_gap = MRR (zh) - MRR (en)."""
    vectors, meta = store.select("study", split=split)
    keep, en, zh = report_pairs(meta, truth)
    if len(keep) < 2:
        return {"n_pairs": len(keep), "mrr_gap": float("nan")}
    out: dict[str, Any] = {"n_pairs": len(keep)}
    for lang, texts in (("en", en), ("zh", zh)):
        queries = encode_text(texts)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(min=1e-12)
        result = M.retrieval_metrics(queries @ vectors[keep].T)
        result.pop("ranks")
        out[lang] = result
    out["mrr_gap"] = out["zh"]["MRR"] - out["en"]["MRR"]
    return out


def finding_queries(store: EmbeddingStore, split: str, encode_query: Callable[[list[str]], np.ndarray],
                    lang: str, k: int = 10) -> list[dict[str, Any]]:
    """Report-to-study search by finding, as a clinician queries ("atrial fibrillation"):
    each positive phrasing of each finding in `lang` ranks the `split` studies by the
    embedding of every modality that can show it, and of the fused study. Precision@k is the
    share of retrieved studies that have the finding (`metrics.precision_at_k`), averaged
    over the phrasings; the phrasings of both languages are twins, so the languages compare
    query for query. `encode_query` embeds search queries (`CardioCLIP.encode_query`)."""
    rows = []
    for prompts in FINDINGS.values():
        queries = np.asarray(encode_query(list(prompts.positive[lang])), dtype=float)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True).clip(min=1e-12)
        for key in [m for m in (*prompts.modalities, "study") if m in store.keys]:
            vectors, y, _ = labelled(*store.select(key, split=split), prompts.name)
            if not y.any():
                continue
            sim = queries @ vectors.T
            relevant = np.broadcast_to(y == 1, sim.shape)
            rows.append({"lang": lang, "finding": prompts.name, "modality": key,
                         "n_candidates": int(y.size), "n_relevant": int(y.sum()),
                         f"precision_at_{k}": float(np.mean(M.precision_at_k(sim, relevant, k)))})
    return rows
