"""CMR encoder: factorised space-then-(time, slice) transformer over cine stacks.

A cine study is a [T, Z, H, W] stack (cardiac phases x short-axis slices). Every (t, z) image
is patch-embedded and encoded by a small spatial transformer (ViViT's factorised encoder);
its mean token then gets a phase embedding and a slice embedding, and a second transformer
attends across all (t, z) images, which is where wall motion (t) and base-to-apex coverage
(z) meet. Factorising keeps the cost linear in T x Z instead of quadratic in all patches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mmcardio.encoders.ecg import _embedding, transformer
from mmcardio.errors import ConfigError


@dataclass
class CMREncoderConfig:
    """CMR tower. Inputs: cine [n, T, Z, H, W] with T <= input_phases, Z <= input_slices."""

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

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or any(s % self.patch_size for s in self.input_size):
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
        ):
            raise ValueError(
                f"expected CMR cine [n, T<={c.input_phases}, Z<={c.input_slices}, "
                f"{c.input_size[0]}, {c.input_size[1]}], got {tuple(cine.shape)}"
            )
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
