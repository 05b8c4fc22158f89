"""Contrastive losses for CardioCLIP (open_clip's ClipLoss / SigLipLoss) and the MAE loss.

Every study modality is aligned with the report text of the same studies: its own exam report
when the batch has one (`modality_text`), else the whole report; the fused study embedding
with the whole report. A batch lists only the rows that have a modality, and under DDP each
rank has different rows, so per modality:

1. scatter the features and their texts into [B, D] with a presence column (one collective
   moves both),
2. gather across ranks with open_clip's `gather_features` (with grad), padding B to the
   largest batch of any rank,
3. keep the present rows (and the matching text), and
4. score them with open_clip's loss at world size 1 (the features are already global).

Absent rows never enter the logits (no zero vectors among the negatives). A modality with
fewer than two present rows over all ranks is skipped: a contrastive loss needs a negative.
Each rank computes the same global loss; the gathers carry the gradient back to the rank that
owns each row, and DDP's gradient averaging then gives exactly the global-loss gradient.

The loss runs in fp32 with autocast off, whatever the caller's mixed precision: under bf16
autocast the logits matmul would run in bf16, whose 8 significant bits round a logit near the
logit scale's clamp of 100 to a multiple of 0.5. Near-duplicate embeddings at that scale then
scored a loss 1.4% off, and on real batches of the tiny model the logit scale's gradient was
up to 9% off (up to 3% with the loss in fp32: the towers' bf16 activations).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from open_clip.loss import ClipLoss, SigLipLoss, gather_features
from torch import distributed as dist
from torch import nn

from mmcardio.modality import STUDY_MODALITIES

#: The fused study embedding (attention fusion) is aligned with the text like a modality.
STUDY = "study"
#: With `report_views`, a second sentence sample of each report is aligned with the first
#: like a modality: short finding phrases then land near the reports that state them.
REPORT_VIEW = "report_view"
LOSSES = ("clip", "siglip")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the elements where `mask` is True (0 when none are).

    The weights are at least fp32: a bf16 count of masked elements is rounded to 8 bits."""
    weight = full_precision(mask.to(pred.dtype))
    return ((pred - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


class CardioCLIPLoss(nn.Module):
    """Align every study modality (and optional modality pairs) with the report text.

    Call with the model's output: `loss_fn(**model(batch))` or
    `loss_fn(features, rows, text, logit_scale, logit_bias, modality_text)`. Returns a dict with `loss`
    (the sum of the terms), `losses` {name: scalar} and `counts` {name: rows used globally};
    pair terms are named "ecg-echo".

    `modalities` fixes the order of the collectives, so under DDP every rank must pass the
    same list (`from_config` takes it from the model config); a rank without a modality in
    its batch still takes part in that modality's gather.
    """

    def __init__(
        self,
        loss: str = "clip",
        cross_modal_pairs: Iterable[Sequence[str]] = (),
        rank: int = 0,
        world_size: int = 1,
        modalities: Iterable[str] | None = None,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss_name = loss
        self.cross_modal_pairs = [tuple(pair) for pair in cross_modal_pairs]
        for pair in self.cross_modal_pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(
                    f"a cross-modal pair names two different modalities, got {list(pair)}"
                )
        self.rank, self.world_size = rank, world_size
        self.modalities = (
            list(modalities)
            if modalities is not None
            else [str(m) for m in STUDY_MODALITIES] + [STUDY]
        )
        # Already-gathered features go in, so open_clip's losses run at world size 1.
        self.contrastive = ClipLoss() if loss == "clip" else SigLipLoss()

    @classmethod
    def from_config(cls, config, rank: int = 0, world_size: int = 1) -> CardioCLIPLoss:
        """The loss a `CardioCLIPConfig` asks for, over exactly its towers."""
        modalities = list(config.towers) + ([STUDY] if config.fusion == "attention" else []) \
            + ([REPORT_VIEW] if config.report_views else [])
        return cls(config.loss, config.cross_modal_pairs, rank, world_size, modalities)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        rows: dict[str, torch.Tensor],
        text: torch.Tensor | None,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        modality_text: dict[str, torch.Tensor] | None = None,
    ) -> dict:
        with torch.autocast(logit_scale.device.type, enabled=False):
            return self._global_loss(
                full_precision(features), rows, full_precision(text),
                full_precision(logit_scale), full_precision(logit_bias),
                full_precision(modality_text),
            )

    def _global_loss(
        self,
        features: dict[str, torch.Tensor],
        rows: dict[str, torch.Tensor],
        text: torch.Tensor | None,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
        modality_text: dict[str, torch.Tensor] | None,
    ) -> dict:
        names = self._collective_order(features)
        like = text if text is not None else next(iter((modality_text or features).values()))
        total = like.sum() * 0.0  # keeps a graph even when no term has two rows
        result = {"loss": total, "losses": {}, "counts": {}}
        if not names:
            return result
        batch = self._global_batch_size(text, rows)
        text_dense = torch.stack(
            [self._dense(*self._text_of(m, features, rows, text, modality_text), batch, like)
             for m in names], 1
        )
        mods_dense = torch.stack(
            [self._dense(features.get(m), rows.get(m), batch, like) for m in names], 1
        )
        if self.world_size > 1:
            for tensor in (text_dense, mods_dense):
                if not tensor.requires_grad and torch.is_grad_enabled():
                    tensor.requires_grad_(True)  # every rank must run the gathers' backward
            mods_dense, text_dense = gather_features(
                mods_dense,
                text_dense,
                gather_with_grad=True,
                rank=self.rank,
                world_size=self.world_size,
            )
        gathered = {f"text:{m}": _split(text_dense[:, i]) for i, m in enumerate(names)}
        gathered.update({m: _split(mods_dense[:, i]) for i, m in enumerate(names)})
        terms = [(m, m, f"text:{m}") for m in names]
        terms += [
            (f"{a}-{b}", a, b) for a, b in self.cross_modal_pairs if a in names and b in names
        ]
        for name, a, b in terms:
            (feats_a, valid_a), (feats_b, valid_b) = gathered[a], gathered[b]
            valid = valid_a & valid_b
            result["counts"][name] = int(valid.sum())
            if result["counts"][name] < 2:
                continue
            result["losses"][name] = self._score(
                feats_a[valid], feats_b[valid], logit_scale, logit_bias
            )
            result["loss"] = result["loss"] + result["losses"][name]
        return result

    @staticmethod
    def _text_of(
        key: str,
        features: dict[str, torch.Tensor],
        rows: dict[str, torch.Tensor],
        text: torch.Tensor,
        modality_text: dict[str, torch.Tensor] | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The texts `key`'s rows align with, and those rows (None rows: the whole batch)."""
        if key not in features:
            return None, None
        if modality_text is not None and key in modality_text:
            return modality_text[key], rows[key]
        if text is None:
            raise ValueError(f"no text for {key!r}: give its modality_text or the whole reports")
        return text[rows[key].to(text.device)], rows[key]

    def _score(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.loss_name == "siglip":
            return self.contrastive(a, b, logit_scale, logit_bias)
        return self.contrastive(a, b, logit_scale)

    def _collective_order(self, features: dict[str, torch.Tensor]) -> list[str]:
        """Modalities to gather: the fixed list under DDP, only those present otherwise."""
        unknown = sorted(set(features) - set(self.modalities))
        if unknown:
            raise ValueError(f"features for {unknown} but the loss covers {self.modalities}")
        if self.world_size > 1:
            return list(self.modalities)
        return [m for m in self.modalities if m in features]

    def _global_batch_size(self, text: torch.Tensor | None, rows: dict[str, torch.Tensor]) -> int:
        """Rows of the dense tensors: the batch (or the highest row used, without whole texts)."""
        local = text.shape[0] if text is not None else max(int(r.max()) + 1 for r in rows.values() if r.numel())
        size = torch.tensor([local], device=next(iter(rows.values())).device)
        if self.world_size > 1:
            dist.all_reduce(size, op=dist.ReduceOp.MAX)
        return int(size)

    @staticmethod
    def _dense(
        feats: torch.Tensor | None, rows: torch.Tensor | None, batch: int, like: torch.Tensor
    ) -> torch.Tensor:
        """[batch, D + 1]: row i holds the features of study i and a last column 1 if present.

        Presence rides as an extra column so one gather moves features and mask together.
        `rows=None` means rows 0..n-1 (the text); `feats=None` gives no present row.
        """
        dense = like.new_zeros(batch, like.shape[1] + 1)
        if feats is None:
            return dense
        if rows is None:
            rows = torch.arange(feats.shape[0], device=feats.device)
        packed = torch.cat([feats, feats.new_ones(feats.shape[0], 1)], 1).to(dense.dtype)
        return dense.index_copy(0, rows.to(device=feats.device, dtype=torch.long), packed)


def full_precision(value):
    """A tensor (or a dict of them) in at least fp32; None unchanged; fp32 passes as is."""
    if isinstance(value, dict):
        return {key: full_precision(tensor) for key, tensor in value.items()}
    return None if value is None else value.to(torch.promote_types(value.dtype, torch.float32))


def _split(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and presence mask of a dense [N, D + 1] tensor."""
    return dense[:, :-1], dense[:, -1] > 0.5
