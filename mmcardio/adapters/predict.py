"""A study's label masks predicted with no user, for `measure_study(study, masks=...)`.

- echo: each apical view's LV tracked through its clip from an automatic box (`outline_lv`);
- CMR: the LV found on each slice of each phase by its own automatic box (`outline_frames`):
  following it from frame to frame, through the cine or through the slices, made the phantom's
  LV Dice worse (0.64-0.67 against 0.71), as each mask's error moves the next box
  (docs/experiments.md);
- CT: the heart found between the lungs (`ct_heart.heart_box`) and followed slice by slice
  until it ends, then the Agatston lesions on its surface as coronary calcium.

Keys and label values are those of the manifest's `masks` column (`records.Label`).
"""
from __future__ import annotations

import warnings

import numpy as np

from mmcardio.adapters.ct_heart import coronary_calcium_mask, heart_box
from mmcardio.adapters.sam import CardiacPredictor
from mmcardio.adapters.sam_preprocess import grey_frames
from mmcardio.adapters.segmenter import Segmenters
from mmcardio.adapters.track import outline_frames, outline_lv, segment_clip
from mmcardio.datasets.readers import read_for_column, read_volume
from mmcardio.modality import Modality
from mmcardio.records import Volume
from mmcardio.study import Study


def predict_masks(study: Study, segmenters: Segmenters) -> dict[str, Volume]:
    """Label Volumes "echo:VIEW" (t, 1, y, x), "cmr" (t, z, y, x) and "ct" (z, y, x) for the
    modalities `segmenters` outline. What cannot be measured is skipped with a warning: echo
    clips without a physical pixel spacing, a CT where no heart is found."""
    masks: dict[str, Volume] = {}
    if Modality.ECHO in segmenters.predictors:
        for clip in study.echo:
            masks.update(_echo_masks(clip, segmenters))
    if Modality.CMR in segmenters.predictors and study.cmr is not None:
        masks["cmr"] = _cmr_masks(read_volume(study.cmr, modality="cmr"), segmenters)
    if Modality.CT in segmenters.predictors and study.ct is not None:
        calcium = ct_calcium_labels(read_volume(study.ct, modality="ct"), segmenters.predictor("ct"))
        masks.update({"ct": calcium} if calcium is not None else {})
    return masks


def _echo_masks(clip, segmenters: Segmenters) -> dict[str, Volume]:
    video = read_for_column("echo", clip.path)
    if video.pixel_spacing_mm is None:
        warnings.warn(f"{clip.path}: no pixel spacing, view {clip.view} not segmented", stacklevel=3)
        return {}
    labels, _ = outline_lv(segmenters.predictor("echo"), grey_frames(video.frames), segmenters.structures("echo"))
    return {f"echo:{clip.view}": Volume(labels[:, None], (1.0, *video.pixel_spacing_mm), units="label",
                                        modality="echo", source=str(clip.path))}


def _cmr_masks(cmr: Volume, segmenters: Segmenters) -> Volume:
    """Each short-axis slice outlined phase by phase (`outline_frames`)."""
    predictor, structures = segmenters.predictor("cmr"), segmenters.structures("cmr")
    labels = np.zeros(cmr.array.shape, dtype=np.uint8)
    for z in range(cmr.array.shape[1]):
        labels[:, z] = outline_frames(predictor, cmr.array[:, z], structures)
    return Volume(labels, cmr.spacing_mm, cmr.affine, "label", cmr.frame_times_ms, "cmr", cmr.source)


def ct_calcium_labels(ct: Volume, predictor: CardiacPredictor) -> Volume | None:
    """The coronary calcium label Volume of a non-contrast CT: the heart followed through z
    from `heart_box` by a segmenter trained on "heart", then `coronary_calcium_mask`; None
    (with a warning) when no heart is found."""
    z, found = heart_box(ct.array, ct.spacing_mm)
    if found.box is None:
        warnings.warn(f"{ct.source}: {found.reason}; no calcium score", stacklevel=3)
        return None
    heart = segment_clip(predictor, ct.array, found.box, start=z, stop_at_empty=True).masks
    return coronary_calcium_mask(ct, heart)
