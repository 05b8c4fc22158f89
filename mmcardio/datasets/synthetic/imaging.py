"""Shared by the echo, CMR and CT phantoms: what they return (an image with its label mask
and truth) and how they draw tissue (anti-aliased layers back to front, smooth texture)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mmcardio.records import Measurement, Video, Volume

PAINT_BLOCK_VOXELS = 1 << 16  # per block of `paint_layer`: its float temporaries fit in L2


@dataclass
class EchoPhantom:
    """An apical cine with its [T, H, W] uint8 label mask (`mmcardio.records.Label`),
    the frames of largest/smallest model LV volume, and the 3-D model's truth."""

    video: Video
    mask: np.ndarray
    ed_frame: int
    es_frame: int
    truth: dict[str, Measurement]


@dataclass
class VolumePhantom:
    """A CMR cine or CT volume, its label mask on the same grid (uint8, units "label"), the
    truth, and for cines the phases of largest/smallest model LV volume."""

    volume: Volume
    mask: Volume
    truth: dict[str, Measurement]
    ed_phase: int | None = None
    es_phase: int | None = None


def soft_inside(margin_mm: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Fraction of a pixel inside a boundary `margin_mm` away (positive inside): anti-aliasing."""
    return np.clip(0.5 + margin_mm / pixel_mm, 0.0, 1.0)


def paint_layer(
    image: np.ndarray,
    labels: np.ndarray,
    margin_mm: np.ndarray,
    value: float | np.ndarray,
    pixel_mm: float,
    label: int | None = None,
) -> None:
    """Paint one tissue over `image` in place, blending by its anti-aliased inside-fraction;
    where the pixel centre is inside (margin > 0), set `label` too. Layers go back to front.

    Works through `image` in blocks of its first axis so that the temporaries stay in the CPU
    cache (whole-volume temporaries made a cine up to twice as slow); every voxel's arithmetic
    is the same as on the whole array."""
    margins = np.broadcast_to(margin_mm, image.shape)
    # A scalar stays as given: broadcasting it would make an array, which changes the dtype.
    values = np.broadcast_to(value, image.shape) if np.ndim(value) else None
    rows = max(1, PAINT_BLOCK_VOXELS // max(1, image[0].size))
    for start in range(0, len(image), rows):
        block = slice(start, start + rows)
        part, margin = image[block], margins[block]
        tissue = value if values is None else values[block]
        part += soft_inside(margin, pixel_mm) * (tissue - part)
        if label is not None:
            labels[block][margin > 0] = label


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: int = 8) -> np.ndarray:
    """Low-frequency random texture (unit std) by cubic upsampling of a coarse Gaussian grid."""
    coarse = rng.standard_normal(tuple(max(2, -(-n // cell) + 1) for n in shape))
    field = ndimage.zoom(
        coarse,
        [n / c for n, c in zip(shape, coarse.shape)],
        order=3,
        grid_mode=True,
        mode="nearest",
    )[tuple(slice(0, n) for n in shape)]
    return ((field - field.mean()) / (field.std() + 1e-9)).astype(np.float32)
