"""MedSAM preprocessing: intensities to [0, 1] as MedSAM's `pre_CT_MR.py` does, then SAM's
longest-side resize and zero padding, with the geometry that maps prompts in and masks out.

Intensities (statistics over the whole array given: a frame, a cine or a volume, as MedSAM
takes them per volume): CT is clipped to a window (level/width in HU, soft tissue by default);
CMR and echo are clipped to the 0.5-99.5 percentiles of their non-zero pixels and keep a zero
background at zero; then min-max to [0, 1]. Geometry: `ResizeLongestSide` sizes the image and
maps prompts; the pixels are resized with bilinear antialiasing (SAM's torch path, without its
`apply_image` uint8 round trip) and padded with zeros at the bottom and right.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.transforms.v2.functional import rgb_to_grayscale

from mmcardio.errors import ConfigError
from mmcardio.modality import Modality

#: MedSAM's CT window (level, width) in HU: soft tissue.
SOFT_TISSUE_WINDOW = (40.0, 400.0)
#: MedSAM's MR intensity clip, percentiles of the non-zero pixels.
PERCENTILES = (0.5, 99.5)
PERCENTILE_MODALITIES = (Modality.CMR, Modality.ECHO)


@dataclass(frozen=True)
class SamInput:
    """A preprocessed image or stack and the geometry between it and the original grid.

    image: [3, S, S] or [T, 3, S, S] float32 in [0, 1], S the model's image size; the resized
    picture fills `input_size` (rows, columns) at the top left, zeros pad the rest.
    """

    image: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: int

    def box_to_input(self, box: np.ndarray | list) -> np.ndarray:
        """XYXY boxes ([4] or [B, 4]) in original pixels -> [B, 4] in model-input pixels."""
        boxes = np.asarray(box, dtype=np.float64).reshape(-1, 4)
        return ResizeLongestSide(self.image_size).apply_boxes(boxes, self.original_size)

    def points_to_input(self, points: np.ndarray | list) -> np.ndarray:
        """XY points [N, 2] in original pixels -> [N, 2] in model-input pixels."""
        coords = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return ResizeLongestSide(self.image_size).apply_coords(coords, self.original_size)

    def mask_to_original(self, logits: torch.Tensor) -> torch.Tensor:
        """Low-res mask logits [B, C, s, s] -> [B, C, H, W] on the original grid: the steps
        of `Sam.postprocess_masks`, here so training code can map masks without a model."""
        square = F.interpolate(logits, (self.image_size, self.image_size), mode="bilinear",
                               align_corners=False)
        unpadded = square[..., : self.input_size[0], : self.input_size[1]]
        return F.interpolate(unpadded, self.original_size, mode="bilinear", align_corners=False)


def medsam_preprocess(image: np.ndarray, modality: str, image_size: int = 1024,
                      window: tuple[float, float] = SOFT_TISSUE_WINDOW,
                      percentiles: tuple[float, float] = PERCENTILES,
                      frames: np.ndarray | None = None) -> SamInput:
    """A grey image [H, W] or stack [T, H, W] (HU for CT) -> `SamInput` for a SAM whose
    image encoder takes `image_size` pixels. `frames`: only these frames of a stack come out,
    with the intensity statistics of the whole stack."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise ConfigError(f"expected a grey image [H, W] or a stack [T, H, W], got shape {array.shape}",
                          field="image")
    unit = normalise_intensity(array, modality, window, percentiles)
    unit = unit if frames is None or array.ndim == 2 else unit[np.asarray(frames)]
    original_size = (array.shape[-2], array.shape[-1])
    input_size = ResizeLongestSide.get_preprocess_shape(*original_size, image_size)
    frames = torch.from_numpy(unit).float().reshape(-1, 1, *original_size)
    resized = F.interpolate(frames, input_size, mode="bilinear", align_corners=False, antialias=True)
    padded = F.pad(resized, (0, image_size - input_size[1], 0, image_size - input_size[0]))
    rgb = padded.expand(-1, 3, -1, -1).contiguous()
    return SamInput(rgb if array.ndim == 3 else rgb[0], original_size, input_size, image_size)


def normalise_intensity(array: np.ndarray, modality: str,
                        window: tuple[float, float] = SOFT_TISSUE_WINDOW,
                        percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """MedSAM's intensity step: clip (CT window or percentiles), then min-max to [0, 1]."""
    if modality == Modality.CT:
        level, width = window
        return _min_max(np.clip(array, level - width / 2, level + width / 2))
    if modality in PERCENTILE_MODALITIES:
        foreground = array[array > 0]
        if foreground.size == 0:
            return np.zeros_like(array)
        low, high = np.percentile(foreground, percentiles)
        unit = _min_max(np.clip(array, low, high))
        unit[array == 0] = 0  # MedSAM keeps the background black
        return unit
    expected = [str(m) for m in (Modality.CT, *PERCENTILE_MODALITIES)]
    raise ConfigError(f"expected one of {expected}, got {modality!r}", field="modality")


def _min_max(array: np.ndarray) -> np.ndarray:
    """To [0, 1]; a constant image becomes zeros (MedSAM's 1e-8 floor on the range)."""
    low = array.min()
    return (array - low) / max(array.max() - low, 1e-8)


def grey_frames(frames: np.ndarray) -> np.ndarray:
    """Cine frames [T, H, W] or RGB [T, H, W, 3] as grey [T, H, W] (ITU-R 601 luma, torchvision's
    conversion): one conversion for training frames and for the clips a segmenter tracks."""
    if frames.ndim == 3:
        return frames
    rgb = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    return rgb_to_grayscale(rgb).squeeze(1).numpy()
