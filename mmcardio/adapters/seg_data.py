"""2-D training samples for a promptable segmenter: frames of a manifest's studies with their
structures' binary masks and a box prompt, all on the SAM input grid.

A frame is an echo cine frame of a view, a CMR slice of one phase or a CT axial slice. Each
series (a cine, a CMR volume, a CT volume) goes through `medsam_preprocess` whole, so its
intensity statistics are the series' own, as `CardiacPredictor.set_frames` computes them at
inference. The mask follows the image's geometry (longest-side resize, nearest-exact, zero
padding at the bottom and right); frames where the structure is absent on that grid are left
out. The box is the mask's bounding box in input pixels, XYXY with inclusive pixel indices
(MedSAM's convention), each side moved by up to `box_jitter` x the box's width (x) or height
(y), drawn from a generator seeded by (seed, item, draw): the same key gives the same box.

For training, `skip_unreadable` reads every series once up front: a study with an image or
label map that cannot be read is left out whole (its reason in `failed`), never replaced.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from torch.utils.data import Dataset

from mmcardio.adapters.geometry import mask_box
from mmcardio.adapters.sam_preprocess import grey_frames, medsam_preprocess
from mmcardio.datasets.readers import read_video, read_volume
from mmcardio.errors import ConfigError, ReaderError
from mmcardio.failures import failure_reason
from mmcardio.modality import Modality
from mmcardio.records import STRUCTURES
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


@dataclass
class SeriesIndex:
    """What training uses of one series: its frames showing a structure (indices into the
    series), their label maps on the input grid [n, S, S] uint8, and the input geometry."""

    frames: np.ndarray
    labels: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SegmentationFrames(Dataset):
    """Frames of `studies` showing the first of `structures` (names of `records.STRUCTURES`),
    as {"image" [3, S, S] in [0, 1], "mask" [K, S, S] float 0/1 (one channel per structure),
    "box" [4] XYXY input pixels, "input_size" [2] (rows, columns of the picture inside the
    padding)}; S is the SAM's `image_size`. The box is always the first structure's (the
    anchor: e.g. the LV cavity); the others are what the same box also asks for (e.g. the
    epicardium around that cavity), SAM's nested part / whole outputs.

    Keys are an item index or (item index, draw): the draw (e.g. the epoch) picks the box
    jitter. Only label maps are read up front; a series' image is decoded and preprocessed on
    first use and kept (as MedSAM keeps its images, in 8 bits) while the kept ones fit in
    `cache_bytes`: training draws frames of every series in random order, so a cache that
    cannot hold the training set decodes a series for nearly every frame. `frames_per_series`
    keeps that many frames per series and `max_series` that many series, evenly spaced (None:
    all of them).

    skip_unreadable: decode every series once here (kept in the cache while it fits) and
    leave out each study with a series that cannot be read, its reason in `failed`
    ({study_id: reason}; `studies_read` counts the studies tried). Without it a bad file
    raises, here (label map) or on first use (image).
    """

    def __init__(self, studies: list[Study], modality: str, structures: Sequence[str] = ("lv_cavity",),
                 image_size: int = 1024, box_jitter: float = 0.0, seed: int = 0,
                 frames_per_series: int | None = None, max_series: int | None = None,
                 cache_bytes: int = 2**31, skip_unreadable: bool = False):
        if box_jitter < 0:
            raise ConfigError(f"expected a share of the box size >= 0, got {box_jitter}", field="box_jitter")
        unknown = [name for name in structures if name not in STRUCTURES]
        if unknown or not structures:
            raise ConfigError(f"expected names among {sorted(STRUCTURES)}, got {list(structures)}",
                              field="structures")
        self.modality, self.structures, self.image_size = Modality(modality), tuple(structures), image_size
        self.box_jitter, self.seed, self.cache_bytes = box_jitter, seed, cache_bytes
        found = study_series(studies, modality)
        chosen = [found[i] for i in _select(np.arange(len(found)), max_series)]
        self.studies_read = len({series.study_id for series in chosen})
        self.failed: dict[str, str] = {}
        read, held = [], 0
        for series in chosen:
            got = self._read_series(series, frames_per_series, skip_unreadable)
            if got is not None and got[2] is not None:
                if held + got[2].numel() > cache_bytes:
                    got = (*got[:2], None)  # beyond the cache: decoded again on use
                else:
                    held += got[2].numel()
            read.append(got)
        kept = [r for r in read if r is not None and r[0].study_id not in self.failed]
        self.series = [series for series, _, _ in kept]
        self.index: list[SeriesIndex] = [index for _, index, _ in kept]
        self._images: OrderedDict[int, torch.Tensor] = OrderedDict(
            (s, pixels) for s, (_, _, pixels) in enumerate(kept) if pixels is not None)
        self.items: list[tuple[int, int]] = []  # (series, row of its index)
        for s, index in enumerate(self.index):
            self.items += [(s, row) for row in range(len(index.frames))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        item, draw = key if isinstance(key, tuple) else (key, 0)
        s, row = self.items[item]
        found = self.index[s]
        masks = np.stack([_inside(found.labels[row], name) for name in self.structures])
        box = mask_box(masks[0])
        if self.box_jitter > 0:
            box = jitter_box(box, self.box_jitter, np.random.default_rng([self.seed, item, draw]),
                             self.image_size)
        image = self._image(s)[row].float().div(255)
        return {"image": image.expand(3, -1, -1), "mask": torch.from_numpy(masks).float(),
                "box": torch.as_tensor(box, dtype=torch.float), "input_size": torch.tensor(found.input_size)}

    def describe(self, item: int) -> dict:
        """Where item `item` comes from: study, series key and frame (or slice)."""
        s, row = self.items[item]
        return {"study_id": self.series[s].study_id, "series": self.series[s].key,
                "frame": int(self.index[s].frames[row])}

    def _read_series(self, series: Series, keep: int | None, check_image: bool,
                     ) -> tuple[Series, SeriesIndex, torch.Tensor | None] | None:
        """The series, its index and, with `check_image`, its pixels; None (and its study in
        `failed`) when `check_image` and a file cannot be read."""
        if series.study_id in self.failed:
            return None  # the study is left out whole: no need to read its other series
        try:
            index = self._index_series(series, keep)
            if not check_image or not len(index.frames):  # a series no frame of which is used is not read
                return series, index, None
            return series, index, self._decode(series, index)
        except Exception as err:  # any failed read leaves the study out, with its reason
            if not check_image:
                raise
            self.failed[series.study_id] = failure_reason(err)
            return None

    def _index_series(self, series: Series, keep: int | None) -> SeriesIndex:
        """The series' label maps on the input grid, only the frames that show the anchor."""
        labels = _frames(read_volume(series.mask).array).astype(np.uint8)
        original = (labels.shape[-2], labels.shape[-1])
        input_size = ResizeLongestSide.get_preprocess_shape(*original, self.image_size)
        on_grid = labels_to_input(labels, input_size, self.image_size)
        present = _inside(on_grid, self.structures[0]).reshape(len(on_grid), -1).any(1)
        frames = _select(np.flatnonzero(present), keep)
        return SeriesIndex(frames, on_grid[frames], original, input_size)

    def _image(self, s: int) -> torch.Tensor:
        """Series `s`'s used frames preprocessed, uint8 [n, S, S] (one grey channel), cached."""
        if s in self._images:
            self._images.move_to_end(s)
            return self._images[s]
        pixels = self._decode(self.series[s], self.index[s])
        self._images[s] = pixels
        while sum(p.numel() for p in self._images.values()) > self.cache_bytes and len(self._images) > 1:
            self._images.popitem(last=False)
        return pixels

    def _decode(self, series: Series, found: SeriesIndex) -> torch.Tensor:
        """The series' used frames read and preprocessed, uint8 [n, S, S]."""
        image = self._read_image(series)
        if image.shape[-2:] != found.original_size or len(image) <= found.frames.max(initial=-1):
            raise ReaderError(f"label map of {len(image)}x{found.original_size} expected, the image is "
                              f"{image.shape} ({series.image})", series.mask, series.key)
        # whole-series statistics, as `CardiacPredictor.set_frames` computes them at inference
        prepared = medsam_preprocess(image, self.modality, self.image_size, frames=found.frames)
        return prepared.image[:, 0].mul(255).round().to(torch.uint8)

    def _read_image(self, series: Series) -> np.ndarray:
        """The series as grey frames [N, H, W] in the modality's unit (CMR: phases x slices)."""
        if self.modality == Modality.ECHO:
            return grey_frames(read_video(series.image).frames)
        return _frames(read_volume(series.image, modality=str(self.modality)).array)


def _inside(labels: np.ndarray, structure: str) -> np.ndarray:
    """Where label maps (uint8) hold one of `structure`'s labels (a lookup: np.isin is slower)."""
    lookup = np.zeros(256, dtype=bool)
    lookup[list(STRUCTURES[structure])] = True
    return lookup[labels]


def _select(rows: np.ndarray, keep: int | None) -> np.ndarray:
    """At most `keep` of `rows`, evenly spaced (all of them when None)."""
    if keep is None or len(rows) <= keep:
        return rows
    return rows[np.linspace(0, len(rows) - 1, keep).round().astype(np.intp)]


def _frames(array: np.ndarray) -> np.ndarray:
    """Any stack whose last two axes are the image plane -> [N, H, W] (echo label maps are
    (t, 1, y, x); CMR (phase, slice, y, x))."""
    return np.asarray(array).reshape(-1, *np.shape(array)[-2:])


def labels_to_input(labels: np.ndarray, input_size: tuple[int, int], image_size: int) -> np.ndarray:
    """Label maps [N, H, W] on the original grid -> uint8 [N, S, S] on the input grid (nearest,
    zero padding at the bottom and right, as the image is padded)."""
    h, w = input_size
    resized = F.interpolate(torch.from_numpy(np.asarray(labels, dtype=np.uint8))[:, None].float(), (h, w),
                            mode="nearest-exact")
    return F.pad(resized, (0, image_size - w, 0, image_size - h))[:, 0].to(torch.uint8).numpy()


def jitter_box(box: np.ndarray, share: float, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Each side moved by a uniform draw in [-share, share] x the box's width (x) or height
    (y), clipped to the image; corners that cross are swapped."""
    width, height = box[2] - box[0] + 1, box[3] - box[1] + 1
    moved = box + rng.uniform(-share, share, 4) * np.array([width, height, width, height])
    moved = np.clip(moved, 0, image_size - 1)
    low, high = np.minimum(moved[:2], moved[2:]), np.maximum(moved[:2], moved[2:])
    return np.concatenate([low, high])
