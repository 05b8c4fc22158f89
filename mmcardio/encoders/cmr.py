"""CMR encoder: factorised space-then-(time, slice) transformer over cine stacks.

A cine study is a [T, Z, H, W] stack (cardiac phases x short-axis slices). Every (t, z) image
is patch-embedded and encoded by a small spatial transformer (ViViT's factorised encoder);
its mean token then gets a phase embedding and a slice embedding, and a second transformer
attends across all (t, z) images, which is where wall motion (t) and base-to-apex coverage
(z) meet. Factorising keeps the cost linear in T x Z instead of quadratic in all patches.

The "resnet" backbone is MONAI's 2-D ResNet on each short-axis slice with the cardiac phases
as input channels, its features averaged over the slices (a volume is a sum over slices). Its
first convolution sees every pixel through the whole cycle, so the blood pool shrinking from
end-diastole to end-systole (the ejection fraction) is a local contrast rather than a relation
between distant tokens. With `temporal_summary`, each pixel's std and range over the phases
are two more channels, the same whatever phase the cine starts at. Like the CT tower's ResNet,
it learns from a few hundred studies where the transformer from scratch does not, so the tiny
config uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mmcardio.encoders.ecg import _embedding, transformer
from mmcardio.encoders.resnet import resnet
from mmcardio.errors import ConfigError

BACKBONES = ("transformer", "resnet")


@dataclass
class CMREncoderConfig:
    """CMR tower. Inputs: cine [n, T, Z, H, W] with T <= input_phases (the resnet takes
    exactly input_phases), Z <= input_slices.
    backbone "transformer": depth, spatial_depth, heads, mlp_ratio, dropout, patch_size.
    backbone "resnet": resnet_layers (basic blocks per stage; [1, 1, 1, 1] is ResNet-10),
    widen_factor and temporal_summary (each pixel's std and range over the phases as two more
    input channels); its pooled features are projected to `width`.

    cmr-tiny uses the resnet, as it learned LVEF where the transformer from scratch did not
    (correlation 0.90 against 0.45, trained on LVEF; 2026-11-22), with temporal_summary, which
    cut test CMR LVEF MAE from 7.04 to 4.84 (2026-12-03; figures in docs/experiments.md).
    """

    backbone: str = "transformer"
    width: int = 512
    depth: int = 6  # attention across (t, z) images
    spatial_depth: int = 4  # attention across patches of one image
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    input_phases: int = 16
    input_slices: int = 10
    input_size: list[int] = field(default_factory=lambda: [128, 128])
    patch_size: int = 16
    resnet_layers: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    widen_factor: float = 1.0
    temporal_summary: bool = False

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"expected one of {BACKBONES}, got {self.backbone!r}", field="backbone")
        if self.temporal_summary and self.backbone != "resnet":
            raise ConfigError("temporal_summary is an input of the resnet backbone, got backbone "
                              f"{self.backbone!r}", field="temporal_summary")
        patched = self.backbone == "transformer"
        if len(self.input_size) != 2 or (patched and any(s % self.patch_size for s in self.input_size)):
            raise ConfigError(
                f"input_size {self.input_size} is not a whole number of "
                f"{self.patch_size}-pixel patches",
                field="input_size",
            )


class CMREncoder(nn.Module):
    """`forward(cine [n, T, Z, H, W]) -> [n, width]`."""

    input_keys = ("cine",)
    input_ndim = 5  # of the main input, batch included

    def __init__(self, config: CMREncoderConfig):
        super().__init__()
        c = self.config = config
        self.width = c.width
        if c.backbone == "resnet":
            self.net = resnet(2, c.input_phases, c.width, c.resnet_layers, c.widen_factor,
                              norm="group", stem_stride=2, temporal_summary=c.temporal_summary)
            return
        n_patches = (c.input_size[0] // c.patch_size) * (c.input_size[1] // c.patch_size)
        self.patch = nn.Conv2d(1, c.width, c.patch_size, stride=c.patch_size)
        self.space_embed = _embedding(n_patches, c.width)
        self.spatial = transformer(c.width, c.spatial_depth, c.heads, c.mlp_ratio, c.dropout)
        self.phase_embed = _embedding(c.input_phases, c.width)
        self.slice_embed = _embedding(c.input_slices, c.width)
        self.cls_token = _embedding(1, 1, c.width)
        self.encoder = transformer(c.width, c.depth, c.heads, c.mlp_ratio, c.dropout)
        self.norm = nn.LayerNorm(c.width)

    def forward(self, cine: torch.Tensor) -> torch.Tensor:
        c = self.config
        if (
            cine.ndim != 5
            or list(cine.shape[3:]) != list(c.input_size)
            or cine.shape[1] > c.input_phases
            or cine.shape[2] > c.input_slices
            or (c.backbone == "resnet" and cine.shape[1] != c.input_phases)
        ):
            phases = f"T={c.input_phases}" if c.backbone == "resnet" else f"T<={c.input_phases}"
            raise ValueError(
                f"expected CMR cine [n, {phases}, Z<={c.input_slices}, "
                f"{c.input_size[0]}, {c.input_size[1]}], got {tuple(cine.shape)}"
            )
        if c.backbone == "resnet":  # slices as images, phases as channels
            slices = cine.transpose(1, 2).flatten(0, 1)
            return self.net(slices).unflatten(0, cine.shape[:1] + cine.shape[2:3]).mean(1)
        n, phases, slices = cine.shape[:3]
        x = (
            self.patch(cine.reshape(n * phases * slices, 1, *cine.shape[3:]))
            .flatten(2)
            .transpose(1, 2)
        )
        x = self.spatial(x + self.space_embed).mean(1).reshape(n, phases, slices, self.width)
        x = x + self.phase_embed[:phases, None] + self.slice_embed[None, :slices]
        x = torch.cat([self.cls_token.expand(n, -1, -1), x.flatten(1, 2)], 1)
        return self.norm(self.encoder(x))[:, 0]
