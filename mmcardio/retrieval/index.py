"""FAISS indexes over an embedding store, persisted, and the `Retriever` search API.

An index folder holds one FAISS index per store key ("ecg", "echo", "cmr", "ct", "study",
"text") written with `faiss.write_index`, the store's metadata (`meta.parquet`, with each
row's position in its key's index) and `index.json` (kind, parameters, the model fingerprint).
All vectors are L2-normalised, so inner product is cosine similarity.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
from tqdm import tqdm

from mmcardio.errors import MMCardioError
from mmcardio.io import atomic_path
from mmcardio.retrieval.keys import KINDS, STORE_KEYS
from mmcardio.retrieval.store import (
    EmbeddingStore,
    check_same_model,
    load_model,
    model_fingerprint,
)
from mmcardio.sentences import report_sentences


@dataclass
class IndexParams:
    """FAISS parameters. nlist/nprobe default from the collection size (IVF only). IVF's
    k-means trains on at most `train_per_list` vectors per list: at 1M vectors FAISS's 256
    trained for 70 s of an 80-s build on one shared core, 64 for 25 s at the same recall."""

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    train_per_list: int = 64
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64


def default_nlist(n: int) -> int:
    """About 4*sqrt(n) clusters, but at least 39 training points per cluster (FAISS's minimum
    for a stable k-means)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(1, nlist // 4))


def build_faiss(vectors: np.ndarray, params: IndexParams) -> faiss.Index:
    """An inner-product FAISS index of `params.kind` holding `vectors` (trained if IVF)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if params.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif params.kind == "ivf":
        nlist = params.nlist or default_nlist(len(vectors))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = params.train_per_list
        index.train(vectors)
        index.nprobe = params.nprobe or default_nprobe(nlist)
    elif params.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
    else:
        raise MMCardioError(f"unknown index kind {params.kind!r}; expected one of {KINDS}", field="kind")
    index.add(vectors)
    return index


#: Metadata columns a `Hit` shows, in the order of its fields.
HIT_COLUMNS = ("study_id", "summary", "patient_id", "split", "view")


@dataclass
class Hit:
    """One search result."""

    rank: int
    study_id: str
    modality: str
    score: float
    summary: str  # first sentence of the study's report
    patient_id: str
    split: str
    view: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)




def first_sentence(report: str) -> str:
    """The first sentence of an English or Chinese report. Ever longer heads of the report are
    split until a second sentence begins in one (proving the first one whole): a third of the
    time of splitting whole reports, for the million rows of a large index."""
    report, head = report or "", 64
    while True:
        sentences = report_sentences(report[:head])
        if len(sentences) > 1 or head >= len(report):
            return sentences[0] if sentences else ""
        head *= 2


def with_summaries(meta: pd.DataFrame) -> pd.DataFrame:
    """`meta` with each row's `summary`, the first sentence of its report, that hits show:
    made once when the index is built, since making it per hit would cost more than a search."""
    return meta.assign(summary=meta["report"].fillna("").map(first_sentence))


class Index:
    """Per-key FAISS indexes with the metadata of every vector and the model fingerprint."""

    def __init__(self, indexes: dict[str, faiss.Index], meta: pd.DataFrame, info: dict[str, Any],
                 folder: Path | None = None):
        self.indexes = indexes
        self.meta = meta
        self.info = info
        self.folder = folder
        self._hit_columns: dict[str, dict[str, list[str]]] = {}

    @property
    def keys(self) -> list[str]:
        return [k for k in STORE_KEYS if k in self.indexes]

    @property
    def model(self) -> dict[str, Any]:
        return self.info["model"]

    def _index(self, key: str) -> faiss.Index:
        if key not in self.indexes:
            raise MMCardioError(f"the index holds no {key!r} embeddings; it has {self.keys}",
                                self.folder, "modality")
        return self.indexes[key]

    def rows(self, key: str) -> pd.DataFrame:
        """Metadata of `key`'s vectors, in index order."""
        return self.meta[self.meta["modality"] == key].sort_values("position").reset_index(drop=True)

    def columns(self, key: str) -> dict[str, list[str]]:
        """`key`'s metadata columns that hits show, as lists in index order, gathered once
        per key: filtering and sorting the metadata on every search would cost more than the
        FAISS search itself on a large index."""
        if key not in self._hit_columns:
            rows = self.rows(key)
            if "summary" not in rows:  # an index saved before summaries were stored
                rows = with_summaries(rows)
            self._hit_columns[key] = {c: rows[c].fillna("").astype(str).tolist()
                                      for c in HIT_COLUMNS}
        return self._hit_columns[key]

    def search(self, key: str, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-k hits in `key`'s index for each query vector [n, D]."""
        if k < 1:
            raise MMCardioError(f"k must be at least 1, got {k}", self.folder, "k")
        index = self._index(key)
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, ids = index.search(queries, min(k, index.ntotal))
        study_ids, summaries, patients, splits, views = self.columns(key).values()
        results = []
        for id_row, score_row in zip(ids.tolist(), scores.tolist()):
            found = [(i, s) for i, s in zip(id_row, score_row) if i >= 0]  # -1: fewer than k found
            # Hit's fields in order: positional arguments cost a third of keywords here
            results.append([Hit(rank, study_ids[i], key, score, summaries[i], patients[i],
                                splits[i], views[i])
                            for rank, (i, score) in enumerate(found, start=1)])
        return results

    def vector_of(self, study_id: str, key: str) -> np.ndarray:
        """The stored `key` embedding of `study_id` (reconstructed from the FAISS index)."""
        try:  # one scan of the ids, not a membership test and then a search
            position = self.columns(key)["study_id"].index(study_id)
        except ValueError:
            have = sorted(self.meta.loc[self.meta["study_id"] == study_id, "modality"])
            problem = (f"study {study_id!r} has no {key!r} embedding (it has {have})" if have
                       else f"study {study_id!r} is not in the index")
            raise MMCardioError(problem, self.folder, "study_id") from None
        return self._index(key).reconstruct(position)

    def save(self, folder: str | Path) -> Path:
        """Write the index folder atomically."""
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            for key, index in self.indexes.items():
                faiss.write_index(index, str(tmp / f"{key}.faiss"))
            self.meta.to_parquet(tmp / "meta.parquet", index=False)
            (tmp / "index.json").write_text(json.dumps(self.info, indent=2) + "\n", encoding="utf-8")
        self.folder = Path(folder)
        return self.folder

    @classmethod
    def load(cls, folder: str | Path, expect_model: dict[str, Any] | None = None) -> Index:
        """Load an index folder; with `expect_model` (a fingerprint) refuse another model's."""
        folder = Path(folder)
        info_path = folder / "index.json"
        if not info_path.is_file():
            raise MMCardioError("not an index folder (no index.json); build one with "
                                "`mmcardio index`", folder)
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if expect_model is not None:
            check_same_model(info["model"], expect_model, folder)
        missing = [f"{key}.faiss" for key in info["keys"] if not (folder / f"{key}.faiss").is_file()]
        if missing or not (folder / "meta.parquet").is_file():
            raise MMCardioError(f"incomplete index folder: missing {missing or ['meta.parquet']}; "
                                "rebuild it with `mmcardio index`", folder)
        indexes = {key: faiss.read_index(str(folder / f"{key}.faiss")) for key in info["keys"]}
        for index in indexes.values():
            apply_search_params(index, info["params"])
            if isinstance(index, faiss.IndexIVF):
                index.make_direct_map()  # so vector_of can reconstruct IVF entries
        return cls(indexes, pd.read_parquet(folder / "meta.parquet"), info, folder)


def apply_search_params(index: faiss.Index, params: dict[str, Any]) -> None:
    """Set the search-time settings among `params` (`IndexParams` names) that fit `index`."""
    if isinstance(index, faiss.IndexIVF) and params.get("nprobe"):
        index.nprobe = params["nprobe"]
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = params["ef_search"]


def build_index(store: str | Path | EmbeddingStore, out: str | Path | None = None,
                kind: str = "flat", progress: bool = False, **params: Any) -> Index:
    """One FAISS index per store key, saved to `out` (when given) with metadata and the model
    fingerprint. `params` are `IndexParams` fields (nlist, nprobe, hnsw_m, ef_search...)."""
    if kind not in KINDS:
        raise MMCardioError(f"unknown index kind {kind!r}; expected one of {KINDS}", field="kind")
    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore.load(store)
    settings = IndexParams(kind=kind, **params)
    indexes, metas, recorded = {}, [], {}
    for key in tqdm(store.keys, desc=f"index ({kind})", unit="key", disable=not progress):
        vectors, meta = store.select(key)
        indexes[key] = build_faiss(vectors, settings)
        metas.append(with_summaries(meta).assign(position=np.arange(len(meta))))
        if kind == "ivf":
            recorded[key] = {"nlist": indexes[key].nlist, "nprobe": indexes[key].nprobe}
    info = {"kind": kind, "params": asdict(settings), "ivf": recorded, "keys": list(indexes),
            "counts": {k: int(v.ntotal) for k, v in indexes.items()}, "model": store.model}
    index = Index(indexes, pd.concat(metas, ignore_index=True), info)
    if out is not None:
        index.save(out)
    return index


class Retriever:
    """Search an index with report text (English or Chinese) or with a stored study.

    The model (needed for text queries only) defaults to the folder recorded in the index and
    must have the fingerprint the index was built with.
    """

    def __init__(self, index_folder: str | Path, model_folder: str | Path | None = None,
                 device: str = "cpu"):
        self.index = Index.load(index_folder)
        self.model_folder = Path(model_folder or self.index.model["model_path"])
        self.device = device
        self._model = None
        self._verified = False
        if model_folder is not None:  # fail at once on an explicitly given wrong model
            self._verify_model()

    def _verify_model(self) -> None:
        if not self._verified:
            check_same_model(self.index.model, model_fingerprint(self.model_folder), self.index.folder)
            self._verified = True

    @property
    def model(self):
        """The CardioCLIP the index was built with, loaded on first use."""
        if self._model is None:
            self._verify_model()
            self._model = load_model(self.model_folder, self.device)
        return self._model

    def encode_query(self, query: str) -> np.ndarray:
        """The model's search-query embedding of `query` (`CardioCLIP.encode_query`), [1, D]."""
        import torch

        with torch.inference_mode():
            return self.model.encode_query([query]).float().cpu().numpy()

    def search_text(self, query: str, k: int = 10, modality: str = "study") -> list[Hit]:
        """Studies whose `modality` embedding is closest to the report-text `query`."""
        if not query.strip():
            raise MMCardioError("the query text is empty", field="query")
        return self.index.search(modality, self.encode_query(query), k)[0]

    def search_like(self, study_id: str, k: int = 10, modality: str = "study",
                    query_modality: str = "study") -> list[Hit]:
        """Studies whose `modality` embedding is closest to `study_id`'s `query_modality`
        embedding (cross-modal when they differ); the query study itself is left out."""
        query = self.index.vector_of(study_id, query_modality)
        hits = self.index.search(modality, query[None], k + 1)[0]
        kept = [h for h in hits if h.study_id != study_id][:k]
        for rank, hit in enumerate(kept, start=1):
            hit.rank = rank
        return kept
