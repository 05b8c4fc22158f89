"""Checkpoints of a run: OUT/checkpoints/step_N folders (accelerate's state plus the data
position), resuming from one, the resume-time config check, and the final model folder.

A checkpoint is never half-written: it is saved into a hidden `.step_N.partial` folder,
flushed to disk and renamed when complete, and only complete ones (with train_state.json) are
resumed from or count towards `keep_checkpoints`. One is deleted by renaming it hidden first,
so a kill mid-deletion never leaves a `step_N` with train_state.json but without weights.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import nn

from mmcardio.config import load_config, to_dict
from mmcardio.datasets.preprocess_config import dict_differences
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.io import fsync_dir, fsync_tree, write_json, write_text
from mmcardio.train.objective import PretrainObjective

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where the run is: optimizer steps done, epoch, batches of that epoch consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    seconds: float = 0.0
    samples: int = 0


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints (with train_state.json), oldest first."""
    folder = out / "checkpoints"
    found = [p for p in folder.glob("step_*") if (p / "train_state.json").is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve_resume(resume: str | bool | None, out: Path) -> Path | None:
    """None, the latest checkpoint (resume=True or "latest"), or the given folder."""
    if resume in (None, False):
        return None
    if resume in (True, "latest"):
        found = checkpoint_dirs(out)
        if not found:  # killed before its first checkpoint: there is nothing to lose
            log.warning("%s: no complete checkpoint to resume from; starting the run afresh", out)
            return None
        return found[-1]
    folder = Path(resume)
    if folder.name.startswith("."):  # `.step_N.partial`: a kill may have cut it short
        raise MMCardioError("not a complete checkpoint (a hidden folder is one being written or "
                            "deleted); resume from a step_N folder", folder)
    if not (folder / "train_state.json").is_file():
        raise MMCardioError("not a checkpoint folder (no train_state.json)", folder)
    return folder


def save_checkpoint(accelerator, out: Path, state: TrainState, keep: int) -> Path:
    """accelerate state + train_state.json into checkpoints/step_N (renamed when complete)."""
    # Not accelerate's ProjectConfiguration(total_limit=...) rotation: it deletes old folders
    # before writing into the new one in place, and its load_state() picks the newest folder
    # even when a kill left it half-written.
    final = out / "checkpoints" / f"step_{state.step}"
    partial = final.with_name(f".{final.name}.partial")
    if accelerator.is_main_process:
        _remove_unfinished(final.parent)  # of this run's earlier kills (no rank writes yet)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(partial / "train_state.json", dataclasses.asdict(state))
        fsync_tree(partial)  # every rank's files on disk before the name says "complete"
        if final.exists():  # a resume from an earlier checkpoint redoes this step
            _remove_checkpoint(final)
        os.replace(partial, final)
        fsync_dir(final.parent)
        for old in checkpoint_dirs(out)[:-keep] if keep > 0 else []:
            _remove_checkpoint(old)
    accelerator.wait_for_everyone()
    return final


def _remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint; renamed hidden first, so it stops being complete in one step."""
    hidden = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(hidden, ignore_errors=True)
    os.replace(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _remove_unfinished(folder: Path) -> None:
    """Checkpoints a kill left half-written (`.step_N.partial`) or half-deleted (`.deleting`)."""
    for leftover in folder.glob(".step_*"):
        shutil.rmtree(leftover, ignore_errors=True)


def restore(accelerator, resume_from: Path | None, out: Path) -> TrainState:
    """Load a checkpoint (weights, optimizer, scheduler, RNG) and its data position; a fresh
    run starts a new metrics.jsonl, a resumed one drops the lines logged after the checkpoint.
    What killed runs left half-written or half-deleted under checkpoints/ goes."""
    metrics_file = out / "metrics.jsonl"
    if accelerator.is_main_process and (out / "checkpoints").is_dir():
        _remove_unfinished(out / "checkpoints")
    if resume_from is None:
        if accelerator.is_main_process:
            metrics_file.unlink(missing_ok=True)
        return TrainState()
    log.info("resuming from %s", resume_from)
    try:
        accelerator.load_state(str(resume_from))
        state = TrainState(**json.loads((resume_from / "train_state.json").read_text(encoding="utf-8")))
    except (OSError, EOFError, RuntimeError, ValueError, TypeError, KeyError, pickle.UnpicklingError,
            SafetensorError) as err:
        raise MMCardioError(f"checkpoint cannot be loaded ({type(err).__name__}: {err}); resume "
                            "from an earlier one with --resume FOLDER", resume_from) from None
    if accelerator.is_main_process:
        _keep_metrics_until(metrics_file, state.step)
    return state


def append_metrics(accelerator, out: Path, record: dict) -> None:
    """One line of OUT/metrics.jsonl, from the main process (a log: appended line by line;
    `restore` drops what a resumed run redoes, and a line a kill cut short)."""
    if accelerator.is_main_process:
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (the run redoes them), and a
    line a kill cut short (the log is appended line by line)."""
    if path.is_file():
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
                 if (record := _log_record(ln)) is not None and record["step"] <= step]
        write_text(path, "".join(ln + "\n" for ln in lines))


def _log_record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def check_resume_config(out: Path, cfg: Any, resumable: tuple[str, ...]) -> None:
    """Refuse to resume OUT with a run config (a dataclass) that computes something else than
    its config.yaml; the `resumable` keys may change (they do not change what is computed)."""
    saved_file = out / "config.yaml"
    if not saved_file.is_file():
        return
    saved = load_config(saved_file, type(cfg))
    diffs = [d for d in dict_differences(to_dict(saved), to_dict(cfg)) if d.split(":")[0] not in resumable]
    if diffs:
        raise ConfigError(f"resuming with a different run config: {diffs}", saved_file)


def save_final(accelerator, objective: PretrainObjective, folder: Path,
               query_sentences: list[str] | None = None) -> None:
    """`save_pretrained` folder of the full model (gathered first when sharded), its search
    queries centred on `query_sentences` when given (`CardioCLIP.fit_query_center`)."""
    from accelerate.utils import DistributedType

    model = accelerator.unwrap_model(objective).model
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        state = accelerator.get_state_dict(objective)  # collective: every rank calls it
        if accelerator.is_main_process:
            full = model.empty_like()
            full.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
            _save_centred(full, folder, query_sentences)
    elif accelerator.is_main_process:
        _save_centred(model, folder, query_sentences)
    accelerator.wait_for_everyone()


def _save_centred(model: nn.Module, folder: Path, query_sentences: list[str] | None) -> None:
    if query_sentences:
        model.fit_query_center(query_sentences)
    model.save_pretrained(folder)

