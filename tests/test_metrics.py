"""Metrics against scikit-learn, open_clip and brute-force references on fixed inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip import build_zero_shot_classifier
from open_clip_train.train import get_clip_metrics
from sklearn.metrics import average_precision_score, roc_auc_score

from mmcardio.errors import MMCardioError
from mmcardio.eval import metrics as M
from mmcardio.eval.prompts import FINDINGS, VALUES, ValuePrompts, default_prompts
from mmcardio.eval.zeroshot import class_embeddings, class_probabilities, predict_values
from mmcardio.study import LANGUAGES


def _scores(n: int, seed: int, separation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    return y, y * separation + rng.normal(size=n)


def _auroc_by_pairs(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def _ap_by_ranks(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(-s)
    hits = np.cumsum(y[order])
    return float(np.mean([hits[i] / (i + 1) for i in range(len(y)) if y[order][i]]))


def test_auroc_auprc_equal_sklearn_and_brute_force():
    y, s = _scores(60, seed=1)
    s = np.round(s, 1)  # ties, which AUROC counts as half a win
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert M.auroc(y, s) == pytest.approx(_auroc_by_pairs(y, s))
    y2, s2 = _scores(60, seed=2)  # distinct scores: AP = mean precision at each positive
    assert M.auprc(y2, s2) == pytest.approx(average_precision_score(y2, s2))
    assert M.auprc(y2, s2) == pytest.approx(_ap_by_ranks(y2, s2))
    assert np.isnan(M.auroc(np.ones(5, int), np.arange(5.0)))


def test_bootstrap_ci_contains_point_and_narrows_with_n():
    small = M.bootstrap_ci("auroc", *_scores(40, seed=3), n_resamples=1000, seed=0)
    large = M.bootstrap_ci("auroc", *_scores(1000, seed=3), n_resamples=1000, seed=0)
    for est in (small, large):
        assert est.lo <= est.value <= est.hi
        assert 0.5 < est.value < 1.0
    assert (large.hi - large.lo) < 0.5 * (small.hi - small.lo)
    assert M.bootstrap_ci("auroc", *_scores(40, seed=3), n_resamples=1000, seed=0) == small  # fixed seed
    ap = M.bootstrap_ci("auprc", *_scores(200, seed=4), n_resamples=500, seed=1)
    assert ap.lo <= ap.value <= ap.hi and ap.value == pytest.approx(average_precision_score(*_scores(200, seed=4)))


def test_weighted_metrics_equal_sklearn_on_resampled_studies():
    y, s = _scores(50, seed=5)
    s = np.round(s, 1)  # ties inside and across classes
    rng = np.random.default_rng(0)
    draws = rng.integers(0, 50, size=(20, 50))
    counts = np.stack([np.bincount(d, minlength=50) for d in draws]).astype(float)
    auroc, ap = M.weighted_auroc(y, s, counts), M.weighted_auprc(y, s, counts)
    for b, idx in enumerate(draws):
        assert auroc[b] == pytest.approx(roc_auc_score(y[idx], s[idx]))
        assert ap[b] == pytest.approx(average_precision_score(y[idx], s[idx]))


def test_bootstrap_skips_one_class_resamples():
    y = np.zeros(20, int)
    y[0] = 1  # a resample misses the single positive with probability (19/20)^20 ~ 36%
    est = M.bootstrap_ci("auroc", y, np.linspace(1, 0, 20), n_resamples=400, seed=0)
    assert 180 < est.n_resamples < 320
    assert est.value == 1.0 and est.lo == 1.0
    assert np.isnan(M.bootstrap_ci("auprc", np.zeros(5), np.arange(5.0)).value)


def test_ece_hand_computed():
    y = [0, 0, 1, 1, 1, 0]
    p = [0.05, 0.15, 0.15, 0.85, 0.95, 1.0]
    # bins: [0.05]->|0.05-0|, [0.15,0.15]->|0.15-0.5|, [0.85]->|0.85-1|, [0.95,1.0]->|0.975-0.5|
    expected = (1 * 0.05 + 2 * 0.35 + 1 * 0.15 + 2 * 0.475) / 6
    assert M.expected_calibration_error(y, p, n_bins=10) == pytest.approx(expected, abs=1e-6)
    # two bins: [0.05,0.15,0.15] -> |0.1167-0.3333|, [0.85,0.95,1.0] -> |0.9333-0.6667|
    assert M.expected_calibration_error(y, p, n_bins=2) == pytest.approx(
        (3 * abs(0.35 / 3 - 1 / 3) + 3 * abs(2.8 / 3 - 2 / 3)) / 6, abs=1e-6)


def _brute_rank(row: np.ndarray, target: int) -> int:
    return 1 + sum(1 for j in range(len(row)) if row[j] > row[target] or (row[j] == row[target] and j < target))


def _brute_topk(row: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]


def test_retrieval_metrics_equal_brute_force_double_loop_with_ties():
    rng = np.random.default_rng(0)
    n_q, n_c = 30, 40
    sim = rng.integers(0, 6, size=(n_q, n_c)).astype(float)  # many ties
    targets = rng.integers(0, n_c, size=n_q)
    findings = ["afib", "lbbb", "reduced_ef"]
    cand_labels = [{f: int(rng.integers(0, 2)) for f in findings if rng.random() < 0.9} for _ in range(n_c)]
    query_labels = [cand_labels[t] for t in targets]
    got = M.retrieval_metrics(sim, targets, query_labels, cand_labels, findings=["afib", "lbbb"])

    ranks = np.array([_brute_rank(sim[q], targets[q]) for q in range(n_q)])
    assert got["ranks"] == ranks.tolist()
    for k in (1, 5, 10):
        assert got[f"R@{k}"] == pytest.approx(np.mean(ranks <= k))
    assert got["MRR"] == pytest.approx(np.mean(1 / ranks))
    assert got["median_rank"] == pytest.approx(np.median(ranks))
    shares = []
    for q in range(n_q):
        stated = [f for f in query_labels[q] if f in ("afib", "lbbb")]
        if not stated:
            continue
        agree = 0
        for c in _brute_topk(sim[q], 10):
            agree += all(f in cand_labels[c] and cand_labels[c][f] == query_labels[q][f] for f in stated)
        shares.append(agree / 10)
    assert got["P@10_consistent"] == pytest.approx(np.mean(shares))


def test_retrieval_metrics_match_open_clip_without_ties():
    torch.manual_seed(1)
    image = torch.nn.functional.normalize(torch.randn(31, 16), dim=-1)
    text = torch.nn.functional.normalize(image + 0.9 * torch.randn(31, 16), dim=-1)
    reference = get_clip_metrics(image, text, torch.tensor(1.0))
    sim = (image @ text.T).numpy().astype(np.float64)
    for name, matrix in (("image_to_text", sim), ("text_to_image", sim.T)):
        got = M.retrieval_metrics(matrix)
        for k in (1, 5, 10):
            assert got[f"R@{k}"] == pytest.approx(float(reference[f"{name}_R@{k}"]))
        assert got["mean_rank"] == pytest.approx(float(reference[f"{name}_mean_rank"]))
        assert got["median_rank"] == pytest.approx(float(reference[f"{name}_median_rank"]))


def test_precision_leaves_out_queries_without_stated_findings():
    sim = np.eye(3)
    labels = [{"afib": 1}, {"afib": 0}, {}]
    p = M.finding_consistent_precision(sim, labels, labels, k=2)
    # query 0: top-2 = [0, 1] -> afib 1 vs 1, 0 -> 1/2; query 1: [1, 0] -> 1/2; query 2 left out
    assert p == pytest.approx(0.5)
    assert M.labels_agree({"afib": 1, "lvh": 0}, {"afib": 1}, findings=["afib"])
    assert not M.labels_agree({"afib": 1, "lvh": 0}, {"afib": 1})


def _toy_encoder(dim: int = 24):
    """A deterministic text encoder (character trigram hashing) standing in for a text tower."""
    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim))
        for i, t in enumerate(texts):
            for j in range(len(t) - 2):
                out[i, sum(map(ord, t[j:j + 3])) % dim] += 1.0
        return out + 0.01
    return encode


def test_precision_at_k_equals_brute_force_and_caps_at_the_relevant_count():
    rng = np.random.default_rng(5)
    sim = rng.integers(0, 4, size=(6, 30)).astype(float)  # many ties: broken by candidate index
    relevant = rng.random((6, 30)) < 0.15
    relevant[0] = False
    relevant[1] = False
    relevant[1, [2, 7]] = True  # two relevant: P@min(10, 2)
    got = M.precision_at_k(sim, relevant, k=10)
    for q in range(6):
        order = sorted(range(30), key=lambda c: (-sim[q, c], c))
        depth = min(10, int(relevant[q].sum()))
        expected = np.nan if depth == 0 else sum(relevant[q, c] for c in order[:depth]) / depth
        assert got[q] == pytest.approx(expected, nan_ok=True)
    perfect = np.where(relevant, 1.0, 0.0)
    assert np.allclose(M.precision_at_k(perfect[1:], relevant[1:], 10), 1.0)


def test_class_embeddings_match_open_clip_zero_shot_classifier():
    encode = _toy_encoder()
    templates = ["{}", "the ECG shows {}", "findings consistent with {}"]
    names = ["atrial fibrillation", "sinus rhythm", "left bundle branch block"]
    ours = class_embeddings(encode, [[t.format(c) for t in templates] for c in names], batch_size=4)

    vocabulary: list[str] = []

    def tokenizer(texts):  # "tokens" are positions in a vocabulary the encoder looks up
        vocabulary.extend(texts)
        return torch.arange(len(vocabulary) - len(texts), len(vocabulary))

    class TextTower:
        def encode_text(self, ids, normalize=False):
            x = torch.from_numpy(encode([vocabulary[i] for i in ids.tolist()]))
            return torch.nn.functional.normalize(x, dim=-1) if normalize else x

    reference = build_zero_shot_classifier(TextTower(), tokenizer, names, templates,
                                           num_classes_per_batch=2).T.numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_class_embeddings_with_unequal_prompt_lists_direct():
    encode = _toy_encoder()
    classes = [["a b c d", "efgh ijk"], ["lmnop", "qrs tuv", "wxyz abc"]]
    got = class_embeddings(encode, classes, batch_size=2)
    for row, prompts in zip(got, classes):
        e = encode(prompts)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        mean = e.mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-9)


def test_class_probabilities_and_value_regression():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(5, 8))
    classes = rng.normal(size=(3, 8))
    probs = class_probabilities(vecs, classes, 10.0)
    logits = 10.0 * vecs @ classes.T
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True), rtol=1e-6)
    grid = [20.0, 40.0, 60.0]
    np.testing.assert_allclose(predict_values(vecs, classes, grid, 10.0), probs @ np.array(grid))
    top2 = predict_values(vecs, classes, grid, 10.0, top_k=2)
    best = np.argsort(-(vecs @ classes.T), axis=1)[:, :2]
    np.testing.assert_allclose(top2, np.array(grid)[best].mean(1))


def test_subgroups_and_age_bands():
    assert [M.age_band(a) for a in (30, 49.9, 50, 70, 70.5, None)] == ["<50", "<50", "50-70", "50-70", ">70", None]
    y = np.array([0, 1, 0, 1, 0, 1, 1, 1])
    s = np.array([0.1, 0.9, 0.2, 0.8, 0.9, 0.1, 0.5, 0.6])
    groups = ["F", "F", "F", "F", "M", "M", "M", "M"]
    out = M.subgroup_auroc(y, s, groups)
    assert out["groups"]["F"]["auroc"] == 1.0
    assert out["groups"]["M"]["auroc"] == pytest.approx(roc_auc_score(y[4:], s[4:]))
    assert out["largest_gap"] == pytest.approx(1.0 - roc_auc_score(y[4:], s[4:]))


def test_regression_metrics():
    out = M.regression_metrics([30, 50, 60], [35, 45, 70])
    assert out["mae"] == pytest.approx(20 / 3)
    assert out["pearson_r"] == pytest.approx(np.corrcoef([30, 50, 60], [35, 45, 70])[0, 1])
    assert np.isnan(M.regression_metrics([50, 50], [40, 60])["pearson_r"])


def test_prompt_registry_is_complete():
    ecg = {"normal_ecg", "sinus_bradycardia", "sinus_tachycardia", "afib", "lbbb", "lvh",
           "stemi_anterior", "stemi_inferior", "av_block_1"}
    imaging = {"reduced_ef", "lv_dilation", "thick_walls", "coronary_calcium", "severe_calcium"}
    assert set(FINDINGS) == ecg | imaging
    for f in FINDINGS.values():
        for lang in LANGUAGES:
            pos, neg = f.classes(lang)
            assert len(pos) >= 2 and len(neg) >= 2 and not set(pos) & set(neg)
    prompts = default_prompts()
    assert set(prompts.findings_for("ecg")) == ecg and set(prompts.findings_for("study")) == ecg | imaging
    lvef = VALUES["lvef"]
    assert len(lvef.classes("zh")) == len(lvef.grid) == 71
    by_value = dict(zip(lvef.grid, lvef.classes("en")))  # ASE/EACVI 2015 bands
    assert by_value[29.0][0] == "LVEF 29%, severely reduced systolic function"
    assert [by_value[v][2] for v in (30.0, 40.0, 41.0, 51.0, 52.0)] == [
        "the ejection fraction is 30% (moderately reduced)", "the ejection fraction is 40% (moderately reduced)",
        "the ejection fraction is 41% (mildly reduced)", "the ejection fraction is 51% (mildly reduced)",
        "the ejection fraction is 52% (normal)"]
    assert dict(zip(lvef.grid, lvef.classes("zh")))[35.0][0] == "LVEF 35%，收缩功能中度减低"
    plain = ValuePrompts("lvef", "%", ("echo",), (35.0,), {"en": ("LVEF {v}%",)})
    assert plain.classes("en") == [["LVEF 35%"]]
    with pytest.raises(MMCardioError, match="grade"):
        ValuePrompts("lvef", "%", ("echo",), (35.0,), {"en": ("LVEF {v}%, {grade}",)})
