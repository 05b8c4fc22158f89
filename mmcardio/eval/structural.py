"""A segmenter judged the way a reader uses it: masks predicted without a user (automatic box,
tracking), scored against the reference masks, then measured and the measurements compared
with the study's reference values.

Per study and modality: LV cavity Dice and HD95 (mm) (`SegmentationScore`), LV myocardium
Dice where the segmenter outlines it, and the LVEF, LV mass and Agatston score measured from
the predicted masks beside the reference (the manifest's `measurements`). The same
measurements from the reference masks are reported too: their error is the method's own
(disk summation, area-length) and bounds what any segmenter can reach.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch
from monai.metrics import DiceMetric

from mmcardio.adapters.predict import predict_masks
from mmcardio.adapters.segmenter import Segmenters
from mmcardio.adapters.structural import measure_study
from mmcardio.adapters.track import PAINT
from mmcardio.datasets.readers import read_volume
from mmcardio.eval.segmentation import SegmentationScore
from mmcardio.records import Label
from mmcardio.study import Study

#: Agatston categories (AU): none, mild, moderate, severe (lower bounds).
AGATSTON_CATEGORIES = (0.0, 1.0, 100.0, 400.0)
#: Measurement names compared with the reference, by modality.
COMPARED = {"echo": ("lvef",), "cmr": ("lvef", "lv_mass"), "ct": ("agatston",)}


@torch.no_grad()
def box_prompted_dice(model: torch.nn.Module, studies: list[Study], modality: str, structures: list[str],
                      image_size: int, frames_per_series: int | None = 24, batch_size: int = 16) -> float:
    """Mean Dice (MONAI) of the anchor structure on frames prompted with their reference box:
    the model alone, without the automatic box and tracking (`model`: a SAM or a peft model)."""
    from mmcardio.adapters.seg_data import SegmentationFrames
    from mmcardio.train.segment import BoxPromptedSam

    frames = SegmentationFrames(studies, modality, structures, image_size, frames_per_series=frames_per_series)
    wrapped, metric = BoxPromptedSam(model, len(structures)).eval(), DiceMetric(reduction="mean")
    for start in range(0, len(frames), batch_size):
        items = [frames[i] for i in range(start, min(start + batch_size, len(frames)))]
        batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
        logits = wrapped(batch["image"], batch["box"], batch["input_size"])[:, :1]
        upsampled = torch.nn.functional.interpolate(logits, batch["mask"].shape[-2:], mode="bilinear")
        metric(y_pred=(upsampled > 0).float(), y=batch["mask"][:, :1])
    return float(metric.aggregate())


def agatston_category(score: float) -> int:
    """0: zero, 1: 1-99, 2: 100-399, 3: 400 and more."""
    return int(np.searchsorted(AGATSTON_CATEGORIES, score, side="right")) - 1


def evaluate_segmenter(studies: Iterable[Study], segmenters: Segmenters, progress: bool = False) -> dict:
    """Scores and measurement errors over `studies` (those with reference masks of a modality
    the segmenter outlines): the summary and one row per study."""
    from tqdm import tqdm

    studies = list(studies)  # walked twice: segmented here, then box-prompted in adapter_gains
    cavity, myocardium = SegmentationScore(Label.LV_CAVITY), SegmentationScore(Label.LV_MYOCARDIUM)
    rows = []
    for study in tqdm(studies, desc="segment and measure", unit="study", disable=not progress):
        truth = _comparable_masks(study, segmenters)
        if not truth:
            continue
        predicted = predict_masks(study, segmenters)
        row = {"study_id": study.study_id, "scores": [], "measured": _measured(study, predicted, truth)}
        for key in sorted(set(truth) & set(predicted)):
            modality, pred, ref, spacing = _scored_arrays(key, predicted[key], truth[key])
            if modality == "ct":
                continue  # calcium is judged by its score, not by overlap
            row["scores"].append(cavity(study.study_id, modality, pred, ref, spacing))
            if "lv_epicardium" in segmenters.structures(modality) and (ref == Label.LV_MYOCARDIUM).any():
                row["scores"].append(myocardium(study.study_id, modality, pred, ref, spacing) | {"label": "lv_myocardium"})
        rows.append(row)
    summary = summarise(rows, cavity.aggregate(), myocardium.aggregate())
    return {"summary": summary | {"adapters": adapter_gains(segmenters, studies)}, "studies": rows}


def adapter_gains(segmenters: Segmenters, studies: list[Study]) -> dict:
    """For each LoRA adapter: box-prompted Dice on its modality with the adapter and with the
    base alone (the model before adaptation), and the gain."""
    from mmcardio.adapters.sam import load_segmenter

    scored = {m: s for m, s in segmenters.card.adapters.items() if PAINT.get(s[0]) is not None}
    base = load_segmenter(segmenters.folder)[0] if scored else None  # ("heart" is no reference label)
    found = {}
    for modality, structures in scored.items():
        predictor = segmenters.predictor(modality)
        size = predictor.sam.image_encoder.img_size
        adapted = box_prompted_dice(predictor.model, studies, modality, structures, size)
        before = box_prompted_dice(base, studies, modality, structures[:1], size)
        found[modality] = {"box_prompted_dice": adapted, "base_box_prompted_dice": before,
                           "lora_dice_gain": adapted - before}
    return found


def _comparable_masks(study: Study, segmenters: Segmenters) -> dict:
    """The study's reference masks of the modalities the segmenter outlines (only those read)."""
    return {k: read_volume(path) for k, path in study.masks.items() if k.split(":")[0] in segmenters.predictors}


def _scored_arrays(key: str, pred, ref) -> tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]:
    """(modality, prediction, truth, spatial spacing): echo frames [T, H, W] in 2-D, CMR
    phases [T, Z, Y, X] in 3-D."""
    modality = key.split(":")[0]
    if modality == "echo":
        return modality, pred.array[:, 0], ref.array[:, 0], tuple(ref.spacing_mm[1:])
    return modality, pred.array, ref.array, tuple(ref.spacing_mm[-3:])


def _measured(study: Study, predicted: dict, truth: dict) -> dict:
    """{modality: {name: {"predicted", "from_reference_masks", "reference"}}} of COMPARED."""
    found: dict = defaultdict(dict)
    by_masks = {"predicted": measure_study(study, predicted).measurements if predicted else {},
                "from_reference_masks": measure_study(study, truth).measurements}
    for modality, names in COMPARED.items():
        for name in names:
            reference = study.measurements.get(name)
            values = {k: m.get(modality, {}).get(name) for k, m in by_masks.items()}
            if reference is not None and values["from_reference_masks"] is not None:
                found[modality][name] = {k: (None if v is None else float(v.value)) for k, v in values.items()}
                found[modality][name]["reference"] = float(reference.value)
    return dict(found)


def summarise(rows: list[dict], cavity: dict, myocardium: dict) -> dict:
    """Means over studies: Dice and HD95 by modality, LVEF MAE (points) and LV mass mean
    relative error by modality, Agatston category accuracy; each from the predicted masks and,
    for comparison, from the reference masks."""
    errors: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for modality, found in row["measured"].items():
            for name, v in found.items():
                for source in ("predicted", "from_reference_masks"):
                    errors[(modality, name)][source].append(_error(name, v[source], v["reference"]))
    mean = {key: {source: (float(np.nanmean(e)) if e and not np.all(np.isnan(e)) else None)
                  for source, e in by_source.items()} for key, by_source in errors.items()}

    def pick(name: str, source: str) -> dict:
        return {m: v[source] for (m, n), v in mean.items() if n == name}

    return {
        "studies": len(rows),
        "dice": cavity["dice"], "hd95_mm": cavity["hd95_mm"], "myocardium_dice": myocardium["dice"],
        "ef_mae": pick("lvef", "predicted"), "lv_mass_rel_err": pick("lv_mass", "predicted"),
        "agatston_category_acc": pick("agatston", "predicted").get("ct"),
        "from_reference_masks": {"ef_mae": pick("lvef", "from_reference_masks"),
                                 "lv_mass_rel_err": pick("lv_mass", "from_reference_masks"),
                                 "agatston_category_acc": pick("agatston", "from_reference_masks").get("ct")},
        "unmeasured": {f"{m}.{n}": int(np.isnan(e["predicted"]).sum()) for (m, n), e in errors.items()
                       if np.isnan(e["predicted"]).any()},
    }


def _error(name: str, value: float | None, reference: float) -> float:
    """LVEF: absolute error in points; LV mass: relative error; Agatston: 1 when the category
    is right, else 0 (so its mean is the accuracy); NaN when nothing was measured."""
    if value is None:
        return float("nan")
    if name == "lv_mass":
        return abs(value - reference) / reference
    if name == "agatston":
        return float(agatston_category(value) == agatston_category(reference))
    return abs(value - reference)
