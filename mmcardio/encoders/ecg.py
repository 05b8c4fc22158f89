"""ECG encoder: per-lead tokens, attention within each lead, fusion across leads, then a
transformer over time; and an MAE head.

Each lead is cut into ~100-200 ms patches; a small convolution inside each patch embeds it at
`lead_width`, with a learned lead embedding and time embedding. With `context_stem`, a second
convolution branch runs over the whole lead (a receptive field of about half a second) and adds
to each token what lies around its patch: the token of a QRS then also sees the P wave before
it. `lead_depth` narrow transformer layers attend over time within each lead (leads share the
weights; the lead embedding tells them apart). At each time step, the recorded leads' tokens,
each projected by that lead's own weights, are averaged into one token of `width`, and the
`depth` wide layers attend over those time tokens.

Why factorized (figures in docs/experiments.md, 2026-12-07): one transformer over all
(lead, time) tokens costs its wide layers 12 times the tokens of a plain 12-lead patch
transformer (187 against 15 GFLOP per training step of a 10-s ECG in ecg-base). Here the wide
layers see one token per time step, as the plain model does, and only the narrow per-lead
layers see 12; what lead tokens buy is kept. Leads that were not recorded are never tokens:
they are skipped by the per-lead layers and left out of the fusion's mean (a learned empty
token stands for a time step with none), so a 1-lead or 8-lead ECG is the same model on fewer
lead tokens.

The MAE head (as in ECG-FM / MERL-style masked modelling) hides random patches or whole leads
and reconstructs them in millivolts: hidden patches enter the per-lead layers as a learned mask
token and are left out of the fusion, and a decoder over the time tokens predicts all 12 leads
of every patch. `reconstruct_leads` uses it to derive all 12 leads from any recorded subset
(e.g. lead I of a wearable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mmcardio.errors import ConfigError
from mmcardio.losses import masked_mse
from mmcardio.records import STANDARD_LEADS

N_LEADS = len(STANDARD_LEADS)


@dataclass
class ECGEncoderConfig:
    """ECG tower. Inputs are [n, 12, input_samples] in mV at input_fs Hz, standard lead order.

    Why ecg-tiny has its values (figures in docs/experiments.md): depth 3 with 4 heads, as 2
    and 2 gave test P@10 0.797-0.801 against 0.806-0.813 for about 15 s more alignment
    (2026-12-06); `context_stem` on, as it raised first-degree AV block AUROC from 0.64 to 0.91
    (2026-12-01); `pool` "cls", as "mean" gave test P@10 0.746 against 0.808 (2026-12-02).
    Since the factorized tower (2026-12-07): width 128 and lead_depth 2, as width 64 and one
    layer within each lead gave ECG macro AUROC 0.900 against 0.907 and P@10 0.815 against
    0.824 (one run each).
    """

    width: int = 512  # of the time tokens and the wide layers
    depth: int = 8
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    lead_width: int = 128  # of the per-lead tokens and the layers within each lead
    lead_depth: int = 2
    lead_heads: int = 4
    input_fs: float = 500.0
    input_samples: int = 5000
    patch_ms: float = 100.0
    # Inputs are divided by this typical amplitude so tokens start near unit scale (like an
    # image mean/std); outputs are multiplied back, so predictions are in mV.
    signal_scale_mv: float = 0.2
    context_stem: bool = False  # add a convolution branch across patch borders (see above)
    stem_channels: int = 32
    stem_kernel: int = 5
    pool: str = "cls"  # "cls" or "mean" over the time tokens
    decoder_width: int = 256
    decoder_depth: int = 2  # transformer layers over the time tokens
    decoder_heads: int = 8
    mae_mask_ratio: float = 0.5  # share of recorded patches hidden in patch-masking samples
    mae_lead_drop_prob: float = 0.5  # share of samples that hide whole leads instead
    # Lead sets kept visible in lead-drop samples (the rest is reconstructed); otherwise a
    # random subset of the recorded leads is kept.
    mae_keep_lead_sets: list[list[str]] = field(default_factory=lambda: [["I"], ["I", "II"]])
    mae_keep_set_prob: float = 0.6

    def __post_init__(self) -> None:
        if self.signal_scale_mv <= 0:
            raise ConfigError(
                f"expected a positive amplitude, got {self.signal_scale_mv}",
                field="signal_scale_mv",
            )
        if self.context_stem and self.patch_samples % 2:
            raise ConfigError(
                f"the context stem halves the rate first, so a patch needs an even number of "
                f"samples, got {self.patch_samples}",
                field="patch_ms",
            )
        if self.stem_kernel % 2 == 0:  # an odd filter keeps the patch length when centred
            raise ConfigError(f"expected an odd number of taps, got {self.stem_kernel}",
                              field="stem_kernel")
        for width, heads in (("width", "heads"), ("lead_width", "lead_heads"),
                             ("decoder_width", "decoder_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ConfigError(f"{width} {getattr(self, width)} is not a multiple of {heads} "
                                  f"{getattr(self, heads)}", field=width)
        if self.pool not in ("cls", "mean"):
            raise ConfigError(f"expected 'cls' or 'mean', got {self.pool!r}", field="pool")
        if self.patch_samples < 1 or self.input_samples % self.patch_samples:
            raise ConfigError(
                f"input_samples {self.input_samples} is not a whole number of "
                f"{self.patch_samples}-sample patches (input_fs x patch_ms / 1000)",
                field="patch_ms",
            )
        for leads in self.mae_keep_lead_sets:
            unknown = [name for name in leads if name not in STANDARD_LEADS]
            if unknown:
                raise ConfigError(
                    f"unknown lead(s) {unknown}; expected names from {STANDARD_LEADS}",
                    field="mae_keep_lead_sets",
                )

    @property
    def patch_samples(self) -> int:
        return round(self.input_fs * self.patch_ms / 1000.0)

    @property
    def n_patches(self) -> int:
        return self.input_samples // self.patch_samples


def transformer(
    width: int, depth: int, heads: int, mlp_ratio: float, dropout: float
) -> nn.TransformerEncoder:
    """Pre-norm GELU transformer encoder (batch first)."""
    layer = nn.TransformerEncoderLayer(
        width, heads, int(width * mlp_ratio), dropout, "gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class PatchLinear(nn.Module):
    """[*, C, S] -> [*, S / patch, width]: one linear map of each run of `patch` samples of all
    C channels. The same function as a Conv1d with kernel = stride = patch, at about half its
    training time on CPU (oneDNN's convolution is slow for these shapes; measured on ecg-tiny)."""

    def __init__(self, channels: int, patch: int, width: int):
        super().__init__()
        self.patch = patch
        self.linear = nn.Linear(channels * patch, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.unflatten(-1, (-1, self.patch)).transpose(-3, -2).flatten(-2))


class WindowFilters(nn.Module):
    """[*, 1, L] -> [*, L, channels]: `channels` FIR filters of `kernel` taps over one signal,
    zero-padded to keep its length. The same function as Conv1d(1, channels, kernel,
    padding=kernel // 2) for an odd kernel, as one matrix product over the sliding windows:
    for single-channel 50-sample patches that takes half the convolution's training time on CPU
    (ecg-tiny)."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.linear = nn.Linear(kernel, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.kernel // 2
        return self.linear(F.pad(x[..., 0, :], (half, half)).unfold(-1, self.kernel, 1))


def context_stem(c: ECGEncoderConfig) -> nn.Sequential:
    """Convolutions over a whole lead [*, 1, S] -> [*, S / patch_samples, lead_width]: a stem_kernel
    filter at half the rate, a dilated filter of about half as many taps that spans as long
    again, then one token per patch. A token sees stem_kernel + 4 (taps - 1) + patch_samples - 2
    samples (121 samples, 484 ms, in ecg-tiny): its patch and the P wave before a QRS in it."""
    taps, half_patch = c.stem_kernel // 4 * 2 + 1, c.patch_samples // 2
    return nn.Sequential(
        nn.Conv1d(1, c.stem_channels, c.stem_kernel, stride=2, padding=(c.stem_kernel - 1) // 2),
        nn.GELU(),
        nn.Conv1d(c.stem_channels, c.stem_channels, taps, padding=taps - 1, dilation=2),
        nn.GELU(),
        PatchLinear(c.stem_channels, half_patch, c.lead_width),
    )


def _embedding(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape), std=0.02))


class LeadFusion(nn.Module):
    """[n, 12, P, lead_width] lead tokens -> [n, P, width] time tokens: at each time step, the
    mean over the visible leads of each lead's token projected by that lead's own weights (one
    linear map of the 12 tokens side by side, the invisible ones zeroed, rescaled by 12 over
    the visible count). Own weights keep what V1 says apart from what II says; the mean keeps a
    1-lead and a 12-lead time step on one scale. A time step with no visible lead is a learned
    empty token."""

    def __init__(self, lead_width: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(lead_width)
        self.project = nn.Linear(N_LEADS * lead_width, width)
        self.empty = _embedding(width)

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        x = self.norm(tokens).masked_fill(~visible[..., None], 0.0)  # NaN-proof, unlike x * 0
        count = visible.sum(1)  # visible leads per time step [n, P]
        side_by_side = x.transpose(1, 2).flatten(2)  # [n, P, 12 * lead_width]
        fused = F.linear(side_by_side, self.project.weight) * (N_LEADS / count.clamp_min(1))[..., None]
        fused = fused + self.project.bias
        return torch.where(count[..., None] > 0, fused, self.empty.to(fused.dtype))


class ECGEncoder(nn.Module):
    """Lead-aware ECG transformer: `forward(signal, lead_mask) -> [n, width]`."""

    input_keys = ("signal", "lead_mask")
    input_ndim = 3  # of the main input, batch included

    def __init__(self, config: ECGEncoderConfig):
        super().__init__()
        self.config = config
        self.width = config.width
        c = config
        # Filters inside each patch (not across patch borders), so a hidden patch never leaks
        # into a visible neighbour's token during masked modelling; then one linear map of the
        # whole filtered patch to its token.
        self.stem = nn.Sequential(
            WindowFilters(c.stem_channels, c.stem_kernel),
            nn.GELU(),
            nn.Flatten(1),
            nn.Linear(c.patch_samples * c.stem_channels, c.lead_width),
        )
        self.context = context_stem(c) if c.context_stem else None
        self.mask_token = _embedding(c.lead_width)
        self.lead_embed = _embedding(N_LEADS, c.lead_width)
        self.lead_time_embed = _embedding(c.n_patches, c.lead_width)
        self.within_lead = (transformer(c.lead_width, c.lead_depth, c.lead_heads, c.mlp_ratio,
                                        c.dropout) if c.lead_depth else None)
        self.fusion = LeadFusion(c.lead_width, c.width)
        self.time_embed = _embedding(c.n_patches, c.width)
        self.cls_token = _embedding(1, 1, c.width)
        self.encoder = transformer(c.width, c.depth, c.heads, c.mlp_ratio, c.dropout)
        self.norm = nn.LayerNorm(c.width)
        self.decoder = PatchDecoder(c)
        keep_sets = torch.zeros(max(len(c.mae_keep_lead_sets), 1), N_LEADS, dtype=torch.bool)
        for i, leads in enumerate(c.mae_keep_lead_sets):
            keep_sets[i, [STANDARD_LEADS.index(name) for name in leads]] = True
        self.register_buffer("keep_sets", keep_sets, persistent=False)

    # ------------------------------------------------------------------ tokens and encoder
    def _patches(
        self, signal: torch.Tensor, lead_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches [n, 12, P, L] in units of signal_scale_mv, unrecorded leads zeroed, and the
        lead mask [n, 12]."""
        n_patch, length = self.config.n_patches, self.config.patch_samples
        if (
            signal.ndim != 3
            or signal.shape[1] != N_LEADS
            or signal.shape[2] % length
            or signal.shape[2] // length > n_patch
        ):
            raise ValueError(
                f"expected ECG signal [n, {N_LEADS}, S] with S a multiple of {length} "
                f"and at most {self.config.input_samples}, got {tuple(signal.shape)}"
            )
        if lead_mask is None:
            lead_mask = torch.ones(signal.shape[:2], dtype=torch.bool, device=signal.device)
        # Zeroing (not trusting) unrecorded leads keeps NaNs or junk out of the arithmetic.
        signal = signal.masked_fill(~lead_mask[..., None], 0.0) / self.config.signal_scale_mv
        return signal.unflatten(2, (-1, length)), lead_mask

    def _tokens(self, patches: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Token [n, 12, P, lead_width] of every patch; hidden ones are the mask token."""
        n, leads, n_patch, length = patches.shape
        tokens = self.stem(patches.reshape(-1, 1, length)).reshape(n, leads, n_patch, -1)
        if self.context is not None:  # hidden patches are zeroed first: none leaks into a token
            lead = (patches * visible[..., None]).reshape(n * leads, 1, n_patch * length)
            tokens = tokens + self.context(lead).reshape(tokens.shape)
        tokens = torch.where(visible[..., None], tokens, self.mask_token.to(tokens.dtype))
        return tokens + self.lead_embed[:, None] + self.lead_time_embed[None, :n_patch]

    def _within_leads(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The per-lead layers over time, run only on leads with a visible patch (the others
        get no weight in the fusion, so their tokens are left as they are)."""
        if self.within_lead is None:
            return tokens
        rows, flat = visible.any(2).flatten().nonzero()[:, 0], tokens.flatten(0, 1)
        flat = flat.index_put((rows,), self.within_lead(flat[rows]).to(flat.dtype))  # fast path: bf16
        return flat.unflatten(0, tokens.shape[:2])

    def _encode(self, patches: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Hidden states [n, 1 + P, width] (CLS first) from the visible patches [n, 12, P]."""
        lead_tokens = self._within_leads(self._tokens(patches, visible), visible)
        n_patch = patches.shape[2]
        x = self.fusion(lead_tokens, visible) + self.time_embed[:n_patch]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], 1)
        return self.norm(self.encoder(x))

    def _pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, 0] if self.config.pool == "cls" else hidden[:, 1:].mean(1)

    def forward(self, signal: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        """signal [n, 12, S] mV, lead_mask [n, 12] (True = recorded) -> [n, width]."""
        patches, lead_mask = self._patches(signal, lead_mask)
        visible = lead_mask[:, :, None].expand(-1, -1, patches.shape[2])
        return self._pool(self._encode(patches, visible))

    # ------------------------------------------------------------------ masked modelling
    def _predict(self, patches: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Predicted patches [n, 12, P, L] (units of signal_scale_mv) from the visible ones."""
        return self.decoder(self._encode(patches, visible))

    def _mae_visible(
        self,
        lead_mask: torch.Tensor,
        n_patch: int,
        mask_ratio: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Visible tokens [n, 12, P]: random patches for some samples, kept leads for others."""
        c, n, device = self.config, lead_mask.shape[0], lead_mask.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=device)

        # Patch masking: keep the (1 - ratio) share of recorded tokens with the lowest scores.
        token_ok = lead_mask[:, :, None].expand(-1, -1, n_patch).flatten(1)
        n_keep = (token_ok.sum(1) * (1.0 - mask_ratio)).round().clamp_min(1)
        rank = rand(n, N_LEADS * n_patch).masked_fill(~token_ok, 2.0).argsort(1).argsort(1)
        patch_visible = (rank < n_keep[:, None]).unflatten(1, (N_LEADS, n_patch))
        # Lead dropping: keep a preset lead set (e.g. lead I alone) or a random lead subset.
        preset = (
            self.keep_sets[
                torch.randint(len(self.keep_sets), (n,), generator=generator, device=device)
            ]
            & lead_mask
        )
        n_rec = lead_mask.sum(1)
        n_leads_kept = (rand(n) * (n_rec - 1)).floor() + 1  # 1 .. n_rec - 1
        lead_rank = rand(n, N_LEADS).masked_fill(~lead_mask, 2.0).argsort(1).argsort(1)
        random_leads = lead_rank < n_leads_kept[:, None]
        use_preset = (rand(n) < c.mae_keep_set_prob) & preset.any(1) & bool(c.mae_keep_lead_sets)
        kept_leads = torch.where(use_preset[:, None], preset, random_leads)
        lead_visible = kept_leads[:, :, None].expand(-1, -1, n_patch)
        drop_leads = (rand(n) < c.mae_lead_drop_prob)[:, None, None]
        return torch.where(drop_leads, lead_visible, patch_visible)

    def mae_loss(
        self,
        signal: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict:
        """Masked-patch / masked-lead reconstruction loss.

        Returns loss (MSE over hidden samples of recorded leads, in units of signal_scale_mv),
        pred and target [n, 12, S] in mV, and mask [n, 12, S] (True = hidden sample of a
        recorded lead, the samples scored).
        """
        patches, lead_mask = self._patches(signal, lead_mask)
        ratio = self.config.mae_mask_ratio if mask_ratio is None else mask_ratio
        visible = self._mae_visible(lead_mask, patches.shape[2], ratio, generator)
        hidden = lead_mask[:, :, None] & ~visible
        pred = self._predict(patches, visible)
        mask = hidden[..., None].expand_as(patches)
        scale = self.config.signal_scale_mv
        return {
            "loss": masked_mse(pred, patches, mask),
            "pred": pred.flatten(2) * scale,
            "target": patches.flatten(2) * scale,
            "mask": mask.flatten(2),
        }

    def reconstruct_leads(self, signal: torch.Tensor, lead_mask: torch.Tensor) -> torch.Tensor:
        """All 12 leads [n, 12, S] in mV: recorded leads as given, the others predicted."""
        patches, lead_mask = self._patches(signal, lead_mask)
        visible = lead_mask[:, :, None].expand(-1, -1, patches.shape[2])
        pred = self._predict(patches, visible)
        return (
            torch.where(lead_mask[:, :, None, None], patches, pred).flatten(2)
            * self.config.signal_scale_mv
        )


class PatchDecoder(nn.Module):
    """Lightweight MAE decoder: the encoder's hidden states (CLS and time tokens) through a
    narrow transformer over time, then a linear head to the samples of all 12 leads of each
    patch: [n, 1 + P, width] -> [n, 12, P, patch_samples]."""

    def __init__(self, c: ECGEncoderConfig):
        super().__init__()
        self.embed = nn.Linear(c.width, c.decoder_width)
        self.time_embed = _embedding(1 + c.n_patches, c.decoder_width)  # CLS first
        self.layers = transformer(c.decoder_width, c.decoder_depth, c.decoder_heads,
                                  c.mlp_ratio, c.dropout)
        self.norm = nn.LayerNorm(c.decoder_width)
        self.head = nn.Linear(c.decoder_width, N_LEADS * c.patch_samples)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.embed(hidden) + self.time_embed[: hidden.shape[1]]
        x = self.norm(self.layers(x))[:, 1:]
        return self.head(x).unflatten(-1, (N_LEADS, -1)).transpose(1, 2)
