"""MONAI's ResNet as a feature extractor for the convolutional towers (CT, CMR, echo).

`norm="group"` swaps every BatchNorm for GroupNorm after construction: MONAI 1.6's ResNet
passes its own `norm` argument to the stem only, not to the residual blocks
(Project-MONAI/MONAI PR #9028). A process's batch holds only a few studies of one modality,
so batch statistics are noisy in training and differ from the running ones in evaluation;
GroupNorm computes the same thing in both.

The echo and CMR towers feed a cine's frames to it as channels. `temporal_summary` adds each
pixel's std and range (max - min) over those channels as two more: a cine may start at any
phase, so the channel that holds end-diastole varies, while these two do not.
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets.resnet import ResNet, get_inplanes
from torch import nn

NORMS = ("batch", "group")
GROUPS = 8  # GroupNorm groups (fewer when a layer has fewer channels)


def resnet(spatial_dims: int, in_channels: int, out_features: int, layers: list[int],
           widen_factor: float, norm: str = "batch", stem_stride: int = 1,
           temporal_summary: bool = False) -> nn.Module:
    """A basic-block ResNet (`layers` blocks per stage) ending in a linear layer to `out_features`.

    stem_stride: of the first convolution. MONAI's default is 1; 2 is the usual ResNet stem,
    which makes every later layer 4x cheaper in 2-D. norm: one of NORMS. temporal_summary:
    the input's channels are frames of a cine; read their per-pixel std and range as well.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    net = ResNet("basic", layers, get_inplanes(), spatial_dims=spatial_dims,
                 n_input_channels=in_channels + 2 * temporal_summary, num_classes=out_features,
                 widen_factor=widen_factor, conv1_t_stride=stem_stride)
    if norm == "group":
        _batch_to_group_norm(net)
    return nn.Sequential(TemporalSummary(), net) if temporal_summary else net


class TemporalSummary(nn.Module):
    """[n, T, ...] -> [n, T + 2, ...]: the T frames, then each pixel's std and range over them."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        spread = frames.amax(1, keepdim=True) - frames.amin(1, keepdim=True)
        return torch.cat([frames, frames.std(1, keepdim=True), spread], 1)


def _batch_to_group_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            setattr(module, name, nn.GroupNorm(math.gcd(GROUPS, child.num_features), child.num_features))
        else:
            _batch_to_group_norm(child)
