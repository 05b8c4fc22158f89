"""CT encoder: MONAI's 3-D ViT (mean of its patch tokens) or MONAI's 3-D ResNet over the
cardiac CT volume.

`input_pool` max-pools the volume first: it cuts the cost, and a millimetre-sized calcified
plaque is a few bright voxels, which a max keeps while interpolation or a linear projection of a
large patch averages it away. On a few hundred studies a ViT from scratch does not learn to
find such plaques, while the ResNet's convolutions (translation-equivariant, pooled globally) do:
the tiny config uses the ResNet, the base config the ViT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from monai.networks.nets import ViT
from torch import nn

from mmcardio.encoders.resnet import resnet
from mmcardio.errors import ConfigError

BACKBONES = ("vit", "resnet")


@dataclass
class CTEncoderConfig:
    """CT tower. Inputs: volume [n, 1, D, H, W] of exactly input_size (z, y, x).

    backbone "vit": width, depth, heads, mlp_ratio, dropout and patch_size (on the pooled grid).
    backbone "resnet": resnet_layers (basic blocks per stage; [1, 1, 1, 1] is ResNet-10) and
    widen_factor; its pooled features are projected to `width`.
    """

    backbone: str = "vit"
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    input_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    patch_size: list[int] = field(default_factory=lambda: [16, 16, 16])
    input_pool: int = 1
    resnet_layers: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    widen_factor: float = 1.0

    @property
    def grid(self) -> list[int]:
        """The size the backbone sees, after `input_pool`."""
        return [s // self.input_pool for s in self.input_size]

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"expected one of {BACKBONES}, got {self.backbone!r}", field="backbone")
        if len(self.input_size) != 3 or any(s % self.input_pool for s in self.input_size):
            raise ConfigError(
                f"input_size {self.input_size} must be [z, y, x] divisible by input_pool "
                f"{self.input_pool}", field="input_size")
        if self.backbone == "vit":
            self._check_vit()

    def _check_vit(self) -> None:
        if len(self.patch_size) != 3 or any(s % p for s, p in zip(self.grid, self.patch_size)):
            raise ConfigError(
                f"the pooled grid {self.grid} is not a whole number of patches "
                f"{self.patch_size} (both [z, y, x])", field="patch_size")
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
        self.pool = nn.MaxPool3d(c.input_pool) if c.input_pool > 1 else nn.Identity()
        if c.backbone == "resnet":
            self.net = resnet(3, 1, c.width, c.resnet_layers, c.widen_factor)
        else:
            self.net = ViT(
                in_channels=1,
                img_size=c.grid,
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
        out = self.net(self.pool(volume))
        if self.config.backbone == "resnet":
            return out
        tokens, _ = out  # no CLS token when classification=False: mean of tokens
        return tokens.mean(1)
