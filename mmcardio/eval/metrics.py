"""Evaluation metrics: classification with bootstrap CIs, calibration, regression, retrieval.

scikit-learn computes AUROC/AUPRC, MONAI the calibration error, scipy the correlation. What is
written here is only what none of them offers: a bootstrap that skips one-class resamples,
retrieval ranks with a documented tie rule, and finding-consistent precision@k.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.metrics import calibration_binning
from scipy.stats import pearsonr
from sklearn.metrics import average_precision_score, roc_auc_score

#: Age bands for subgroup analysis: under 50, 50 to 70 inclusive, over 70 years.
AGE_BANDS = ("<50", "50-70", ">70")


@dataclass
class Estimate:
    """A point estimate with a (1 - alpha) bootstrap confidence interval."""

    value: float
    lo: float
    hi: float
    n_resamples: int  # resamples that had both classes and entered the interval

    def as_dict(self) -> dict:
        return asdict(self)


def has_both_classes(y: np.ndarray) -> bool:
    y = np.asarray(y)
    return y.size > 0 and 0 < int(y.sum()) < y.size


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (nan when `y` holds one class only)."""
    return float(roc_auc_score(y, score)) if has_both_classes(y) else float("nan")


def auprc(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve; nan with one class)."""
    return float(average_precision_score(y, score)) if has_both_classes(y) else float("nan")


def _tie_groups(score: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sort order of `score` and the start of each run of equal scores in that order."""
    order = np.argsort(-score if descending else score, kind="stable")
    ordered = score[order]
    return order, np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])


def _class_weights(y: np.ndarray, score: np.ndarray, weights: np.ndarray,
                   descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight per tie group [B, groups], groups in score order."""
    order, starts = _tie_groups(score, descending)
    w, labels = weights[:, order], y[order]
    return (np.add.reduceat(w * labels, starts, axis=1),
            np.add.reduceat(w * (1 - labels), starts, axis=1))


def weighted_auroc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC for each row of study weights [B, n] (ties count half, as in scikit-learn)."""
    pos, neg = _class_weights(y, score, weights, descending=False)
    neg_below = np.cumsum(neg, axis=1) - neg
    return (pos * (neg_below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))


def weighted_auprc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision for each row of study weights [B, n]: the sum over distinct score
    thresholds of recall gained times precision there (scikit-learn's definition)."""
    pos, neg = _class_weights(y, score, weights, descending=True)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    return (pos * precision).sum(1) / pos.sum(1)


#: Metric name -> (point estimate by scikit-learn, the same metric over rows of weights).
BOOTSTRAP_METRICS = {"auroc": (auroc, weighted_auroc), "auprc": (auprc, weighted_auprc)}


def bootstrap_ci(metric: str, y: np.ndarray, score: np.ndarray, n_resamples: int = 1000,
                 seed: int = 0, alpha: float = 0.05, chunk: int = 250) -> Estimate:
    """Percentile bootstrap CI of `metric` ("auroc" or "auprc") over resampled studies.

    Written by hand because scipy.stats.bootstrap cannot skip resamples holding one class
    (skipped here, not replaced), and 1000 scikit-learn calls per metric take minutes: each
    resample is drawn as multinomial counts per study, which the weighted metrics evaluate
    all at once (equal to scikit-learn on the resampled studies; see the tests).
    """
    point_metric, weighted_metric = BOOTSTRAP_METRICS[metric]
    y, score = np.asarray(y, dtype=float), np.asarray(score, dtype=float)
    point = point_metric(y, score)
    if np.isnan(point):
        return Estimate(point, float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    values = []
    for size in np.diff(np.r_[np.arange(0, n_resamples, chunk), n_resamples]):
        counts = rng.multinomial(y.size, np.full(y.size, 1 / y.size), size=size).astype(float)
        positives = counts @ y
        both = (positives > 0) & (positives < y.size)
        values.append(weighted_metric(y, score, counts[both]))
    values = np.concatenate(values)
    if not values.size:
        return Estimate(point, float("nan"), float("nan"), 0)
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return Estimate(point, float(lo), float(hi), int(values.size))


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE over `n_bins` equal-width probability bins (MONAI's binning): the sum over bins of
    (bin count / N) * |mean predicted probability - observed positive rate|.

    Uses MONAI's `calibration_binning` rather than `CalibrationErrorMetric`, whose aggregate()
    all-gathers across ranks and would hang when only the main process evaluates."""
    prob_t = torch.as_tensor(np.asarray(prob, dtype=np.float32)).view(1, 1, -1)
    y_t = torch.as_tensor(np.asarray(y, dtype=np.float32)).view(1, 1, -1)
    mean_p, mean_y, counts = calibration_binning(prob_t, y_t, num_bins=n_bins)
    return float(torch.nansum((mean_p - mean_y).abs() * counts) / counts.sum())


def regression_metrics(true: np.ndarray, pred: np.ndarray) -> dict:
    """Mean absolute error and Pearson r (r is nan when either side is constant)."""
    true, pred = np.asarray(true, dtype=float), np.asarray(pred, dtype=float)
    constant = true.size < 2 or np.ptp(true) == 0 or np.ptp(pred) == 0
    r = float("nan") if constant else float(pearsonr(true, pred).statistic)
    return {"n": int(true.size), "mae": float(np.mean(np.abs(true - pred))), "pearson_r": r}


def age_band(age: float | None) -> str | None:
    """The AGE_BANDS name holding `age` (None when age is unknown)."""
    if age is None or np.isnan(age):
        return None
    return AGE_BANDS[0] if age < 50 else AGE_BANDS[1] if age <= 70 else AGE_BANDS[2]


def subgroup_auroc(y: np.ndarray, score: np.ndarray, groups: Sequence[str | None]) -> dict:
    """AUROC per subgroup (groups with one class are left out) and the largest gap between
    any two evaluable subgroups."""
    y, score, groups = np.asarray(y), np.asarray(score), np.asarray(groups, dtype=object)
    per_group = {}
    for name in sorted({g for g in groups if g is not None}):
        mask = groups == name
        if has_both_classes(y[mask]):
            per_group[name] = {"n": int(mask.sum()), "auroc": auroc(y[mask], score[mask])}
    values = [v["auroc"] for v in per_group.values()]
    gap = float(max(values) - min(values)) if len(values) >= 2 else float("nan")
    return {"groups": per_group, "largest_gap": gap}


# --- retrieval -------------------------------------------------------------------------------

def ranking(similarity: np.ndarray) -> np.ndarray:
    """Candidate order per query: descending score, ties broken by lower candidate index.

    Written by hand because open_clip's get_clip_metrics ranks with an unstable argsort (ties
    land anywhere) and has neither MRR nor label-aware precision.
    """
    return np.argsort(-np.asarray(similarity), axis=1, kind="stable")


def target_ranks(similarity: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each query's true candidate under `ranking`'s order."""
    order = ranking(similarity)
    return np.argmax(order == np.asarray(targets)[:, None], axis=1) + 1


def labels_agree(query: Mapping[str, int], candidate: Mapping[str, int],
                 findings: Sequence[str] | None = None) -> bool:
    """True when `candidate` has the same value as `query` on every finding the query states
    (restricted to `findings` when given); a finding the candidate does not state disagrees."""
    stated = [f for f in query if findings is None or f in findings]
    return all(f in candidate and int(candidate[f]) == int(query[f]) for f in stated)


def finding_consistent_precision(similarity: np.ndarray, query_labels: Sequence[Mapping[str, int]],
                                 candidate_labels: Sequence[Mapping[str, int]], k: int = 10,
                                 findings: Sequence[str] | None = None) -> float:
    """Mean over queries of the share of the top-k candidates whose labels agree with the
    query's (see `labels_agree`). The exact match counts like any other candidate; queries
    that state none of `findings` are left out; with fewer than k candidates the share is
    over all of them. nan when no query states a finding."""
    order = ranking(similarity)[:, :k]
    shares = []
    for q, top in enumerate(order):
        if not any(findings is None or f in findings for f in query_labels[q]):
            continue
        agree = [labels_agree(query_labels[q], candidate_labels[c], findings) for c in top]
        shares.append(float(np.mean(agree)))
    return float(np.mean(shares)) if shares else float("nan")


def precision_at_k(similarity: np.ndarray, relevant: np.ndarray, k: int = 10) -> np.ndarray:
    """Per query, the share of relevant candidates among the first min(k, R) retrieved, R
    being the query's number of relevant candidates (so a perfect ranking scores 1 even when
    R < k: R-precision capped at k); nan for a query with no relevant candidate."""
    similarity, relevant = np.asarray(similarity), np.asarray(relevant, dtype=bool)
    order = ranking(similarity)
    hits = np.take_along_axis(relevant, order, axis=1)
    n_relevant = relevant.sum(axis=1)
    depth = np.minimum(k, n_relevant)
    found = np.array([hits[q, :d].sum() for q, d in enumerate(depth)], dtype=float)
    return np.where(depth > 0, found / np.maximum(depth, 1), np.nan)


def retrieval_metrics(similarity: np.ndarray, targets: np.ndarray | None = None,
                      query_labels: Sequence[Mapping[str, int]] | None = None,
                      candidate_labels: Sequence[Mapping[str, int]] | None = None,
                      ks: Sequence[int] = (1, 5, 10), findings: Sequence[str] | None = None) -> dict:
    """Recall@k, MRR, mean and median rank of the exact match (targets default to the
    diagonal, as in open_clip), and finding-consistent precision@10 when labels are given."""
    similarity = np.asarray(similarity)
    targets = np.arange(similarity.shape[0]) if targets is None else np.asarray(targets)
    ranks = target_ranks(similarity, targets)
    out = {"n_queries": int(similarity.shape[0]), "n_candidates": int(similarity.shape[1])}
    out.update({f"R@{k}": float(np.mean(ranks <= k)) for k in ks})
    out.update({"MRR": float(np.mean(1.0 / ranks)), "mean_rank": float(np.mean(ranks)),
                "median_rank": float(np.median(ranks))})
    if query_labels is not None and candidate_labels is not None:
        out["P@10_consistent"] = finding_consistent_precision(
            similarity, query_labels, candidate_labels, 10, findings)
    out["ranks"] = ranks.tolist()
    return out
