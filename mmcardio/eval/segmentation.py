"""Segmentation scores by modality: Dice (MONAI `DiceMetric`) and HD95 in mm (MONAI
`HausdorffDistanceMetric(percentile=95)` with the voxel spacing), stateful like MONAI metrics:
call once per study, `aggregate()`, `reset()`.

A study's masks are [..., *spatial] label maps; `spacing` names the spatial axes (2 values: an
echo cine [T, H, W] is scored frame by frame; 3: a CMR cine [T, Z, Y, X] phase by phase, a CT
[Z, Y, X] once). The study's value is the mean over its frames or phases that hold the label in
the truth (MONAI gives NaN for the others).
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from mmcardio.errors import MMCardioError
from mmcardio.records import Label


class SegmentationScore:
    """Dice and HD95 (mm) of one label, per study and per modality."""

    def __init__(self, label: int = Label.LV_CAVITY) -> None:
        self.label = int(label)
        self.dice = DiceMetric(include_background=True, reduction="none")
        self.hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
        self.studies: list[dict] = []

    def __call__(self, study_id: str, modality: str, pred: np.ndarray, truth: np.ndarray,
                 spacing: tuple[float, ...]) -> dict:
        """Score one study's predicted label map against the truth; returns its row."""
        pred, truth = np.asarray(pred), np.asarray(truth)
        if pred.shape != truth.shape or not 2 <= len(spacing) <= truth.ndim:
            raise MMCardioError(f"expected prediction and truth of one shape with {len(spacing)} "
                                f"spatial axes, got {pred.shape} and {truth.shape}", field=study_id)
        y_pred, y = (_items(a == self.label, len(spacing)) for a in (pred, truth))
        keep = y.flatten(1).any(1)
        if not keep.any():
            raise MMCardioError(f"label {self.label} is nowhere in the truth", field=study_id)
        dice = self.dice(y_pred[keep], y[keep])
        with warnings.catch_warnings():  # MONAI 1.5 warns about its own internal argument
            warnings.filterwarnings("ignore", "monai.metrics.utils get_mask_edges", FutureWarning)
            hd95 = self.hd95(y_pred[keep], y[keep], spacing=[float(s) for s in spacing])
        self.dice.reset()
        self.hd95.reset()
        row = {"study_id": study_id, "modality": str(modality), "dice": float(dice.mean()),
               "hd95_mm": float(hd95.mean()), "items": int(keep.sum())}
        self.studies.append(row)
        return row

    def aggregate(self) -> dict:
        """{"dice": {modality: mean}, "hd95_mm": {modality: mean}, "studies": [rows]}."""
        by_modality: dict[str, list[dict]] = defaultdict(list)
        for row in self.studies:
            by_modality[row["modality"]].append(row)
        return {
            key: {m: float(np.mean([r[key] for r in rows])) for m, rows in by_modality.items()}
            for key in ("dice", "hd95_mm")
        } | {"studies": list(self.studies)}

    def reset(self) -> None:
        self.studies = []


def _items(mask: np.ndarray, spatial_dims: int) -> torch.Tensor:
    """[..., *spatial] bool -> MONAI's [B, 1, *spatial] float."""
    spatial = mask.shape[mask.ndim - spatial_dims:]
    return torch.from_numpy(mask.reshape(-1, 1, *spatial).astype(np.float32))
