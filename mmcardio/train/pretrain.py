"""CardioCLIP pretraining: one accelerate loop for the ECG MAE stage and the alignment stage.

Runs unchanged in one process, under `accelerate launch` (DDP on GPUs, MULTI_CPU over gloo on a
CPU machine), and under FSDP/DeepSpeed configs: the model, optimizer and scheduler go through
`accelerator.prepare`, checkpoints are `accelerator.save_state` folders (sharded states are
accelerate's business), the final model is gathered with `get_state_dict`.

Each rank reads its own shard of studies through `ModalityBalancedSampler` (not re-sharded by
accelerate), so the data position is two numbers, (epoch, batches done), stored with every
checkpoint: a resumed run skips exactly the batches already seen and, with the restored RNG
states, ends with the same weights as an uninterrupted run.

Outputs in OUT/: metrics.jsonl (one line per log step), tensorboard/, checkpoints/step_N/,
final/ (a `save_pretrained` folder, preprocess config inside), run.json (summary), ranks/
(one file per rank with a parameter checksum), config.yaml (the resolved run config),
prepare.json (this session's cache preparation) and skipped_studies.json.

Studies that fail to decode are skipped under `max_failed_fraction` (default 1%; more stops the
run before training) and listed with their reasons in run.json's "skipped_studies", which keeps
those of the sessions before a `--resume`.

The modules of `mmcardio.train`: config (the run config), data (studies, cache, loader, text
vocabulary), objective (what is optimised), loop (the steps and logs), checkpoint (save and
resume), mae_eval (held-out ECG reconstruction); this one puts them together.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch import nn

from mmcardio.config import save_config, to_dict
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.failures import read_skipped, remember_skipped
from mmcardio.io import write_json
from mmcardio.model import LOSS_ONLY_PARAMETERS, OPTIONAL_STATE, CardioCLIP
from mmcardio.model_config import WEIGHTS_FILE, build_config
from mmcardio.train.checkpoint import (
    TrainState,
    check_resume_config,
    resolve_resume,
    restore,
    save_checkpoint,
    save_final,
)
from mmcardio.train.config import RESUMABLE_CHANGES, PretrainConfig, model_config_dict
from mmcardio.train.data import (
    RunData,
    extend_text_vocabulary,
    fit_text_tokenizer,
    prepare_data,
    training_sentences,
)
from mmcardio.train.loop import Training, flat_scalars, prepare_training, train
from mmcardio.train.mae_eval import evaluate_held_out
from mmcardio.train.objective import enable_grad_checkpointing, trainable_for_stage
from mmcardio.weights import load_weights


def run_pretraining(cfg: PretrainConfig, manifest: str | Path, out: str | Path,
                    cache: str | Path | None = None, resume: str | bool | None = None,
                    progress: bool = True) -> dict:
    """Train, checkpoint, save OUT/final and OUT/run.json; returns the run summary.

    cache: a prepared cache folder (default OUT/cache); studies not in it yet are prepared
    first (on the main process), so decoding happens once, not every epoch.
    resume: True/"latest" for the newest checkpoint under OUT/checkpoints, or a folder.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    out = Path(out)
    wall_start = time.perf_counter()
    # Ranks see different modalities per batch, so towers idle on one rank still need syncing.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision, log_with="tensorboard", project_dir=str(out),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    resume_from = resolve_resume(resume, out)
    if resume_from is not None:
        check_resume_config(out, cfg, RESUMABLE_CHANGES)
    set_seed(cfg.seed)
    model = _model_for_run(cfg, accelerator, manifest, out)
    data = prepare_data(cfg, accelerator, model, manifest, Path(cache) if cache else out / "cache", out, progress)
    if accelerator.is_main_process:
        remember_skipped(out, data.failed, resumed=resume_from is not None)
    run = prepare_training(cfg, accelerator, model, data)
    state = restore(accelerator, resume_from, out)
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
    accelerator.init_trackers("tensorboard", config=flat_scalars(to_dict(cfg)))
    state = train(cfg, accelerator, run, data, state, out, progress)
    return _finish(cfg, accelerator, run, data, state, manifest, out, wall_start)


def _model_for_run(cfg: PretrainConfig, accelerator, manifest: str | Path, out: Path) -> CardioCLIP:
    """`build_model`, its text vocabulary from the training reports, only the stage's
    parameters trainable, activation checkpointing when asked for."""
    model = build_model(cfg)
    if model.text.needs_tokenizer:
        fit_text_tokenizer(accelerator, model, cfg, manifest, out)
    elif cfg.stage == "align" and cfg.extend_vocabulary:
        extend_text_vocabulary(model, cfg, manifest)
    trainable_for_stage(model, cfg.stage)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    return model


def _finish(cfg: PretrainConfig, accelerator, run: Training, data: RunData, state: TrainState,
            manifest: str | Path, out: Path, wall_start: float) -> dict:
    """A checkpoint if the run stopped early, else OUT/final (and the MAE evaluation); the rank
    files and OUT/run.json, whose summary it returns on every rank."""
    finished = state.step >= run.total_steps
    if not finished and not (out / "checkpoints" / f"step_{state.step}").is_dir():
        save_checkpoint(accelerator, out, state, cfg.keep_checkpoints)  # a stop is always resumable
    if finished:
        save_final(accelerator, run.objective, out / "final",
                   training_sentences(cfg, manifest) if cfg.stage == "align" else None)
    model = accelerator.unwrap_model(run.objective).model
    _write_rank_file(accelerator, out, model, state)
    if accelerator.is_main_process:
        summary = _run_summary(cfg, accelerator, out, state, finished, run, wall_start, data)
        if finished and cfg.stage == "mae":
            summary["mae_eval"] = evaluate_held_out(cfg, model, data)
        write_json(out / "run.json", summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes trackers and the process group
    return json.loads((out / "run.json").read_text(encoding="utf-8"))


def build_model(cfg: PretrainConfig) -> CardioCLIP:
    """The CardioCLIP to train, built from the run's model config; with `init_from`, its
    weights are loaded from that saved folder (same architecture; the run's own settings,
    e.g. preprocessing or MAE masking, stay the run's). A run may change the loss (an MAE
    run's "clip" weights into a "siglip" alignment): the loss's temperature and bias then
    start from the model config."""
    model = CardioCLIP(build_config(model_config_dict(cfg)))
    if cfg.stage == "align" and cfg.translation_views and not model.config.report_views:
        raise ConfigError("translation views are report views drawn in another language, but the model "
                          "has report_views off; set model_overrides.report_views: true or leave this "
                          "off", field="translation_views")
    if cfg.init_from is not None:
        weights = Path(cfg.init_from) / WEIGHTS_FILE
        if not weights.is_file():
            raise MMCardioError(f"no {WEIGHTS_FILE}; expected a saved model folder (e.g. a run's final/)",
                                cfg.init_from, "init_from")
        tolerated = load_weights(model, weights, fits=f"model {cfg.model!r} with this run's model_overrides",
                                 field="init_from", allow_missing=OPTIONAL_STATE | LOSS_ONLY_PARAMETERS,
                                 allow_unexpected=LOSS_ONLY_PARAMETERS)
        if tolerated & LOSS_ONLY_PARAMETERS:  # the loss changed: a softmax temperature is no sigmoid one
            with torch.no_grad():
                model.logit_scale.fill_(model.config.init_logit_scale)
    return model


def param_checksum(model: nn.Module) -> str:
    """sha256 over every parameter's bytes, in name order (equal on all DDP ranks)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _write_rank_file(accelerator, out: Path, model: nn.Module, state: TrainState) -> None:
    write_json(out / "ranks" / f"rank_{accelerator.process_index}.json", {
        "rank": accelerator.process_index, "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type), "step": state.step,
        "param_sha256": param_checksum(model)})


def _run_summary(cfg: PretrainConfig, accelerator, out: Path, state: TrainState, finished: bool,
                 run: Training, wall_start: float, data: RunData) -> dict:
    metrics_file = out / "metrics.jsonl"
    lines = [json.loads(ln) for ln in metrics_file.read_text(encoding="utf-8").splitlines() if ln.strip()] \
        if metrics_file.is_file() else []
    return {"status": "finished" if finished else "stopped", "stage": cfg.stage, "model": cfg.model,
            "init_from": cfg.init_from, "world_size": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type), "steps": state.step,
            "epochs": round(state.step / run.steps_per_epoch, 3), "samples": state.samples,
            "train_studies": len(data.dataset),
            "skipped_studies": read_skipped(out),  # this session's and the earlier ones'
            "first_loss": lines[0]["loss"] if lines else None,
            "final_loss": lines[-1]["loss"] if lines else None,
            "samples_per_s": state.samples / state.seconds if state.seconds else None,
            "seconds": round(state.seconds, 2), "wall_seconds": round(time.perf_counter() - wall_start, 2),
            "flops_per_sample": run.flops, "final": str(out / "final") if finished else None}

