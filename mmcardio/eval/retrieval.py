"""Retrieval evaluation: report text <-> study embeddings, both directions, per modality;
finding queries (precision@10 of studies with the finding); the Chinese-vs-English gaps, with
each study's report in both languages from the manifest (its report and its `translations`).

Queries and candidates are the evaluation split's studies that have both a report and the
modality; the exact match is the study's own report (or embedding). Exact search by matrix
product: evaluation sets are small, and exact scores make the metrics independent of any
FAISS approximation.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from mmcardio.eval import metrics as M
from mmcardio.eval.prompts import PromptSet
from mmcardio.retrieval.store import EmbeddingStore, labelled, labels_of
from mmcardio.study import LANGUAGES, Study


def paired(store: EmbeddingStore, key: str, split: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Report-text and `key` vectors of the `split` studies having both, row-aligned by study."""
    text_vecs, text_meta = store.select("text", split=split)
    key_vecs, key_meta = store.select(key, split=split)
    with_text = set(text_meta["study_id"])
    common = [s for s in key_meta["study_id"] if s in with_text]
    t_pos = pd.Index(text_meta["study_id"]).get_indexer(common)
    k_pos = pd.Index(key_meta["study_id"]).get_indexer(common)
    return text_vecs[t_pos], key_vecs[k_pos], key_meta.iloc[k_pos].reset_index(drop=True)


def retrieval_by_modality(store: EmbeddingStore, split: str,
                          prompts: PromptSet) -> tuple[dict, dict[str, np.ndarray]]:
    """Text->study and study->text metrics for every store key (finding-consistent precision
    judged on the findings the key can show); also the text->study ranks for plots."""
    out, ranks = {}, {}
    for key in [k for k in store.keys if k != "text"]:
        text_vecs, key_vecs, meta = paired(store, key, split)
        if len(meta) < 2:
            continue
        labels = [labels_of(r) for _, r in meta.iterrows()]
        sim = text_vecs @ key_vecs.T
        findings = prompts.findings_for(key)
        t2s = M.retrieval_metrics(sim, None, labels, labels, findings=findings)
        s2t = M.retrieval_metrics(sim.T, None, labels, labels, findings=findings)
        ranks[key] = np.array(t2s.pop("ranks"))
        s2t.pop("ranks")
        out[key] = {"text_to_study": t2s, "study_to_text": s2t}
    return out, ranks


def bilingual_reports(studies: Iterable[Study]) -> dict[str, dict[str, str]]:
    """Each study's whole report in every language the manifest gives it (its `report_lang`
    report and its `translations`), by study_id."""
    return {s.study_id: {lang: text for lang in s.languages() if (text := s.in_language(lang).report)}
            for s in studies}


def language_gap(store: EmbeddingStore, split: str, encode_text: Callable[[list[str]], np.ndarray],
                 reports: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """Text->study retrieval against fused study embeddings with each study's report in each
    language as the query (exact-study match), over the `split` studies that `reports`
    (`bilingual_reports`) gives in every language; mrr_gap = MRR (zh) - MRR (en)."""
    vectors, meta = store.select("study", split=split)
    keep = [i for i, sid in enumerate(meta["study_id"]) if all(reports.get(sid, {}).get(lang) for lang in LANGUAGES)]
    if len(keep) < 2:
        return {"n_pairs": len(keep), "mrr_gap": float("nan")}
    out: dict[str, Any] = {"n_pairs": len(keep)}
    for lang in LANGUAGES:
        queries = encode_text([reports[meta["study_id"].iloc[i]][lang] for i in keep])
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(min=1e-12)
        result = M.retrieval_metrics(queries @ vectors[keep].T)
        result.pop("ranks")
        out[lang] = result
    out["mrr_gap"] = out["zh"]["MRR"] - out["en"]["MRR"]
    return out


def finding_queries(store: EmbeddingStore, split: str, encode_query: Callable[[list[str]], np.ndarray],
                    lang: str, prompts: PromptSet, k: int = 10) -> list[dict[str, Any]]:
    """Report-to-study search by finding, as a clinician queries ("atrial fibrillation"):
    each positive phrasing of each finding in `lang` ranks the `split` studies by the
    embedding of every modality that can show it, and of the fused study. Precision@k is the
    share of retrieved studies that have the finding (`metrics.precision_at_k`), averaged
    over the phrasings; the phrasings of both languages are twins, so the languages compare
    query for query. `encode_query` embeds search queries (`CardioCLIP.encode_query`)."""
    rows = []
    for finding in prompts.findings.values():
        queries = np.asarray(encode_query(list(finding.positive[lang])), dtype=float)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True).clip(min=1e-12)
        for key in [m for m in (*finding.modalities, "study") if m in store.keys]:
            vectors, y, _ = labelled(*store.select(key, split=split), finding.name)
            if not y.any():
                continue
            sim = queries @ vectors.T
            relevant = np.broadcast_to(y == 1, sim.shape)
            rows.append({"lang": lang, "finding": finding.name, "modality": key,
                         "n_candidates": int(y.size), "n_relevant": int(y.sum()),
                         f"precision_at_{k}": float(np.mean(M.precision_at_k(sim, relevant, k)))})
    return rows
