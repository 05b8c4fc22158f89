"""FAISS indexes over an embedding store: exactness, approximate recall, persistence, and
refusal to mix models."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmcardio.errors import MMCardioError
from mmcardio.retrieval import EmbeddingStore, Index, Retriever, build_index
from mmcardio.retrieval.index import first_sentence
from mmcardio.retrieval.store import META_COLUMNS, model_fingerprint


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return _unit(centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim)))


def _fake_model(folder, seed: int) -> dict:
    """A model folder's two fingerprinted files (their bytes are all the fingerprint reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"seed": seed}))
    (folder / "model.safetensors").write_bytes(bytes([seed]) * 64)
    return {**model_fingerprint(folder), "dim": 16}


def _store(vectors_by_key: dict[str, np.ndarray], model: dict) -> EmbeddingStore:
    rows, vecs = [], []
    for key, vectors in vectors_by_key.items():
        for i, v in enumerate(vectors):
            rows.append({"study_id": f"S{i:04d}", "patient_id": f"P{i:04d}", "modality": key,
                         "view": "A4C" if key == "echo" else "", "split": "test",
                         "report": f"Finding {i} of {key}. Second sentence.", "report_lang": "en",
                         "age": 60.0, "sex": "F", "labels": "{}", "measurements": "{}"})
            vecs.append(v)
    return EmbeddingStore(np.stack(vecs), pd.DataFrame(rows, columns=list(META_COLUMNS)), model)


@pytest.fixture()
def model_a(tmp_path):
    return _fake_model(tmp_path / "model_a", seed=1)


def test_flat_search_equals_brute_force_top_k(model_a):
    vectors = _unit(np.random.default_rng(0).normal(size=(300, 16)))
    index = build_index(_store({"study": vectors}, model_a), kind="flat")
    queries = _unit(np.random.default_rng(1).normal(size=(7, 16)))
    hits = index.search("study", queries, k=10)
    sims = queries @ vectors.T
    for q, row in enumerate(hits):
        expected = np.argsort(-sims[q], kind="stable")[:10]
        assert [h.study_id for h in row] == [f"S{i:04d}" for i in expected]
        np.testing.assert_allclose([h.score for h in row], sims[q, expected], rtol=1e-5)
        assert [h.rank for h in row] == list(range(1, 11))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_recall_vs_flat(kind, model_a):
    vectors = _clustered(4000, 32, clusters=40, seed=0)
    queries = _clustered(200, 32, clusters=40, seed=0)[:100]
    store = _store({"study": vectors}, model_a)
    exact = build_index(store, kind="flat").search("study", queries, k=10)
    approx = build_index(store, kind=kind).search("study", queries, k=10)
    recall = np.mean([len({h.study_id for h in a} & {h.study_id for h in e}) / 10
                      for a, e in zip(approx, exact)])
    assert recall >= 0.9
    if kind == "ivf":
        ivf = build_index(store, kind="ivf").indexes["study"]
        assert ivf.nlist == min(int(4 * np.sqrt(4000)), 4000 // 39) and ivf.nprobe >= 1


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_persists_and_loads_back(kind, tmp_path, model_a):
    rng = np.random.default_rng(2)
    store = _store({"study": _clustered(500, 16, 10, 3), "ecg": _unit(rng.normal(size=(400, 16))),
                    "echo": _unit(rng.normal(size=(300, 16)))}, model_a)
    built = build_index(store, tmp_path / "idx", kind=kind, nprobe=3, ef_search=48)
    loaded = Index.load(tmp_path / "idx", expect_model=model_a)
    assert loaded.keys == ["ecg", "echo", "study"] and loaded.info["counts"]["echo"] == 300
    queries = _unit(rng.normal(size=(5, 16)))
    for key in loaded.keys:
        before = [[(h.study_id, round(h.score, 5)) for h in row] for row in built.search(key, queries, 5)]
        after = [[(h.study_id, round(h.score, 5)) for h in row] for row in loaded.search(key, queries, 5)]
        assert before == after
    if kind == "ivf":
        assert loaded.indexes["study"].nprobe == 3
    if kind == "hnsw":
        assert loaded.indexes["study"].hnsw.efSearch == 48
    np.testing.assert_allclose(loaded.vector_of("S0007", "ecg"), store.select("ecg")[0][7], rtol=1e-6)


def test_fingerprint_mismatch_is_refused(tmp_path, model_a):
    model_b = _fake_model(tmp_path / "model_b", seed=2)
    store = _store({"study": _unit(np.random.default_rng(0).normal(size=(20, 16)))}, model_a)
    build_index(store, tmp_path / "idx")
    with pytest.raises(MMCardioError) as err:
        Index.load(tmp_path / "idx", expect_model=model_b)
    assert model_a["model_path"] in str(err.value) and model_b["model_path"] in str(err.value)
    with pytest.raises(MMCardioError, match="fingerprint"):
        Retriever(tmp_path / "idx", model_folder=tmp_path / "model_b")
    (tmp_path / "model_a" / "model.safetensors").write_bytes(b"retrained")  # same path, new weights
    with pytest.raises(MMCardioError, match="cannot be mixed"):
        Retriever(tmp_path / "idx", model_folder=tmp_path / "model_a")


def test_search_like_is_cross_modal_and_leaves_out_the_query(tmp_path, model_a):
    rng = np.random.default_rng(4)
    ecg, echo = _unit(rng.normal(size=(30, 16))), _unit(rng.normal(size=(25, 16)))
    echo[3] = ecg[3]  # study S0003's echo embedding equals its ECG embedding
    echo[9] = _unit(ecg[3:4] + 0.05)[0]
    build_index(_store({"ecg": ecg, "echo": echo}, model_a), tmp_path / "idx")
    retriever = Retriever(tmp_path / "idx")  # no text query: the model is never loaded
    hits = retriever.search_like("S0003", k=4, modality="echo", query_modality="ecg")
    assert [h.modality for h in hits] == ["echo"] * 4
    assert hits[0].study_id == "S0009" and "S0003" not in [h.study_id for h in hits]
    assert [h.rank for h in hits] == [1, 2, 3, 4] and hits[0].view == "A4C"
    assert hits[0].summary == "Finding 9 of echo."
    with pytest.raises(MMCardioError, match="no 'echo' embedding"):
        retriever.search_like("S0027", modality="ecg", query_modality="echo")
    with pytest.raises(MMCardioError, match="no 'ct' embeddings"):
        retriever.search_like("S0001", modality="ct", query_modality="ecg")


def test_first_sentence_english_and_chinese():
    assert first_sentence("Sinus rhythm at 62 bpm. Normal axis.") == "Sinus rhythm at 62 bpm."
    assert first_sentence("窦性心律，心率62次/分。电轴正常。") == "窦性心律，心率62次/分。"
    assert first_sentence("LVEF 35%! Dilated LV.") == "LVEF 35%!"
    assert first_sentence("") == ""
