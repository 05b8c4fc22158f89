"""The plain-PyTorch reference the ECG tower is compared with: a 12-lead patch transformer
of the same size, as MERL-style ECG towers are built (one token per time patch of all 12
leads), so the cost of our lead-aware tokens shows as a ratio measured in the same run."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcardio.encoders.ecg import N_LEADS


class PlainECGTransformer(nn.Module):
    """[n, 12, samples] -> unit-norm [n, embed_dim]: Linear(12 x patch samples, width) per
    time patch, a CLS token and learned positions, nn.TransformerEncoder (pre-norm, GELU),
    a final LayerNorm, the CLS token through a linear head, L2-normalised (as our towers'
    embeddings are)."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float, patch_samples: int,
                 samples: int, embed_dim: int):
        super().__init__()
        self.patch_samples = patch_samples
        self.stem = nn.Linear(N_LEADS * patch_samples, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, 1 + samples // patch_samples, width))
        layer = nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), 0.0, "gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, embed_dim, bias=False)

    @classmethod
    def like(cls, ecg_config: dict, samples: int, embed_dim: int) -> PlainECGTransformer:
        """The reference with the width, depth, heads, MLP ratio and patch length of an ECG
        tower's config (as `CardioCLIPConfig.towers["ecg"]` holds it)."""
        patch = round(ecg_config["input_fs"] * ecg_config["patch_ms"] / 1000)
        return cls(ecg_config["width"], ecg_config["depth"], ecg_config["heads"],
                   ecg_config["mlp_ratio"], patch, samples, embed_dim)

    @property
    def tokens(self) -> int:
        """Tokens per ECG: the time patches and the CLS token."""
        return self.position.shape[1]

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        patches = signal.unflatten(-1, (-1, self.patch_samples)).transpose(1, 2).flatten(2)
        x = self.stem(patches)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.position
        return F.normalize(self.head(self.norm(self.encoder(x))[:, 0]), dim=-1)
