"""CT encoder: MONAI's 3-D ViT over the cardiac CT volume, mean of its patch tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from monai.networks.nets import ViT
from torch import nn

from mmcardio.errors import ConfigError


@dataclass
class CTEncoderConfig:
    """CT tower. Inputs: volume [n, 1, D, H, W] of exactly input_size (z, y, x)."""

    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    input_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    patch_size: list[int] = field(default_factory=lambda: [16, 16, 16])

    def __post_init__(self) -> None:
        if (
            len(self.input_size) != 3
            or len(self.patch_size) != 3
            or any(s % p for s, p in zip(self.input_size, self.patch_size))
        ):
            raise ConfigError(
                f"input_size {self.input_size} is not a whole number of "
                f"patches {self.patch_size} (both [z, y, x])",
                field="patch_size",
            )
        if self.width % self.heads:
            raise ConfigError(
                f"width {self.width} is not divisible by heads {self.heads}", field="heads"
            )


class CTEncoder(nn.Module):
    """`forward(volume [n, 1, D, H, W]) -> [n, width]`."""

    input_keys = ("volume",)
    input_ndim = 5  # of the main input, batch included

    def __init__(self, config: CTEncoderConfig):
        super().__init__()
        c = self.config = config
        self.width = c.width
        self.vit = ViT(
            in_channels=1,
            img_size=c.input_size,
            patch_size=c.patch_size,
            hidden_size=c.width,
            mlp_dim=int(c.width * c.mlp_ratio),
            num_layers=c.depth,
            num_heads=c.heads,
            classification=False,
            dropout_rate=c.dropout,
            spatial_dims=3,
            qkv_bias=True,
        )

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        if (
            volume.ndim != 5
            or volume.shape[1] != 1
            or list(volume.shape[2:]) != list(self.config.input_size)
        ):
            raise ValueError(
                f"expected CT volume [n, 1, {', '.join(map(str, self.config.input_size))}], "
                f"got {tuple(volume.shape)}"
            )
        tokens, _ = self.vit(volume)  # no CLS token when classification=False: mean of tokens
        return tokens.mean(1)
