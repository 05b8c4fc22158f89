"""Training and inference measurements of `mmcardio bench`: each tower, the full alignment step
as pretraining computes it, the ECG tower beside a plain reference of its size, and how step
time and memory grow with the input (ECG length, echo frames, CT volume).

A training step is what an optimizer step costs: forward, backward and AdamW over the
parameters involved. Inputs are random tensors in the shapes the model's preprocess gives
(speed does not depend on their values); texts are phantom reports.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from mmcardio.bench_measure import Matmul, Workload, autocast, measure
from mmcardio.bench_reference import PlainECGTransformer
from mmcardio.datasets.preprocess_config import as_preprocess
from mmcardio.datasets.synthetic.cohort import cohort_truths
from mmcardio.datasets.synthetic.reports import write_report_parts
from mmcardio.encoders.ecg import N_LEADS
from mmcardio.encoders.registry import create_encoder
from mmcardio.losses import CardioCLIPLoss
from mmcardio.modality import ECHO_VIEWS, Modality
from mmcardio.model import CardioCLIP
from mmcardio.sentences import sample_sentences
from mmcardio.study import LANGUAGES
from mmcardio.train.objective import PretrainObjective, param_groups

#: The issue's target for the ECG tower: training FLOPs at most this multiple of the reference's.
REFERENCE_FLOPS_TARGET = 2.0
#: The weight decay of the alignment step's AdamW groups (as configs/pretrain/tiny.yaml).
WEIGHT_DECAY = 0.05
#: Studies per scaling step: the fewest a BatchNorm layer trains on (the tiny towers' ResNets).
SCALING_BATCH = 2
Progress = Callable[[str], None]


@dataclass
class Plan:
    """How one model is measured: studies per batch, timed repeats, untimed warm-up calls."""

    batch_size: int
    repeats: int
    warmup: int


@dataclass
class BenchModel:
    """A model to measure, what its text tower is, and its plan."""

    name: str
    model: CardioCLIP
    text_tower: str
    plan: Plan


def parameter_count(*modules: nn.Module) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def adamw(params: Any) -> torch.optim.AdamW:
    """AdamW as pretraining builds it (PyTorch's default implementation for CPU tensors)."""
    return torch.optim.AdamW(params, lr=1e-4)


def training(loss: Callable[[], torch.Tensor], module: nn.Module, optimizer: torch.optim.Optimizer,
             samples: int, dtype: str = "fp32") -> Workload:
    """A training step of `module`: `loss()` under the dtype's autocast, backward, optimizer."""
    def step() -> None:
        module.train()
        with autocast(dtype):
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Workload(step, samples, dtype)


def inference(forward: Callable[[], Any], module: nn.Module, samples: int) -> Workload:
    """An inference pass of `module` (eval mode, no gradients)."""
    def run() -> None:
        module.eval()
        with torch.no_grad():
            forward()

    def count() -> None:  # the same matmuls, visible to the FLOP counter (see Workload)
        module.eval()
        forward()

    return Workload(run, samples, count=count)


def embeddings_sum(encode: Callable[[], Any]) -> torch.Tensor:
    """A scalar to backpropagate from a tower's output (towers may also return extras)."""
    out = encode()
    return (out[0] if isinstance(out, tuple) else out).sum()


# ------------------------------------------------------------------------------ inputs

def tower_inputs(model: CardioCLIP, modality: str, batch: int, inference: bool,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random inputs of `batch` studies in the shapes the model's `preprocess` gives: one window
    per study in training; at inference the ECG's `windows`, which the model averages."""
    pre = as_preprocess(model.config.preprocess).require([modality])
    if modality == "ecg":
        windows = pre.ecg.windows if inference and pre.ecg.windows > 1 else 0
        leads = (batch, windows, N_LEADS) if windows else (batch, N_LEADS)
        return ecg_inputs(batch, pre.ecg.samples, generator, leads)
    if modality == "echo":
        return echo_inputs(batch, pre.echo.max_views, pre.echo.frames, pre.echo.size, generator)
    if modality == "cmr":
        return {"cine": torch.randn(batch, pre.cmr.phases, pre.cmr.slices, *pre.cmr.size,
                                    generator=generator)}
    return {"volume": torch.randn(batch, 1, *pre.ct.shape, generator=generator)}


def ecg_inputs(batch: int, samples: int, generator: torch.Generator,
               leads: tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
    shape = (*(leads or (batch, N_LEADS)), samples)
    return {"signal": 0.3 * torch.randn(*shape, generator=generator),  # about an ECG's scale in mV
            "lead_mask": torch.ones(batch, N_LEADS, dtype=torch.bool)}


def echo_inputs(batch: int, views: int, frames: int, size: list[int], generator: torch.Generator
                ) -> dict[str, torch.Tensor]:
    return {"frames": torch.randn(batch, views, frames, *size, generator=generator),
            "view_ids": torch.randint(len(ECHO_VIEWS), (batch, views), generator=generator),
            "view_mask": torch.ones(batch, views, dtype=torch.bool)}


def phantom_report_parts(n: int) -> list[tuple[str, dict[Modality, str]]]:
    """`n` phantom cohort reports, English and Chinese in turn, with each exam's section."""
    rng = np.random.default_rng(0)
    parts = [write_report_parts(truth, LANGUAGES[i % len(LANGUAGES)], rng)
             for i, truth in enumerate(cohort_truths(n, seed=0))]
    return [(report, {Modality(m): text for m, text in sections.items()}) for report, sections in parts]


def align_batch(model: CardioCLIP, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
    """A collated batch as the data pipeline gives pretraining, every study with every
    modality of the model: random tensors, and texts drawn from phantom reports as training
    draws them (random sentence subsets of the report, of each exam's section, and a second
    subset as the report view)."""
    rng = np.random.default_rng(0)
    reports = phantom_report_parts(batch_size)
    rows = torch.arange(batch_size)
    batch: dict[str, Any] = {"study_id": [f"bench{i}" for i in rows.tolist()],
                             "text": [sample_sentences(report, rng) for report, _ in reports]}
    for m in model.modalities:
        exams = [sample_sentences(sections.get(Modality(m), report), rng) for report, sections in reports]
        batch[m] = {**tower_inputs(model, m, batch_size, False, generator), "rows": rows, "report": exams}
    if model.config.report_views:
        batch["text_view"] = [sample_sentences(report, rng) for report, _ in reports]
    return batch


# ------------------------------------------------------------------------------ sections

def bench_towers(bench: BenchModel, probes: dict[str, Matmul], progress: Progress) -> dict:
    """Each modality tower (with its projection head) and the text tower (tokenizing
    included): a training step and an inference pass of a batch."""
    model, plan = bench.model, bench.plan
    generator = torch.Generator().manual_seed(0)
    towers = {}
    for m in model.modalities:
        train_in = tower_inputs(model, m, plan.batch_size, False, generator)
        infer_in = tower_inputs(model, m, plan.batch_size, True, generator)
        tower, head = model.towers[m], model.heads[m]
        work = {"train": training(partial(embeddings_sum, partial(model.encode, m, train_in)), model,
                                  adamw([*tower.parameters(), *head.parameters()]), plan.batch_size),
                "inference": inference(partial(model.encode, m, infer_in), model, plan.batch_size)}
        main = tower.input_keys[0]
        towers[m] = {"parameters": parameter_count(tower, head), "train_input": list(train_in[main].shape),
                     "inference_input": list(infer_in[main].shape),
                     **measure(work, probes, plan.repeats, plan.warmup, _labelled(progress, bench, m))}
    towers["text"] = _bench_text(bench, probes, progress)
    return towers


def _bench_text(bench: BenchModel, probes: dict[str, Matmul], progress: Progress) -> dict:
    model, plan = bench.model, bench.plan
    texts = [report for report, _ in phantom_report_parts(plan.batch_size)]
    tokens = model.text.tokenize(texts)["attention_mask"].sum(1).float().mean().item()
    encode = partial(model.encode_text, texts)
    work = {"train": training(partial(embeddings_sum, encode), model,
                              adamw([*model.text.parameters(), *model.text_head.parameters()]), len(texts)),
            "inference": inference(encode, model, len(texts))}
    return {"parameters": parameter_count(model.text, model.text_head), "texts": len(texts),
            "languages": list(LANGUAGES), "mean_tokens_per_text": tokens,
            **measure(work, probes, plan.repeats, plan.warmup, _labelled(progress, bench, "text"))}


def bench_align(bench: BenchModel, dtypes: tuple[str, ...], probes: dict[str, Matmul],
                progress: Progress) -> dict:
    """The whole alignment step as pretraining computes it (`PretrainObjective`: every tower,
    the text tower on the batch's distinct reports, `CardioCLIPLoss`) with AdamW over the
    weight-decay groups pretraining uses, in each dtype (bf16: autocast, as accelerate's
    mixed precision), the dtypes timed in turn on one optimizer."""
    model, plan = bench.model, bench.plan
    batch = align_batch(model, plan.batch_size, torch.Generator().manual_seed(0))
    objective = PretrainObjective(model, "align", CardioCLIPLoss.from_config(model.config))
    optimizer = adamw(param_groups(objective, WEIGHT_DECAY))
    work = {dtype: training(lambda: objective(batch)["loss"], objective, optimizer, plan.batch_size, dtype)
            for dtype in dtypes}
    measured = measure(work, probes, plan.repeats, plan.warmup, _labelled(progress, bench, "align"))
    result = {"studies": plan.batch_size, "modalities": model.modalities,
              "parameters": parameter_count(objective), **measured}
    if {"fp32", "bf16"} <= set(measured):
        result["bf16_speedup"] = measured["fp32"]["ms"] / measured["bf16"]["ms"]
    return result


def bench_reference(bench: BenchModel, probes: dict[str, Matmul], progress: Progress) -> dict:
    """The ECG tower's training step beside a plain 12-lead patch transformer of the same
    width, depth, heads, MLP ratio and patch length (`PlainECGTransformer`) on the same
    signals, timed in turn; ratios are ours over the reference."""
    model, plan = bench.model, bench.plan
    inputs = tower_inputs(model, "ecg", plan.batch_size, False, torch.Generator().manual_seed(0))
    signal = inputs["signal"]
    ecg_config = model.config.towers["ecg"]
    reference = PlainECGTransformer.like(ecg_config, signal.shape[-1], model.config.embed_dim)
    tower, head = model.towers["ecg"], model.heads["ecg"]
    work = {"ours": training(partial(embeddings_sum, partial(model.encode, "ecg", inputs)), model,
                             adamw([*tower.parameters(), *head.parameters()]), plan.batch_size),
            "reference": training(lambda: reference(signal).sum(), reference,
                                  adamw(reference.parameters()), plan.batch_size)}
    measured = measure(work, probes, plan.repeats, plan.warmup, _labelled(progress, bench, "ecg vs reference"))
    ours, ref = measured["ours"], measured["reference"]
    return {"input": list(signal.shape), "reference_tokens": reference.tokens,
            "config": {k: ecg_config[k] for k in ("width", "depth", "heads", "mlp_ratio", "input_fs",
                                                   "patch_ms")},
            "parameters": {"ours": parameter_count(tower, head), "reference": parameter_count(reference)},
            "ours": ours, "reference": ref,
            "flops_ratio": ours["gflop_per_sample"] / ref["gflop_per_sample"],
            "samples_per_s_ratio": ours["samples_per_s"] / ref["samples_per_s"],
            "memory_ratio": ours["memory_mib"] / max(ref["memory_mib"], 1e-3),
            "target_flops_ratio": REFERENCE_FLOPS_TARGET}


@dataclass
class ScalingSizes:
    """The input sizes the scaling section steps through."""

    ecg_seconds: tuple[float, ...] = (2.5, 5.0, 10.0, 20.0)
    echo_frames: tuple[int, ...] = (8, 16, 32, 64)
    ct_sizes: tuple[int, ...] = (32, 64, 96, 128)


def bench_scaling(bench: BenchModel, sizes: ScalingSizes, probes: dict[str, Matmul],
                  progress: Progress) -> dict:
    """A training step of SCALING_BATCH studies (one echo view each) of a tower built for each
    input size, one tower at a time: ms, FLOPs and memory as the ECG grows longer (at the
    tower's rate, rounded to whole patches), the echo clip longer and the CT volume larger (a
    cube)."""
    generator, towers, n = torch.Generator().manual_seed(0), bench.model.config.towers, SCALING_BATCH
    scaled = partial(_scaled, bench, probes=probes, progress=progress)
    axes: dict[str, list] = {}
    if "ecg" in towers:
        fs = towers["ecg"]["input_fs"]
        patch = round(fs * towers["ecg"]["patch_ms"] / 1000)
        lengths = [max(round(s * fs / patch), 1) * patch for s in sizes.ecg_seconds]
        axes["ecg_seconds"] = [scaled("ecg", {"input_samples": k}, ecg_inputs(n, k, generator),
                                      {"seconds": k / fs}) for k in lengths]
    if "echo" in towers:
        size = towers["echo"]["input_size"]
        axes["echo_frames"] = [scaled("echo", {"input_frames": f}, echo_inputs(n, 1, f, size, generator),
                                      {"frames": f}) for f in sizes.echo_frames]
    if "ct" in towers:
        axes["ct_size"] = [scaled("ct", {"input_size": [s] * 3},
                                  {"volume": torch.randn(n, 1, s, s, s, generator=generator)}, {"size": s})
                           for s in sizes.ct_sizes]
    return axes


def _scaled(bench: BenchModel, modality: str, change: dict, inputs: dict[str, torch.Tensor],
            point: dict, *, probes: dict[str, Matmul], progress: Progress) -> dict:
    """One point of a scaling axis: a fresh tower with `change` in its config."""
    tower = create_encoder(modality, {**bench.model.config.towers[modality], **change})
    work = training(partial(embeddings_sum, partial(tower, **inputs)), tower, adamw(tower.parameters()),
                    SCALING_BATCH)
    label = f"{modality} {' '.join(f'{k}={v:g}' for k, v in point.items())}"
    measured = measure({"train": work}, probes, bench.plan.repeats, bench.plan.warmup,
                       _labelled(progress, bench, label))["train"]
    return {**point, "input": list(next(iter(inputs.values())).shape), **measured}


def _labelled(progress: Progress, bench: BenchModel, what: str) -> Callable[[str], None]:
    return lambda name: progress(f"{bench.name} {what} {name}")
