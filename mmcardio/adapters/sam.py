"""Promptable segmenters: SAM built from segment-anything's own modules, SAM/MedSAM checkpoints,
our segmenter folders and a per-frame predictor with a cached image embedding.

`build_sam("vit_b")` has SAM's exact layout, so SAM and MedSAM `.pth` files load with
`load_sam_checkpoint`; `"tiny"` runs on a CPU core in a fraction of a second. Pixel statistics
are in the unit of `medsam_preprocess`'s output ([0, 1]): `"vit_b"` carries SAM's ImageNet
statistics (SAM's 0-255 values / 255), `"medsam_vit_b"` none, since MedSAM feeds its [0, 1]
images to the encoder as they are.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import save_model
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from mmcardio.adapters.sam_preprocess import SamInput, medsam_preprocess
from mmcardio.config import from_dict, read_mapping, to_dict
from mmcardio.errors import ConfigError
from mmcardio.io import atomic_path, write_json
from mmcardio.model_config import CONFIG_FILE, WEIGHTS_FILE
from mmcardio.weights import load_weights, refuse_pickled_code

MODEL_TYPE = "sam"


@dataclass
class SamConfig:
    """A SAM's sizes. Fixed as in SAM: MLP ratio 4, qkv bias, relative positions, 16 mask
    channels in the prompt encoder, a 3-layer IoU head."""

    image_size: int = 1024
    patch_size: int = 16
    encoder_width: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    global_attn_indexes: list[int] = field(default_factory=lambda: [2, 5, 8, 11])
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    multimask_outputs: int = 3
    pixel_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    pixel_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        c = self
        checks = [
            ("model_type", c.model_type == MODEL_TYPE, f"expected {MODEL_TYPE!r}, got {c.model_type!r}"),
            ("image_size", c.image_size > 0 and c.patch_size > 0 and c.image_size % c.patch_size == 0,
             f"expected a positive multiple of patch_size {c.patch_size}, got {c.image_size}"),
            ("encoder_heads", c.encoder_heads > 0 and c.encoder_width % c.encoder_heads == 0,
             f"expected a divisor of encoder_width {c.encoder_width}, got {c.encoder_heads}"),
            ("global_attn_indexes", all(0 <= i < c.encoder_depth for i in c.global_attn_indexes),
             f"expected block indexes below encoder_depth {c.encoder_depth}, got {c.global_attn_indexes}"),
            ("window_size", c.window_size >= 0, f"expected 0 (global) or a size, got {c.window_size}"),
            # the decoder's cross attention halves the width before splitting it into heads
            ("decoder_heads", c.decoder_heads > 0 and c.prompt_embed_dim % (2 * c.decoder_heads) == 0,
             f"expected a divisor of prompt_embed_dim {c.prompt_embed_dim} / 2, got {c.decoder_heads}"),
            ("prompt_embed_dim", c.prompt_embed_dim % 8 == 0,
             f"expected a multiple of 8 (the mask upscaler divides it by 8), got {c.prompt_embed_dim}"),
            ("multimask_outputs", c.multimask_outputs >= 1,
             f"expected at least 1, got {c.multimask_outputs}"),
            ("pixel_mean", len(c.pixel_mean) == 3, f"expected 3 values, got {c.pixel_mean}"),
            ("pixel_std", len(c.pixel_std) == 3 and min(c.pixel_std) > 0,
             f"expected 3 positive values, got {c.pixel_std}"),
        ]
        for name, ok, problem in checks:
            if not ok:
                raise ConfigError(problem, field=name)


SAM_CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(),
    "medsam_vit_b": SamConfig(pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0]),
    # 8x8 embedding, 32x32 low-res masks: a forward in tens of milliseconds on one core
    "tiny": SamConfig(image_size=128, encoder_width=64, encoder_depth=2, encoder_heads=2,
                      global_attn_indexes=[1], window_size=4, prompt_embed_dim=32, decoder_mlp_dim=64,
                      decoder_heads=2, iou_head_hidden_dim=32, pixel_mean=[0.0, 0.0, 0.0],
                      pixel_std=[1.0, 1.0, 1.0]),
}


def sam_config(spec: str | Path | dict | SamConfig, source: str = "<dict>") -> SamConfig:
    """A config from a registry name, a JSON/YAML file, a mapping or a config."""
    if isinstance(spec, SamConfig):
        return spec
    if isinstance(spec, str) and spec in SAM_CONFIGS:
        return dataclasses.replace(SAM_CONFIGS[spec])
    if isinstance(spec, (str, Path)):
        if not Path(spec).is_file():
            raise ConfigError(f"expected one of {sorted(SAM_CONFIGS)} or a config file", spec)
        spec, source = read_mapping(spec), str(spec)
    try:
        return from_dict(SamConfig, spec, source)
    except ConfigError as err:
        raise ConfigError(err.problem, source, err.field) from None


def build_sam(spec: str | Path | dict | SamConfig = "tiny") -> Sam:
    """A segment-anything `Sam` of the given config, as `segment_anything.build_sam` builds one."""
    config = sam_config(spec)
    grid = config.image_size // config.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.encoder_width,
            depth=config.encoder_depth, num_heads=config.encoder_heads, mlp_ratio=4,
            out_chans=config.prompt_embed_dim, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=config.window_size, global_attn_indexes=tuple(config.global_attn_indexes)),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.multimask_outputs,
            transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=config.prompt_embed_dim,
                                          mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_heads),
            transformer_dim=config.prompt_embed_dim, iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim),
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
    )


def load_sam_checkpoint(model: Sam, path: str | Path) -> Sam:
    """Load a SAM or MedSAM `.pth` (a state dict, or {"model": state dict}) into `model`.

    Only tensors are unpickled (`weights_only`): a file that asks for anything else is refused
    before it runs. Every key and shape must fit."""
    try:
        with refuse_pickled_code(path):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise ConfigError(f"not a readable torch checkpoint: {err}", path) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ConfigError(f"expected a state dict, got {type(state).__name__}", path)
    _check_state_fits(model, state, path)
    model.load_state_dict(state)
    return model


def _check_state_fits(model: nn.Module, state: dict, path: str | Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})" for k, v in expected.items()
                if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape)]
    if missing or unexpected or reshaped:
        raise ConfigError(f"checkpoint does not fit the model: missing {_few(missing)}, unexpected "
                          f"{_few(unexpected)}, other shapes {_few(reshaped)}", path)


def _few(names: list[str], k: int = 4) -> str:
    return f"{names[:k]}" + (f" and {len(names) - k} more" if len(names) > k else "")


def save_segmenter(model: Sam, config: SamConfig, folder: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` atomically into `folder`."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        write_json(tmp / CONFIG_FILE, to_dict(config))
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    return Path(folder)


def load_segmenter(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Sam, SamConfig]:
    """A segmenter folder written by `save_segmenter` -> (model, config)."""
    folder = Path(folder)
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"missing {missing}; a segmenter folder holds {CONFIG_FILE} and {WEIGHTS_FILE}",
                          folder)
    config = sam_config(folder / CONFIG_FILE)
    model = build_sam(config)
    load_weights(model, folder / WEIGHTS_FILE, fits=CONFIG_FILE, device=device)
    return model.to(device), config


def structure_logits(sam: Sam, structures: int, **decoder_inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask decoder's (logits [B, K, s, s], IoU [B, K]) of `structures` = K structures for
    one prompt: token 0 (SAM's single-mask output, which a box-trained base already gives)
    for the first, the box's own; tokens 1.. (SAM's nested-output tokens) for the others.
    `predict_masks` is the decoder's all-token step; under peft it is the active adapter's."""
    logits, iou = sam.mask_decoder.predict_masks(**decoder_inputs)
    return logits[:, :structures], iou[:, :structures]


class Prediction(NamedTuple):
    mask: np.ndarray             # bool [H, W] on the original grid
    iou: float                   # the decoder's predicted IoU of that mask
    low_res_logits: torch.Tensor  # [1, s, s]: the mask prompt for the next frame


class CardiacPredictor:
    """`SamPredictor` for a frame or a stack: preprocess once, embed each frame on first use.

    `model` is a `Sam` or a peft model of one; embeddings are cached per frame and per active
    adapter, so switching adapters never reuses another adapter's embedding. `outputs`: how many
    structures the model was trained to give for one box (`structure_logits`).
    """

    def __init__(self, model: nn.Module, modality: str, outputs: int = 1, **preprocess_options) -> None:
        self.model, self.outputs = model, outputs
        self.sam: Sam = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.modality = modality
        self.preprocess_options = preprocess_options
        self.frames: SamInput | None = None
        self.embeddings: dict[tuple[int, str | None], torch.Tensor] = {}

    def set_frames(self, frames: np.ndarray) -> None:
        """A grey image [H, W] or a cine/stack [T, H, W] in the modality's native unit."""
        image_size = self.sam.image_encoder.img_size
        prepared = medsam_preprocess(frames, self.modality, image_size, **self.preprocess_options)
        stack = prepared.image if prepared.image.ndim == 4 else prepared.image[None]
        self.frames = dataclasses.replace(prepared, image=stack)
        self.embeddings = {}

    @torch.no_grad()
    def embedding(self, frame: int = 0) -> torch.Tensor:
        """Frame `frame`'s image embedding [1, C, g, g], computed once per active adapter."""
        self._check_frame(frame)
        key = (frame, getattr(self.model, "active_adapter", None))
        if key not in self.embeddings:
            self.embed([frame])
        return self.embeddings[key]

    @torch.no_grad()
    def embed(self, frames: list[int] | None = None, batch_size: int = 8) -> None:
        """Compute the embeddings of `frames` (default: every frame) not cached yet, in
        batches: a whole cine is faster through the encoder in batches than frame by frame."""
        adapter = getattr(self.model, "active_adapter", None)
        frames = range(len(self.frames.image)) if frames is None and self.frames is not None else frames or []
        todo = [f for f in frames if self._check_frame(f) and (f, adapter) not in self.embeddings]
        h, w = self.frames.input_size if todo else (0, 0)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start: start + batch_size]
            pixels = self.frames.image[chunk, :, :h, :w].to(self.sam.device)
            for f, embedding in zip(chunk, self.sam.image_encoder(self.sam.preprocess(pixels))):
                self.embeddings[(f, adapter)] = embedding[None]

    def _check_frame(self, frame: int) -> bool:
        if self.frames is None:
            raise RuntimeError("call set_frames(...) before predicting")
        if not 0 <= frame < len(self.frames.image):
            raise ConfigError(f"expected a frame index below {len(self.frames.image)}, got {frame}",
                              field="frame")
        return True

    @torch.no_grad()
    def predict(self, frame: int = 0, box: np.ndarray | list | None = None,
                points: np.ndarray | list | None = None, labels: np.ndarray | list | None = None,
                mask_input: torch.Tensor | None = None, multimask: bool = False) -> Prediction:
        """The mask for a box (XYXY) and/or points (XY, labels 1 inside / 0 outside) in
        original pixels, or a previous frame's low-res logits. With `multimask`, the mask of
        highest predicted IoU of SAM's three nested ones. A segmenter trained on several
        structures (`outputs` > 1) gives its first, the one the box outlines."""
        if self.outputs > 1:
            return self.predict_all(frame, box, points, labels, mask_input)[0]
        logits, ious = self._decode(frame, box, points, labels, mask_input, multimask)
        best = int(ious[0].argmax())
        return self._prediction(logits[:, best: best + 1], ious[0, best])

    @torch.no_grad()
    def predict_all(self, frame: int = 0, box: np.ndarray | list | None = None,
                    points: np.ndarray | list | None = None, labels: np.ndarray | list | None = None,
                    mask_input: torch.Tensor | None = None) -> list[Prediction]:
        """One prediction per structure the segmenter learned (`outputs`), for one prompt."""
        logits, ious = structure_logits(self.sam, self.outputs, **self._decoder_inputs(frame, box, points, labels,
                                                                                       mask_input))
        return [self._prediction(logits[:, k: k + 1], ious[0, k]) for k in range(self.outputs)]

    def _decode(self, frame, box, points, labels, mask_input, multimask) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self._decoder_inputs(frame, box, points, labels, mask_input)
        return self.sam.mask_decoder(**inputs, multimask_output=multimask)

    def _decoder_inputs(self, frame, box, points, labels, mask_input) -> dict[str, torch.Tensor]:
        mask_prompt = None if mask_input is None else mask_input[None].to(self.sam.device)
        sparse, dense = self.sam.prompt_encoder(points=self._points(points, labels), boxes=self._box(box),
                                                masks=mask_prompt)
        return {"image_embeddings": self.embedding(frame), "image_pe": self.sam.prompt_encoder.get_dense_pe(),
                "sparse_prompt_embeddings": sparse, "dense_prompt_embeddings": dense}

    def _prediction(self, low_res: torch.Tensor, iou: torch.Tensor) -> Prediction:
        mask = self.frames.mask_to_original(low_res)[0, 0] > self.sam.mask_threshold
        return Prediction(mask.cpu().numpy(), float(iou), low_res[0].cpu())

    def _box(self, box: np.ndarray | list | None) -> torch.Tensor | None:
        if box is None:
            return None
        return torch.as_tensor(self.frames.box_to_input(box), dtype=torch.float, device=self.sam.device)

    def _points(self, points: np.ndarray | list | None,
                labels: np.ndarray | list | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        if points is None:
            return None
        coords = torch.as_tensor(self.frames.points_to_input(points), dtype=torch.float)
        if labels is None or len(labels) != len(coords):
            raise ConfigError(f"expected one label per point ({len(coords)}), got {labels!r}", field="labels")
        labels = torch.as_tensor(labels, dtype=torch.int)
        return coords[None].to(self.sam.device), labels[None].to(self.sam.device)
