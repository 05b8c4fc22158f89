"""2-D training samples for a promptable segmenter: frames of a manifest's studies with one
structure's binary mask and a box prompt, all on the SAM input grid.

A frame is an echo cine frame of a view, a CMR slice of one phase or a CT axial slice. Each
series (a cine, a CMR volume, a CT volume) goes through `medsam_preprocess` whole, so its
intensity statistics are the series' own, as `CardiacPredictor.set_frames` computes them at
inference. The mask follows the image's geometry (longest-side resize, nearest-exact, zero
padding at the bottom and right); frames where the structure is absent on that grid are left
out. The box is the mask's bounding box in input pixels, XYXY with inclusive pixel indices
(MedSAM's convention), each side moved by up to `box_jitter` x the box's width (x) or height
(y), drawn from a generator seeded by (seed, frame, draw): the same key gives the same box.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mmcardio.adapters.geometry import mask_box
from mmcardio.adapters.sam_preprocess import SamInput, grey_frames, medsam_preprocess
from mmcardio.datasets.readers import read_video, read_volume
from mmcardio.errors import ConfigError, ReaderError
from mmcardio.modality import Modality
from mmcardio.records import Label
from mmcardio.study import Study

SEGMENTABLE = (Modality.ECHO, Modality.CMR, Modality.CT)


@dataclass(frozen=True)
class Series:
    """One image file and its label map: an echo view's cine, a CMR or a CT volume."""

    study_id: str
    key: str          # the manifest's masks key: "echo:A4C", "cmr", "ct"
    image: Path
    mask: Path


def study_series(studies: list[Study], modality: str) -> list[Series]:
    """The series of `modality` that have a label map, in manifest order."""
    if modality not in SEGMENTABLE:
        raise ConfigError(f"expected one of {[str(m) for m in SEGMENTABLE]}, got {modality!r}", field="modality")
    found = []
    for study in studies:
        if modality == Modality.ECHO:
            images = {f"echo:{clip.view}": clip.path for clip in study.echo}
        else:
            images = {str(modality): getattr(study, str(modality))}
        found += [Series(study.study_id, key, Path(path), Path(study.masks[key]))
                  for key, path in images.items() if path is not None and key in study.masks]
    return found


class SegmentationFrames(Dataset):
    """Frames of `studies` showing `structure`, as {"image" [3, S, S] in [0, 1], "mask"
    [1, S, S] float 0/1, "box" [4] XYXY input pixels, "input_size" [2] (rows, columns of
    the picture inside the padding)}; S is the SAM's `image_size`.

    Keys are a frame index or (frame index, draw): the draw (e.g. the epoch) picks the box
    jitter. `cache_series` decoded series are kept (whole-series preprocessing is the costly
    part; a 1024-pixel model wants a small number here).
    """

    def __init__(self, studies: list[Study], modality: str, structure: Label = Label.LV_CAVITY,
                 image_size: int = 1024, box_jitter: float = 0.0, seed: int = 0, cache_series: int = 8):
        if box_jitter < 0:
            raise ConfigError(f"expected a share of the box size >= 0, got {box_jitter}", field="box_jitter")
        self.modality, self.structure, self.image_size = Modality(modality), Label(structure), image_size
        self.box_jitter, self.seed, self.cache_series = box_jitter, seed, cache_series
        self.series = study_series(studies, modality)
        self._cache: OrderedDict[int, tuple[SamInput, torch.Tensor]] = OrderedDict()
        self.frames: list[tuple[int, int]] = []  # (series, frame of it)
        for s, series in enumerate(self.series):
            present = self._load(s)[1].flatten(1).any(dim=1)
            self.frames += [(s, int(f)) for f in torch.nonzero(present).flatten()]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw = key if isinstance(key, tuple) else (key, 0)
        s, frame = self.frames[index]
        prepared, masks = self._load(s)
        mask = masks[frame]
        box = mask_box(mask.numpy())
        if self.box_jitter > 0:
            box = jitter_box(box, self.box_jitter, np.random.default_rng([self.seed, index, draw]),
                             self.image_size)
        return {"image": prepared.image[frame].expand(3, -1, -1), "mask": mask[None].float(),
                "box": torch.as_tensor(box, dtype=torch.float), "input_size": torch.tensor(prepared.input_size)}

    def describe(self, index: int) -> dict:
        """Where frame `index` comes from: study, series key and frame (or slice) number."""
        s, frame = self.frames[index]
        return {"study_id": self.series[s].study_id, "series": self.series[s].key, "frame": frame}

    def _load(self, s: int) -> tuple[SamInput, torch.Tensor]:
        """Series `s` preprocessed: (SamInput of its grey frames [N, 1, S, S], structure masks
        [N, S, S] bool on the same grid), from the cache when there."""
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        series = self.series[s]
        image, labels = self._read_image(series), _frames(read_volume(series.mask).array)
        if image.shape != labels.shape:
            raise ReaderError(f"label map {labels.shape} does not match its image {image.shape} "
                              f"({series.image})", series.mask, series.key)
        prepared = medsam_preprocess(image, self.modality, self.image_size)
        grey = SamInput(prepared.image[:, :1].contiguous(), prepared.original_size, prepared.input_size,
                        prepared.image_size)  # one channel kept; the three are equal
        loaded = grey, masks_to_input(labels == self.structure, prepared)
        self._cache[s] = loaded
        while len(self._cache) > self.cache_series:
            self._cache.popitem(last=False)
        return loaded

    def _read_image(self, series: Series) -> np.ndarray:
        """The series as grey frames [N, H, W] in the modality's unit (CMR: phases x slices)."""
        if self.modality == Modality.ECHO:
            return grey_frames(read_video(series.image).frames)
        return _frames(read_volume(series.image, modality=str(self.modality)).array)


def _frames(array: np.ndarray) -> np.ndarray:
    """Any stack whose last two axes are the image plane -> [N, H, W] (echo label maps are
    (t, 1, y, x); CMR (phase, slice, y, x))."""
    return np.asarray(array).reshape(-1, *np.shape(array)[-2:])


def masks_to_input(masks: np.ndarray, prepared: SamInput) -> torch.Tensor:
    """Boolean masks [N, H, W] on the original grid -> [N, S, S] on `prepared`'s input grid."""
    h, w = prepared.input_size
    size = prepared.image_size
    resized = F.interpolate(torch.from_numpy(masks).float()[:, None], (h, w), mode="nearest-exact")
    return F.pad(resized, (0, size - w, 0, size - h))[:, 0] > 0.5


def jitter_box(box: np.ndarray, share: float, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Each side moved by a uniform draw in [-share, share] x the box's width (x) or height
    (y), clipped to the image; corners that cross are swapped."""
    width, height = box[2] - box[0] + 1, box[3] - box[1] + 1
    moved = box + rng.uniform(-share, share, 4) * np.array([width, height, width, height])
    moved = np.clip(moved, 0, image_size - 1)
    low, high = np.minimum(moved[:2], moved[2:]), np.maximum(moved[:2], moved[2:])
    return np.concatenate([low, high])
