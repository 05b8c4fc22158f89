"""PNG plots of a zero-shot evaluation: ROC curves per finding, predicted vs true values,
retrieval rank histograms.

Uses matplotlib's object API (`Figure`, rendered by the Agg canvas) instead of pyplot, so no
global figure state or interactive backend is touched.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from mmcardio.io import atomic_path


def _save(fig: Figure, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path.name


def plot_roc(curves: Sequence, title: str, path: Path) -> str:
    """ROC curves of one finding, one line per modality (objects with .modality .y .prob)."""
    fig = Figure(figsize=(4.2, 4.2))
    ax = fig.add_subplot()
    for c in curves:
        fpr, tpr, _ = roc_curve(c.y, c.prob)
        ax.plot(fpr, tpr, label=f"{c.modality} (n={c.y.size}, AUROC {auc(fpr, tpr):.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_values(points: dict[str, tuple[np.ndarray, np.ndarray]], title: str, unit: str,
                path: Path) -> str:
    """Predicted vs true scatter, one colour per modality, with the identity line."""
    fig = Figure(figsize=(4.2, 4.2))
    ax = fig.add_subplot()
    everything = np.concatenate([np.concatenate(tp) for tp in points.values()])
    low, high = float(everything.min()), float(everything.max())
    for modality, (true, pred) in points.items():
        ax.scatter(true, pred, s=14, alpha=0.7, label=modality)
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel=f"true ({unit})", ylabel=f"predicted ({unit})", title=title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_ranks(ranks: dict[str, np.ndarray], path: Path) -> str:
    """Histogram of the rank of the true study for each report query, per modality."""
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.add_subplot()
    top = max(int(r.max()) for r in ranks.values())
    bins = np.arange(1, top + 2) - 0.5
    for modality, r in ranks.items():
        ax.hist(r, bins=bins, histtype="step", linewidth=1.6, label=f"{modality} (median {np.median(r):g})")
    ax.set(xlabel="rank of the true study (1 = first)", ylabel="report queries",
           title="text -> study retrieval ranks")
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_plots(out: Path, curves: Sequence, points: dict, ranks: dict[str, np.ndarray],
                units: dict[str, str]) -> dict:
    """Every plot of an evaluation (English prompts) into `out`; names by kind. `units`:
    measurement -> unit (of the prompt set's value prompts)."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, str] | str] = {"roc": {}, "values": {}}
    by_finding = defaultdict(list)
    for c in curves:
        if c.lang == "en":
            by_finding[c.finding].append(c)
    for name, group in by_finding.items():
        written["roc"][name] = plot_roc(group, f"{name} (zero-shot, EN prompts)", out / f"roc_{name}.png")
    by_measure = defaultdict(dict)
    for (lang, measurement, modality), tp in points.items():
        if lang == "en":
            by_measure[measurement][modality] = tp
    for name, group in by_measure.items():
        written["values"][name] = plot_values(group, f"{name}: predicted vs true", units[name],
                                              out / f"{name}_scatter.png")
    if ranks:
        written["ranks"] = plot_ranks(ranks, out / "retrieval_ranks.png")
    return written
