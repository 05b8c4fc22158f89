"""The optimizer-step loop of the segmenter and report-head trainings: each rank's full
batches of an epoch from the first not yet trained on (`DistributedSampler`, so the data
position is (epoch, batches done) and a resumed run continues where the checkpoint was), a
step function, a metrics.jsonl line every `log_every` steps and a checkpoint every
`checkpoint_every`. (Pretraining has its own loop, with gradient accumulation.)

`cfg` is any run config with max_steps, batch_size, seed, num_workers, log_every,
checkpoint_every and keep_checkpoints.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmcardio.train.checkpoint import TrainState, append_metrics, save_checkpoint
from mmcardio.train.loop import Meter


def epoch_loader(cfg: Any, accelerator, dataset: Dataset, state: TrainState, keyed: bool = False,
                 collate_fn: Callable | None = None) -> DataLoader:
    """This rank's full batches of the epoch, from the first not yet trained on; with
    `keyed`, items are fetched as (index, epoch), so a dataset can draw new augmentations
    each epoch."""
    sampler = DistributedSampler(dataset, accelerator.num_processes, accelerator.process_index, seed=cfg.seed)
    sampler.set_epoch(state.epoch)
    order = [(i, state.epoch) for i in sampler] if keyed else list(sampler)
    batches = [order[b: b + cfg.batch_size] for b in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
    # Its own generator: without one, every iter() of a DataLoader draws its workers' base seed
    # from torch's global RNG, so a resumed run (one more loader per resume) would see other
    # dropout than an uninterrupted one; and the workers' seeds depend on the epoch alone.
    generator = torch.Generator().manual_seed(cfg.seed + state.epoch)
    return DataLoader(dataset, batch_sampler=batches[state.batch_in_epoch:], num_workers=cfg.num_workers,
                      collate_fn=collate_fn, generator=generator)


def run_steps(cfg: Any, accelerator, make_loader: Callable[[TrainState], DataLoader],
              step: Callable[[Any], torch.Tensor], scheduler, state: TrainState, out: Path, desc: str,
              progress: bool) -> TrainState:
    """Optimizer steps until `cfg.max_steps`: `step(batch)` runs one (forward, backward,
    optimizer and scheduler) and returns the detached loss."""
    from tqdm import tqdm

    meter = Meter([])
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=desc, unit="step",
               disable=not (progress and accelerator.is_main_process))
    started = time.perf_counter()
    while state.step < cfg.max_steps:
        batches = iter(make_loader(state))
        while state.step < cfg.max_steps:
            tick = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                break
            wait = time.perf_counter() - tick
            loss = step(batch)
            state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
            state.samples += cfg.batch_size * accelerator.num_processes
            meter.add({"loss": loss, "losses": {}}, cfg.batch_size, wait)
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                _log(accelerator, out, state, meter, scheduler, bar)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                state.seconds += time.perf_counter() - started
                started = time.perf_counter()
                save_checkpoint(accelerator, out, state, cfg.keep_checkpoints)
    bar.close()
    state.seconds += time.perf_counter() - started
    return state


def _log(accelerator, out: Path, state: TrainState, meter: Meter, scheduler, bar) -> None:
    summary = meter.summary(accelerator)
    record = {"step": state.step, "epoch": state.epoch, "loss": summary["loss"],
              "samples_per_s": summary["samples_per_s"], "data_wait_share": summary["data_wait_share"],
              "lr": scheduler.get_last_lr()[0]}
    bar.set_postfix(loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:.1f}")
    append_metrics(accelerator, out, record)
    meter.reset()
