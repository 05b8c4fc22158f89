"""Held-out evaluation of the ECG MAE stage: reconstruction error against a mean predictor, and
chest leads reconstructed from lead I alone."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from mmcardio.datasets.cohort import StudyDataset, make_loader
from mmcardio.datasets.preprocess_config import PreprocessConfig
from mmcardio.processor import CardioProcessor
from mmcardio.study import Study
from mmcardio.train.config import PretrainConfig
from mmcardio.train.data import RunData


def evaluate_held_out(cfg: PretrainConfig, model: nn.Module, data: RunData) -> dict:
    """`evaluate_mae` on the run's evaluation splits (the studies with an ECG that decoded)."""
    held_out = [s for s in data.studies if s.split in cfg.eval_splits and s.ecg and s.study_id not in data.failed]
    if not held_out:
        return {"error": f"no {'/'.join(cfg.eval_splits)} study with an ECG to evaluate on"}
    return evaluate_mae(model, held_out_dataset(held_out, data.preprocess, data.cache_dir), seed=cfg.seed,
                        mask_ratio=cfg.mae_mask_ratio)


def held_out_dataset(studies: list[Study], preprocess: PreprocessConfig, cache_dir: Path) -> StudyDataset:
    """The studies' ECGs, one (the centre) window each, as the MAE stage reads them."""
    one_window = dataclasses.replace(preprocess, ecg=dataclasses.replace(preprocess.ecg, windows=1))
    return StudyDataset(studies, CardioProcessor(one_window, ["ecg"]), cache_dir=cache_dir, train=False)


@torch.no_grad()
def evaluate_mae(model: nn.Module, dataset: StudyDataset, batch_size: int = 16, seed: int = 0,
                 mask_ratio: float | None = None) -> dict:
    """Held-out ECG reconstruction.

    mae_vs_mean_ratio: squared error of the model on the hidden samples divided by that of a
        mean predictor, which predicts every hidden sample of a lead as the mean of that
        lead's visible samples in the same ECG (the ECG's visible mean when a whole lead is
        hidden). Masks come from the tower's own MAE masking, with a fixed seed.
    lead_reconstruction_corr: mean Pearson correlation of V1-V6 reconstructed from lead I
        alone with the recorded V1-V6.
    """
    tower = model.towers["ecg"]
    was_training = model.training
    model.eval()
    device = next(tower.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    loader = make_loader(dataset, batch_size, drop_last=False)
    err_model = err_mean = 0.0
    correlations: list[torch.Tensor] = []
    lead_i, chest = 0, slice(6, 12)
    for batch in loader:
        signal = batch["ecg"]["signal"].to(device)
        lead_mask = batch["ecg"]["lead_mask"].to(device)
        out = tower.mae_loss(signal, lead_mask, mask_ratio, generator=generator)
        hidden, target = out["mask"], out["target"]
        err_model += float(((out["pred"] - target) ** 2)[hidden].sum())
        err_mean += float(((mean_prediction(target, lead_mask[..., None] & ~hidden) - target) ** 2)[hidden].sum())
        has_i = lead_mask[:, lead_i]
        if has_i.any():
            only_i = torch.zeros_like(lead_mask)
            only_i[:, lead_i] = True
            recon = tower.reconstruct_leads(signal[has_i], only_i[has_i])
            corr = pearson(recon[:, chest], signal[has_i][:, chest])
            correlations.append(corr[lead_mask[has_i][:, chest] & torch.isfinite(corr)])
    model.train(was_training)
    corr = torch.cat(correlations) if correlations else torch.empty(0)
    return {"mae_vs_mean_ratio": err_model / err_mean if err_mean > 0 else float("nan"),
            "lead_reconstruction_corr": float(corr.mean()) if corr.numel() else float("nan"),
            "n_ecgs": len(dataset), "n_chest_leads_scored": int(corr.numel()),
            "mean_predictor": "per-lead mean of the visible samples of the same ECG"}


def mean_prediction(signal: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """[n, L, S]: each lead's mean over its visible samples (the ECG's visible mean if none)."""
    weight = visible.to(signal.dtype)
    per_lead = (signal * weight).sum(2) / weight.sum(2).clamp_min(1)
    per_ecg = (signal * weight).sum((1, 2)) / weight.sum((1, 2)).clamp_min(1)
    has_visible = visible.any(2)
    return torch.where(has_visible, per_lead, per_ecg[:, None])[..., None].expand_as(signal)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last axis (NaN where either side is constant)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
