"""bf16 autocast: the contrastive loss and the embeddings stay in fp32, so a bf16 run scores
the same loss as an fp32 one on the same features, and a short bf16 alignment stays finite."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcardio.losses import CardioCLIPLoss, masked_mse
from mmcardio.train.objective import PretrainObjective
from tests.test_model import light_model, mixed_batch

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def near_duplicates(n: int = 16, dim: int = 64, spread: float = 0.1) -> tuple[torch.Tensor, ...]:
    """Unit study and report embeddings all within a few degrees of one direction, each report
    nearest its own study: hard negatives, where the logits differ in their third digit."""
    g = torch.Generator().manual_seed(0)
    studies = torch.randn(1, dim, generator=g) + spread * torch.randn(n, dim, generator=g)
    reports = studies + 0.3 * spread * torch.randn(n, dim, generator=g)
    return F.normalize(studies, dim=-1), F.normalize(reports, dim=-1)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_loss_under_bf16_autocast_equals_the_fp32_loss_at_the_clamped_scale(kind):
    # At the logit scale's clamp of 100 the logits are near 100, where bf16 steps by 0.5: a
    # bf16 logits matmul put this loss 1.4% off. In fp32 outside autocast the arithmetic is the
    # fp32 one, so the loss and its gradients are equal, not merely close.
    studies, reports = near_duplicates()
    scale, bias = torch.tensor(100.0, requires_grad=True), torch.tensor(-10.0)
    loss_fn, rows = CardioCLIPLoss(kind, modalities=["ecg"]), {"ecg": torch.arange(len(studies))}

    def loss_and_grads(autocast: bool):
        feats = studies.clone().requires_grad_(True)
        with torch.autocast(**BF16, enabled=autocast):
            loss = loss_fn({"ecg": feats}, rows, reports, scale, bias)["loss"]
        feats_grad, scale_grad = torch.autograd.grad(loss, [feats, scale])
        return loss, feats_grad, scale_grad

    fp32, bf16 = loss_and_grads(False), loss_and_grads(True)
    assert fp32[0].item() > 0.5  # hard enough that the logits' last digits matter
    assert bf16[0].dtype == torch.float32
    for reference, autocast in zip(fp32, bf16):
        assert torch.equal(reference, autocast)


def test_bf16_features_are_scored_in_fp32():
    # Features a bf16 tower hands over are upcast, not the logits rounded: the loss equals the
    # fp32 loss of the same (bf16-rounded) features.
    studies, reports = (x.bfloat16() for x in near_duplicates())
    rows = {"ecg": torch.arange(len(studies))}
    loss_fn = CardioCLIPLoss(modalities=["ecg"])
    scale = torch.tensor(100.0)
    out = loss_fn({"ecg": studies}, rows, reports, scale)["loss"]
    reference = loss_fn({"ecg": studies.float()}, rows, reports.float(), scale)["loss"]
    assert out.dtype == torch.float32
    assert torch.equal(out, reference)


def test_masked_mse_counts_masked_elements_exactly_under_bf16():
    # 48,001 masked elements: a bf16 count is 48,128 (8 mantissa bits), 0.26% too many.
    n = 48_001
    pred, target = torch.ones(n + 7, dtype=torch.bfloat16), torch.zeros(n + 7)
    mask = torch.arange(n + 7) < n
    assert masked_mse(pred, target, mask).item() == 1.0


def test_embeddings_are_fp32_unit_vectors_under_bf16_autocast():
    # The towers run in bf16; the heads' outputs are normalised in fp32 (a bf16 unit vector's
    # norm is up to 0.5% off). 1e-6 is fp32 rounding of a 64-dimensional norm.
    model = light_model()
    with torch.no_grad(), torch.autocast(**BF16):
        out = model(mixed_batch())
        query = model.encode_query(["atrial fibrillation"])
    for name, feats in [*out["features"].items(), ("text", out["text"]), ("query", query)]:
        assert feats.dtype == torch.float32, name
        assert torch.allclose(feats.norm(dim=-1), torch.ones(len(feats)), atol=1e-6), name


def test_bf16_alignment_stays_finite_and_starts_at_the_fp32_loss():
    # The first loss (same weights, same batch) differs from fp32 only by bf16 rounding of the
    # tower activations (2^-9 relative each; 0.1% on this batch), so 1% bounds it. Then ten
    # AdamW steps under bf16 autocast stay finite and lower the loss.
    def train(autocast: bool, steps: int) -> list[float]:
        model = light_model()  # eval mode: no dropout draws to differ between the two runs
        objective = PretrainObjective(model, "align", CardioCLIPLoss.from_config(model.config))
        optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3)
        losses = []
        for _ in range(steps):
            with torch.autocast(**BF16, enabled=autocast):
                loss = objective(mixed_batch())["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    bf16 = train(True, 10)
    assert bf16[0] == pytest.approx(train(False, 1)[0], rel=0.01)
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16[-1] < bf16[0]
