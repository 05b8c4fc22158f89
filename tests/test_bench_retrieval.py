"""The retrieval benchmark: its document's schema at a small size, the figures that are exact
(flat recall, flat bytes per vector), and the vector generators. No timing thresholds: speed
is measured by the benchmark, never asserted here."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mmcardio.bench import BenchOptions
from mmcardio.bench_retrieval import (
    DISTRIBUTIONS,
    KEY,
    K,
    VectorModel,
    bench_retrieval,
    benchmark_meta,
    draws,
    fit_vector_model,
    load_source,
    recall,
    steps,
    synthetic_vector_model,
    unit_vectors,
)
from mmcardio.errors import MMCardioError
from mmcardio.retrieval.index import Index, IndexParams, build_faiss, first_sentence
from mmcardio.retrieval.keys import KINDS

DIM, N = 16, 2000
FIGURES = {"build_s", "bytes_per_vector", "build_params", "search_params", "default_search_params",
           "p50_ms", "p99_ms", "queries_per_s", f"recall_at_{K}", "api_p50_ms", "api_over_faiss",
           "bench_s", "memory_mib"}


@pytest.fixture(scope="module")
def document() -> dict:
    options = BenchOptions(sections=("index",), repeats=1, warmup=0, threads=1)
    return bench_retrieval(DIM, [N], options)


def test_document_has_every_distribution_size_and_kind(document):
    assert document["dim"] == DIM and document["k"] == K and document["sizes"] == [N]
    assert list(document["distributions"]) == list(DISTRIBUTIONS)
    for by_size in document["distributions"].values():
        assert list(by_size) == [str(N)]
        kinds = by_size[str(N)]
        assert list(kinds) == list(KINDS)
        for kind, figures in kinds.items():
            assert FIGURES <= set(figures), kind
            assert ("sweep" in figures) == (kind != "flat")
    assert document["structured"]["source"] == "synthetic"
    for distribution in DISTRIBUTIONS:
        status = document["target"][distribution]
        assert status["vectors"] == N and status["kind"] in ("ivf", "hnsw")
        assert status["met"] is False  # the target is about 1M vectors
        kinds = document["distributions"][distribution][str(N)]
        assert status["api_over_faiss"] == max(f["api_over_faiss"] for f in kinds.values())
        assert status["api_met"] == (status["api_over_faiss"] <= 1.10)
    assert steps([N]) == len(DISTRIBUTIONS) * len(KINDS)


def test_flat_is_exact_and_holds_four_bytes_per_dimension(document):
    for by_size in document["distributions"].values():
        flat = by_size[str(N)]["flat"]
        assert flat[f"recall_at_{K}"] == 1.0
        assert flat["bytes_per_vector"] == pytest.approx(4 * DIM, rel=0.01)  # + a small header


def test_latencies_and_recalls_are_consistent(document):
    for by_size in document["distributions"].values():
        for kind, figures in by_size[str(N)].items():
            assert figures["p99_ms"] >= figures["p50_ms"] > 0, kind
            assert figures["api_over_faiss"] == pytest.approx(
                figures["api_p50_ms"] / figures["p50_ms"])
            assert 0 <= figures[f"recall_at_{K}"] <= 1
            assert all(math.isfinite(v) and v > 0 for v in
                       (figures["build_s"], figures["queries_per_s"], figures["bytes_per_vector"]))
        ivf, hnsw = by_size[str(N)]["ivf"], by_size[str(N)]["hnsw"]
        # HNSW stores its graph beside the vectors; IVF the vectors and their 8-byte ids
        assert hnsw["bytes_per_vector"] > ivf["bytes_per_vector"] > 4 * DIM + 8
        # the reported search setting is one of the sweep's, with the same recall
        chosen = [p for p in ivf["sweep"] if p["nprobe"] == ivf["search_params"]["nprobe"]]
        assert chosen and chosen[0][f"recall_at_{K}"] == ivf[f"recall_at_{K}"]


def test_the_sweep_gains_recall_with_wider_search(document):
    for by_size in document["distributions"].values():
        for kind in ("ivf", "hnsw"):
            recalls = [p[f"recall_at_{K}"] for p in by_size[str(N)][kind]["sweep"]]
            assert recalls[-1] >= recalls[0] and recalls[-1] >= 0.95, kind


def _anisotropic_source(m: int, dim: int, seed: int) -> np.ndarray:
    """Unit embeddings in 8 clusters with a steeply decaying within-cluster spectrum."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    scales = 0.6 * np.arange(1, dim + 1) ** -1.0
    x = centres[rng.integers(0, 8, m)] + rng.standard_normal((m, dim)) * scales
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _top_eigenvalues(x: np.ndarray, n: int) -> np.ndarray:
    return np.sort(np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False)))[::-1][:n]


def test_fitted_vectors_keep_the_source_mean_and_spectrum():
    source = _anisotropic_source(3000, DIM, seed=0)
    grown = fit_vector_model(source).sample(30000, np.random.default_rng(1))
    assert grown.shape == (30000, DIM) and grown.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(grown, axis=1), 1, atol=1e-5)
    assert np.linalg.norm(grown.mean(0) - source.mean(0)) < 0.03 * np.linalg.norm(source.mean(0))
    np.testing.assert_allclose(_top_eigenvalues(grown, 5), _top_eigenvalues(source, 5), rtol=0.05)
    # and unlike isotropic vectors, whose spectrum is flat at 1/D
    isotropic = draws("isotropic", fit_vector_model(source), 30000, np.random.default_rng(2))
    np.testing.assert_allclose(_top_eigenvalues(isotropic, 5), 1 / DIM, rtol=0.15)


def test_isotropic_and_synthetic_vectors_are_unit_vectors():
    model = synthetic_vector_model(DIM)
    assert isinstance(model, VectorModel) and model.dim == DIM
    assert model.weights.sum() == pytest.approx(1)
    rng = np.random.default_rng(0)
    for distribution in DISTRIBUTIONS:
        vectors = draws(distribution, model, 1000, rng)
        assert vectors.shape == (1000, DIM)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # the synthetic model's cone: unrelated embeddings are far from orthogonal
    structured = draws("structured", model, 1000, rng)
    assert (structured[:500] * structured[500:]).sum(1).mean() > 0.2


def test_a_source_of_another_size_or_a_wrong_file_is_refused(tmp_path):
    options = BenchOptions(sections=("index",), repeats=1, warmup=0)
    with pytest.raises(MMCardioError, match="expected 16"):
        bench_retrieval(DIM, [N], options, structured_source=_anisotropic_source(200, 8, seed=0))
    with pytest.raises(MMCardioError, match="unknown distribution"):
        bench_retrieval(DIM, [N], options, distributions=("gaussian",))
    with pytest.raises(MMCardioError, match="at least 10 embeddings"):
        fit_vector_model(np.ones((5, DIM)))
    (tmp_path / "vectors.txt").write_text("1 2 3")
    with pytest.raises(MMCardioError, match="embedding store folder"):
        load_source(tmp_path / "vectors.txt")
    np.save(tmp_path / "vectors.npy", _anisotropic_source(50, DIM, seed=0))
    assert load_source(tmp_path / "vectors.npy").shape == (50, DIM)


def test_the_timed_api_path_returns_the_faiss_hits_with_their_metadata():
    """What the benchmark times through `Index.search` is FAISS's answer made into hits, the
    same whether summaries were stored when the index was built or not (older folders)."""
    rng = np.random.default_rng(0)
    vectors, queries = unit_vectors(500, DIM, rng), unit_vectors(5, DIM, rng)
    reports = ["Sinus rhythm. Normal axis.", "窦性心律，心率62次/分。电轴正常。", "LVEF 35%! Dilated LV."]
    index, meta = build_faiss(vectors, IndexParams(kind="flat")), benchmark_meta(500, reports)
    hits = Index({KEY: index}, meta, {}).search(KEY, queries, K)
    scores, ids = index.search(queries, K)
    assert [[h.study_id for h in row] for row in hits] == [[f"S{i:07d}" for i in row] for row in ids]
    np.testing.assert_allclose([[h.score for h in row] for row in hits], scores)
    assert hits[0][0].summary == first_sentence(meta["report"][ids[0][0]]) != ""
    assert Index({KEY: index}, meta.drop(columns="summary"), {}).search(KEY, queries, K) == hits


def test_flat_index_hits_are_the_exact_neighbours_and_recall_counts_shared_ids():
    rng = np.random.default_rng(0)
    vectors, queries = unit_vectors(200, 32, rng), unit_vectors(20, 32, rng)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    hits = build_faiss(vectors, IndexParams(kind="flat")).search(queries, 10)[1]
    np.testing.assert_array_equal(hits, exact)
    found = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    assert recall(found, np.array([[3, 2, 9, 8], [4, 5, 6, 7]])) == pytest.approx((2 / 4 + 1) / 2)
