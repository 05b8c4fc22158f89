"""The training loop: optimizer steps over this rank's batches with gradient accumulation,
metrics.jsonl/tensorboard logging every `log_every` steps and checkpoints every
`checkpoint_every` steps."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcardio.datasets.cohort import collate_studies
from mmcardio.train.checkpoint import TrainState, append_metrics, save_checkpoint
from mmcardio.train.config import PretrainConfig
from mmcardio.train.data import RunData
from mmcardio.train.objective import PretrainObjective, loss_terms, measure_flops, param_groups


class Meter:
    """Loss sums and timings over one log interval, reduced across ranks when logged."""

    def __init__(self, terms: list[str]):
        self.terms = terms
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(2 + 2 * len(self.terms), dtype=torch.float64)  # loss, n, (term, n)...
        self.samples, self.wait, self.start = 0, 0.0, time.perf_counter()

    def add(self, out: dict, n_samples: int, wait: float) -> None:
        values = [float(out["loss"]), 1.0]
        for term in self.terms:
            value = out["losses"].get(term)
            values += [float(value), 1.0] if value is not None else [0.0, 0.0]
        self.sums += torch.tensor(values, dtype=torch.float64)
        self.samples += n_samples
        self.wait += wait

    def summary(self, accelerator) -> dict:
        sums = accelerator.reduce(self.sums.to(accelerator.device), "sum").cpu()
        samples = int(accelerator.reduce(torch.tensor([self.samples], device=accelerator.device), "sum"))
        seconds = max(time.perf_counter() - self.start, 1e-9)
        losses = {t: float(sums[2 + 2 * i] / sums[3 + 2 * i])
                  for i, t in enumerate(self.terms) if sums[3 + 2 * i] > 0}
        return {"loss": float(sums[0] / max(sums[1], 1)), "losses": losses,
                "samples_per_s": samples / seconds, "data_wait_share": self.wait / seconds}


@dataclass
class Training:
    """What `accelerator.prepare` returned, the step budget and the measured FLOPs."""

    objective: Any
    optimizer: Any
    scheduler: Any
    steps_per_epoch: int
    total_steps: int
    flops: float


def prepare_training(cfg: PretrainConfig, accelerator, model: nn.Module, data: RunData) -> Training:
    """The stage's objective, AdamW and the warmup-cosine schedule, through `accelerator.prepare`
    (FLOPs measured on the first batch before)."""
    from accelerate.utils import send_to_device
    from transformers import get_cosine_schedule_with_warmup

    from mmcardio.losses import CardioCLIPLoss

    steps_per_epoch = max((data.sampler.num_samples // cfg.batch_size) // cfg.grad_accum, 1)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    loss_fn = CardioCLIPLoss.from_config(model.config, accelerator.process_index, accelerator.num_processes) \
        if cfg.stage == "align" else None
    objective = PretrainObjective(model, cfg.stage, loss_fn, cfg.mae_mask_ratio).to(accelerator.device)
    # (index, seed) keys: training items (one random ECG window each), as the sampler yields
    first = collate_studies([data.dataset[(i, cfg.seed)] for i in range(min(cfg.batch_size, len(data.dataset)))])
    flops = measure_flops(objective, send_to_device(first, accelerator.device))
    opt = cfg.optimizer
    optimizer = torch.optim.AdamW(param_groups(objective, opt.weight_decay), lr=opt.lr,
                                  betas=tuple(opt.betas), eps=opt.eps)
    # A prepared scheduler steps once per process per optimizer step (accelerate's convention).
    scheduler = get_cosine_schedule_with_warmup(optimizer, opt.warmup_steps * accelerator.num_processes,
                                                total_steps * accelerator.num_processes)
    _set_deepspeed_batch_size(accelerator, cfg.batch_size)
    return Training(*accelerator.prepare(objective, optimizer, scheduler), steps_per_epoch, total_steps, flops)


def train(cfg: PretrainConfig, accelerator, run: Training, data: RunData, state: TrainState,
          out: Path, progress: bool) -> TrainState:
    """Optimizer steps until the budget (or `stop_at_step`), logging and checkpointing."""
    from accelerate.utils import send_to_device
    from tqdm import tqdm

    meter = Meter(loss_terms(accelerator.unwrap_model(run.objective)))
    bar = tqdm(total=run.total_steps, initial=state.step, desc=f"pretrain {cfg.stage}", unit="step",
               disable=not (progress and accelerator.is_main_process))
    stop_at = min(run.total_steps, cfg.stop_at_step or run.total_steps)
    segment_start = time.perf_counter()
    run.objective.train()
    while state.step < stop_at:
        data.sampler.set_epoch(state.epoch, start=state.batch_in_epoch * cfg.batch_size)
        data.loader.generator.manual_seed(cfg.seed + state.epoch)
        batches, epoch_done = iter(data.loader), True
        while True:
            tick = time.perf_counter()
            batch = next(batches, None)
            wait = time.perf_counter() - tick
            if batch is None:
                break
            result = _micro_step(cfg, accelerator, run, send_to_device(batch, accelerator.device))
            state.batch_in_epoch += 1
            meter.add(result, len(batch["study_id"]), wait)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            state.samples += cfg.batch_size * cfg.grad_accum * accelerator.num_processes
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == stop_at:
                _log(accelerator, out, state, meter, run, bar)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                state.seconds += time.perf_counter() - segment_start
                segment_start = time.perf_counter()
                save_checkpoint(accelerator, out, state, cfg.keep_checkpoints)
            if state.step >= stop_at:
                epoch_done = False
                break
        if epoch_done:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    bar.close()
    state.seconds += time.perf_counter() - segment_start
    return state


def _micro_step(cfg: PretrainConfig, accelerator, run: Training, batch: dict) -> dict:
    """Forward and backward of one batch; the optimizer steps when accumulation is complete."""
    with accelerator.accumulate(run.objective):
        result = run.objective(batch)
        accelerator.backward(result["loss"])
        if accelerator.sync_gradients and cfg.optimizer.max_grad_norm:
            accelerator.clip_grad_norm_(run.objective.parameters(), cfg.optimizer.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    return {"loss": result["loss"].detach(), "losses": {k: v.detach() for k, v in result["losses"].items()}}


def _log(accelerator, out: Path, state: TrainState, meter: Meter, run: Training, bar) -> None:
    """One metrics.jsonl line and tensorboard scalars (losses reduced over ranks)."""
    summary = meter.summary(accelerator)
    record = {"step": state.step, "epoch": state.epoch, **summary,
              "lr": run.scheduler.get_last_lr()[0], "flops_per_sample": run.flops}
    bar.set_postfix(loss=f"{summary['loss']:.4f}", sps=f"{summary['samples_per_s']:.1f}",
                    wait=f"{summary['data_wait_share']:.0%}")
    append_metrics(accelerator, out, record)
    accelerator.log(flat_scalars({k: v for k, v in record.items() if k != "step"}), step=state.step)
    meter.reset()


def _set_deepspeed_batch_size(accelerator, batch_size: int) -> None:
    """DeepSpeed needs the micro-batch size; our loader is not prepared, so tell it here."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size


def flat_scalars(data: dict, prefix: str = "") -> dict:
    """Flat scalar dict for tensorboard's hparams (lists and None as strings)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_scalars(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out

