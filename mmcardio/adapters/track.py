"""Segmenting without a user: an automatic coarse box, tracking through a cine, label Volumes.

- `auto_box`: the LV blood pool's box from the image alone. After MedSAM's intensity
  normalisation the frame is smoothed (Gaussian, sigma 1.5% of the longest side: speckle and
  noise out, chambers kept), split by Otsu's threshold inside the field of view (the non-zero
  pixels, holes filled; in echo a second Otsu split of the darker class, since tissue lies
  between blood and myocardium), and the connected blood-polarity regions (dark in echo: anechoic
  blood; bright in bSSFP CMR) inside the eroded field are scored by area x solidity (the LV
  pool is convex) x a Gaussian of their centroid's distance to the image centre (sigma a quarter of the shorter side: the LV is
  what the operator centres). The best region's box, in original pixels. CT is not covered: a
  heart box by HU needs contrast timing that non-gated and contrast scans differ in.
- `segment_clip`: frame `start` from a box, then each next frame forwards and backwards from
  the previous frame's mask box (enlarged by `margin`) and its low-res logits as mask prompt
  (the propagation of MedSAM2 / SAM-Track, without their memory bank).
- `segment_volume`: a CMR cine (t, z, y, x), one track through time per slice.
- `predict_masks`: a study's echo views and CMR cine -> the label Volumes `measure_study` takes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from mmcardio.adapters.geometry import mask_box
from mmcardio.adapters.sam import CardiacPredictor
from mmcardio.adapters.sam_preprocess import grey_frames, normalise_intensity
from mmcardio.datasets.readers import read_for_column, read_volume
from mmcardio.errors import MMCardioError
from mmcardio.modality import Modality
from mmcardio.records import Label, Volume
from mmcardio.study import Study

#: Blood is dark in echo (anechoic) and bright in bSSFP cine CMR.
BLOOD_IS_BRIGHT = {Modality.ECHO: False, Modality.CMR: True}
SMOOTHING = 0.015    # Gaussian sigma / longest side
CENTRE_SIGMA = 0.25  # centre-weight sigma / shorter side


class AutoBox(NamedTuple):
    box: np.ndarray | None  # XYXY in original pixels, or None
    reason: str             # how it was found, or why not


class Track(NamedTuple):
    masks: np.ndarray  # bool [T, H, W] (segment_volume: [T, Z, H, W])
    ious: np.ndarray   # the decoder's predicted IoU per frame (NaN where nothing was prompted)
    boxes: np.ndarray  # the box each frame was prompted with, XYXY [T, 4] ([T, Z, 4])


def auto_box(frames: np.ndarray, modality: str, structure: int = Label.LV_CAVITY,
             frame: int = 0) -> AutoBox:
    """The LV cavity's coarse box in a frame [H, W] (or frame `frame` of a stack [T, H, W])."""
    image = np.asarray(frames, dtype=np.float64)
    image = image[frame] if image.ndim == 3 else image
    if structure != Label.LV_CAVITY or modality not in BLOOD_IS_BRIGHT:
        return AutoBox(None, f"no automatic box for label {int(structure)} in {modality!r}: "
                             f"only the LV cavity in {sorted(map(str, BLOOD_IS_BRIGHT))}; give a box")
    field = ndimage.binary_fill_holes(image > 0)
    if not field.any():
        return AutoBox(None, "the frame is empty (no non-zero pixel)")
    smooth = ndimage.gaussian_filter(normalise_intensity(image, modality), SMOOTHING * max(image.shape))
    threshold = otsu(smooth[field])
    if not BLOOD_IS_BRIGHT[modality]:  # echo: tissue lies between blood and myocardium
        threshold = otsu(smooth[field & (smooth < threshold)])
    blood = smooth > threshold if BLOOD_IS_BRIGHT[modality] else smooth < threshold
    regions, n = ndimage.label(blood & ndimage.binary_erosion(field))
    best = _best_region(regions, n, image.shape)
    if best is None:
        return AutoBox(None, "no blood-pool region inside the field of view")
    ys, xs = np.nonzero(regions == best)
    return AutoBox(np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float),
                   f"blood-pool region {best} of {n} (Otsu threshold {threshold:.3f})")


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (by hand: scikit-image is not a dependency)."""
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)
    above = below[-1] - below
    mass = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = below * above * (mass / below - (mass[-1] - mass) / above) ** 2
    return float(centres[np.nanargmax(np.where(above > 0, between, np.nan))])


def _best_region(regions: np.ndarray, n: int, shape: tuple[int, int]) -> int | None:
    """The label of largest area x solidity x centre weight; regions under 0.1% of the
    frame are noise."""
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(np.ones(shape), regions, index)
    centroids = np.array(ndimage.center_of_mass(np.ones(shape), regions, index)).reshape(-1, 2)
    distance = np.linalg.norm(centroids - (np.array(shape) - 1) / 2, axis=1)
    score = areas * np.exp(-0.5 * (distance / (CENTRE_SIGMA * min(shape))) ** 2)
    big = areas >= 1e-3 * np.prod(shape)
    score = np.where(big, score, 0.0)
    for i in np.flatnonzero(big):
        score[i] *= solidity(regions == index[i])
    return int(index[np.argmax(score)]) if n and score.max() > 0 else None


def solidity(region: np.ndarray) -> float:
    """Area / convex-hull area (pixel squares' corners): ~1 for the convex LV blood pool,
    low for a crescent (the RV in short axis) or chambers merged through a valve."""
    ys, xs = np.nonzero(region)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    return float(len(xs) / ConvexHull(corners).volume)


def segment_clip(predictor: CardiacPredictor, frames: np.ndarray, box: np.ndarray | None = None,
                 start: int = 0, margin: float = 0.1, structure: int = Label.LV_CAVITY) -> Track:
    """Every frame of a cine [T, H, W] from one box (or `auto_box` of `structure` in frame
    `start`); a frame whose mask comes out empty passes the last box on."""
    frames = np.asarray(frames)
    if box is None:
        found = auto_box(frames, predictor.modality, structure, frame=start)
        if found.box is None:
            raise MMCardioError(f"no box given and none found: {found.reason}", field="box")
        box = found.box
    predictor.set_frames(frames)
    t = len(frames)
    masks = np.zeros(frames.shape[:3], dtype=bool)
    ious, boxes = np.full(t, np.nan), np.zeros((t, 4))
    first = predictor.predict(start, box=box)
    masks[start], ious[start], boxes[start] = first.mask, first.iou, box
    for order in (range(start + 1, t), range(start - 1, -1, -1)):
        previous, prompt = first, np.asarray(box, dtype=float)
        for k in order:
            grown = mask_box(previous.mask, margin)
            prompt = prompt if grown is None else grown
            previous = predictor.predict(k, box=prompt, mask_input=previous.low_res_logits)
            masks[k], ious[k], boxes[k] = previous.mask, previous.iou, prompt
    return Track(masks, ious, boxes)


def segment_volume(predictor: CardiacPredictor, cine: np.ndarray, box: np.ndarray | None = None,
                   start: int = 0, margin: float = 0.1, structure: int = Label.LV_CAVITY) -> Track:
    """A CMR cine (t, z, y, x): each slice tracked through time from `box` (the same for every
    slice) or its own `auto_box`; slices where no box is found stay empty (IoU NaN)."""
    cine = np.asarray(cine)
    if cine.ndim != 4:
        raise MMCardioError(f"expected a (t, z, y, x) cine, got shape {cine.shape}", field="cine")
    masks = np.zeros(cine.shape, dtype=bool)
    ious, boxes = np.full(cine.shape[:2], np.nan), np.zeros((*cine.shape[:2], 4))
    for z in range(cine.shape[1]):
        slice_box = box if box is not None else auto_box(cine[:, z], predictor.modality, structure, start).box
        if slice_box is None:
            continue
        track = segment_clip(predictor, cine[:, z], slice_box, start, margin, structure)
        masks[:, z], ious[:, z], boxes[:, z] = track.masks, track.ious, track.boxes
    return Track(masks, ious, boxes)


def predict_masks(study: Study,
                  predictors: Mapping[str, Mapping[int, CardiacPredictor]]) -> dict[str, Volume]:
    """Label Volumes for `measure_study(study, masks=...)`: "echo:VIEW" (t, 1, y, x) and "cmr"
    (t, z, y, x), from `predictors` {modality: {label: predictor}} (the LV cavity at least),
    each structure from its own `auto_box` (so, for now, the LV cavity only). Echo clips without a physical pixel spacing
    are skipped with a warning (no measurement in mm is possible from them)."""
    masks: dict[str, Volume] = {}
    if Modality.ECHO in predictors:
        for clip in study.echo:
            video = read_for_column("echo", clip.path)
            if video.pixel_spacing_mm is None:
                warnings.warn(f"{clip.path}: no pixel spacing, view {clip.view} not segmented", stacklevel=2)
                continue
            labels = _labels(grey_frames(video.frames), predictors[Modality.ECHO], segment_clip)
            masks[f"echo:{clip.view}"] = Volume(labels[:, None], (1.0, *video.pixel_spacing_mm),
                                                units="label", modality="echo", source=str(clip.path))
    if Modality.CMR in predictors and study.cmr is not None:
        cmr = read_volume(study.cmr, modality="cmr")
        labels = _labels(cmr.array, predictors[Modality.CMR], segment_volume)
        masks["cmr"] = Volume(labels, cmr.spacing_mm, cmr.affine, "label", cmr.frame_times_ms,
                              "cmr", str(study.cmr))
    return masks


def _labels(image: np.ndarray, by_label: Mapping[int, CardiacPredictor], segment) -> np.ndarray:
    """One label map from one track per structure; the LV cavity is painted last (it wins)."""
    labels = np.zeros(image.shape, dtype=np.uint8)
    for label in sorted(by_label, key=lambda lab: lab == Label.LV_CAVITY):
        labels[segment(by_label[label], image, structure=label).masks] = label
    return labels
