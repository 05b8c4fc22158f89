"""CardioCLIPLoss against open_clip's ClipLoss / SigLipLoss, with absent rows and under DDP."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from mmcardio.losses import CardioCLIPLoss, masked_mse

D = 16
SCALE = torch.tensor(math.log(1 / 0.07)).exp()
BIAS = torch.tensor(-10.0)


def unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_all_rows_present_equals_open_clip(kind):
    ecg, text = unit(8, D, seed=0), unit(8, D, seed=1)
    out = CardioCLIPLoss(kind)({"ecg": ecg}, {"ecg": torch.arange(8)}, text, SCALE, BIAS)
    ref = ClipLoss()(ecg, text, SCALE) if kind == "clip" else SigLipLoss()(ecg, text, SCALE, BIAS)
    assert torch.allclose(out["losses"]["ecg"], ref)
    assert torch.allclose(out["loss"], ref)
    assert out["counts"] == {"ecg": 8}


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_absent_rows_equal_open_clip_on_present_rows(kind):
    rows = torch.tensor([0, 2, 3, 6])
    ecg, text = unit(4, D, seed=2), unit(7, D, seed=3)
    out = CardioCLIPLoss(kind)({"ecg": ecg}, {"ecg": rows}, text, SCALE, BIAS)
    ref = (
        ClipLoss()(ecg, text[rows], SCALE)
        if kind == "clip"
        else SigLipLoss()(ecg, text[rows], SCALE, BIAS)
    )
    assert torch.allclose(out["loss"], ref)
    assert out["counts"] == {"ecg": 4}


def test_exam_reports_pair_with_their_modality_and_the_whole_report_with_the_rest():
    rows = {"ecg": torch.tensor([0, 2, 3]), "ct": torch.tensor([1, 2, 4])}
    ecg, ct, whole, ecg_report = unit(3, D, seed=10), unit(3, D, seed=11), unit(5, D, seed=12), unit(3, D, seed=13)
    out = CardioCLIPLoss()({"ecg": ecg, "ct": ct}, rows, whole, SCALE, modality_text={"ecg": ecg_report})
    assert torch.allclose(out["losses"]["ecg"], ClipLoss()(ecg, ecg_report, SCALE))
    assert torch.allclose(out["losses"]["ct"], ClipLoss()(ct, whole[rows["ct"]], SCALE))


def test_absent_rows_get_exactly_zero_gradient():
    text = unit(6, D, seed=4).requires_grad_(True)
    ecg = unit(3, D, seed=5).requires_grad_(True)
    rows = torch.tensor([1, 4, 5])
    CardioCLIPLoss()({"ecg": ecg}, {"ecg": rows}, text, SCALE)["loss"].backward()
    absent = torch.tensor([0, 2, 3])
    assert torch.equal(text.grad[absent], torch.zeros(3, D))
    assert text.grad[rows].abs().sum() > 0 and ecg.grad.abs().sum() > 0


def test_modalities_and_pairs_sum_and_single_rows_are_skipped():
    text = unit(6, D, seed=6)
    ecg_rows, echo_rows = torch.tensor([0, 1, 2, 4]), torch.tensor([1, 2, 3, 4])
    ecg, echo = unit(4, D, seed=7), unit(4, D, seed=8)
    loss = CardioCLIPLoss(cross_modal_pairs=[["ecg", "echo"]])
    features = {"ecg": ecg, "echo": echo, "ct": unit(1, D, seed=9)}
    rows = {"ecg": ecg_rows, "echo": echo_rows, "ct": torch.tensor([5])}
    out = loss(features, rows, text, SCALE)
    clip = ClipLoss()
    both_in_ecg, both_in_echo = torch.tensor([1, 2, 3]), torch.tensor([0, 1, 3])  # studies 1, 2, 4
    expected = {
        "ecg": clip(ecg, text[ecg_rows], SCALE),
        "echo": clip(echo, text[echo_rows], SCALE),
        "ecg-echo": clip(ecg[both_in_ecg], echo[both_in_echo], SCALE),
    }
    assert out["counts"] == {"ecg": 4, "echo": 4, "ct": 1, "ecg-echo": 3}
    assert set(out["losses"]) == set(expected)  # CT has one row: no negative, no term
    for name, value in expected.items():
        assert torch.allclose(out["losses"][name], value)
    assert torch.allclose(out["loss"], sum(expected.values()))
    # The skipped modality's features do not change anything.
    features["ct"] = unit(1, D, seed=10)
    assert torch.equal(loss(features, rows, text, SCALE)["loss"], out["loss"])


def test_no_term_still_backpropagates():
    text = unit(3, D, seed=11).requires_grad_(True)
    out = CardioCLIPLoss()({"ecg": unit(1, D, seed=12)}, {"ecg": torch.tensor([0])}, text, SCALE)
    assert out["loss"].item() == 0.0 and out["losses"] == {}
    out["loss"].backward()
    assert torch.equal(text.grad, torch.zeros_like(text))


def test_masked_mse_scores_only_masked_elements():
    pred, target = torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_mse(pred, target, mask).item() == pytest.approx((1 + 4 + 9) / 3)


# ---------------------------------------------------------------------------------- DDP
# Two ranks with different batch sizes and different present rows: each rank's loss must be
# the single-process loss on the union, and each rank's local gradients world_size times the
# single-process gradients (DDP's averaging then gives exactly the global gradient).
RANK_DATA = [  # (batch size, ecg rows, echo rows) per rank
    (3, [0, 2], [0, 1]),
    (5, [1, 3, 4], [1, 3]),
]


def _rank_inputs(rank: int) -> tuple[torch.Tensor, dict, dict]:
    size, ecg_rows, echo_rows = RANK_DATA[rank]
    text = unit(size, D, seed=100 + rank)
    features = {
        "ecg": unit(len(ecg_rows), D, seed=200 + rank),
        "echo": unit(len(echo_rows), D, seed=300 + rank),
    }
    return text, features, {"ecg": torch.tensor(ecg_rows), "echo": torch.tensor(echo_rows)}


def _ddp_worker(rank: int, world: int, port: int, kind: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        text, features, rows = _rank_inputs(rank)
        text.requires_grad_(True)
        for f in features.values():
            f.requires_grad_(True)
        out = CardioCLIPLoss(
            kind, [["ecg", "echo"]], rank=rank, world_size=world, modalities=["ecg", "echo", "cmr"]
        )(features, rows, text, SCALE, BIAS)
        out["loss"].backward()
        # numpy, not tensors: torch would share tensor memory that dies with this process
        results.put(
            (
                rank,
                out["loss"].item(),
                out["counts"],
                text.grad.numpy(),
                {m: f.grad.numpy() for m, f in features.items()},
            )
        )
    finally:
        dist.destroy_process_group()


def _reference(kind: str) -> tuple[float, dict, list]:
    """Single process: the union of both ranks' rows, with gradients per rank's inputs."""
    inputs = [_rank_inputs(r) for r in range(2)]
    leaves = []
    for text, features, _ in inputs:
        leaves.append(
            (text.requires_grad_(True), {m: f.requires_grad_(True) for m, f in features.items()})
        )
    loss_fn = ClipLoss() if kind == "clip" else SigLipLoss()

    def score(a, b):
        return loss_fn(a, b, SCALE) if kind == "clip" else loss_fn(a, b, SCALE, BIAS)

    text_of = {m: torch.cat([t[r[m]] for t, _, r in inputs]) for m in ("ecg", "echo")}
    feats = {m: torch.cat([f[m] for _, f, _ in inputs]) for m in ("ecg", "echo")}
    pairs = [
        (
            f["ecg"][[i for i, row in enumerate(r["ecg"].tolist()) if row in r["echo"].tolist()]],
            f["echo"][[i for i, row in enumerate(r["echo"].tolist()) if row in r["ecg"].tolist()]],
        )
        for _, f, r in inputs
    ]
    total = (
        score(feats["ecg"], text_of["ecg"])
        + score(feats["echo"], text_of["echo"])
        + score(torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs]))
    )
    total.backward()
    return total.item(), {"ecg": 5, "echo": 4, "ecg-echo": 3}, leaves


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_ddp_two_ranks_equal_single_process_on_the_union(kind):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # fork: the workers reuse the imported modules (seconds, not tens)
    results = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, port, kind, results), nprocs=2, start_method="fork")
    got = sorted((results.get() for _ in range(2)), key=lambda r: r[0])
    ref_loss, ref_counts, leaves = _reference(kind)
    ref_counts = {**ref_counts, "cmr": 0}
    for rank, loss, counts, text_grad, feat_grads in got:
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert counts == ref_counts
        ref_text, ref_feats = leaves[rank]
        assert torch.allclose(torch.from_numpy(text_grad), 2 * ref_text.grad, atol=1e-6)
        for m, grad in feat_grads.items():
            assert torch.allclose(torch.from_numpy(grad), 2 * ref_feats[m].grad, atol=1e-6)
