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
(one file per rank with a parameter checksum), config.yaml (the resolved run config).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mmcardio.config import from_dict, read_mapping, to_dict
from mmcardio.datasets.cohort import (
    CACHE_CONFIG,
    ModalityBalancedSampler,
    StudyCache,
    StudyDataset,
    collate_studies,
    make_loader,
    prepare_cache,
)
from mmcardio.datasets.transforms import PreprocessConfig, dict_differences
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.io import atomic_path, write_json, write_text
from mmcardio.sentences import UNITS, report_sentences
from mmcardio.study import Study, read_manifest

log = logging.getLogger(__name__)

STAGES = ("mae", "align")
PRECISIONS = ("no", "bf16", "fp16")
#: Run-config keys that may change when resuming (they do not change what is computed).
RESUMABLE_CHANGES = ("stop_at_step", "num_workers", "log_every", "checkpoint_every", "keep_checkpoints")


@dataclass
class OptimizerConfig:
    """AdamW with decay on matrix weights only, linear warmup then cosine decay to 0."""

    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 10
    max_grad_norm: float | None = 1.0


@dataclass
class PretrainConfig:
    """A pretraining run. Sizes of model inputs come from the model config's `preprocess`;
    `preprocess` here overrides the other settings (filters, spacing, windows).

    stage: "mae" (ECG masked modelling; only the ECG tower trains) or "align" (contrastive).
    init_from: a saved model folder whose weights the run starts from (e.g. an MAE run's
        final/); its architecture must be `model`'s.
    model_overrides: merged into the model config (e.g. {towers: {ecg: {mae_mask_ratio: 0.6}}}).
    loss, cross_modal_pairs: override the model config's loss settings ("clip" | "siglip").
    mae_mask_ratio: share of ECG patches hidden in the MAE stage (default: the ECG tower's).
    batch_size: per process. max_steps: optimizer steps (default: epochs x steps per epoch).
    stop_at_step: end early at this step, schedule unchanged (pre-emptible jobs; resume later).
    balance_modalities: oversampling exponent of rare modalities (0 = uniform).
    balance_languages: oversampling exponent of the studies whose report language is rare
        (0 = as the cohort has them; 1 = each language drawn about equally often).
    extend_vocabulary: in the align stage, add the training reports' words that a pretrained
        text tokenizer reads only as [UNK] (e.g. Chinese with an English vocabulary) as new
        tokens. (A `scratch` text tower always learns its whole vocabulary from those reports.)
    sample_sentences: align each study with a random subset of its report's sentences, drawn
        anew every epoch (see `sentences.sample_sentences`).
    text_unit: what sample_sentences draws, "sentence" or "clause" (the comma- and
        colon-separated parts of sentences).
    train_on_translations: draw each training study's report language from its own and its
        manifest `translations` (which then also feed the text vocabulary and query centre).
    translation_views: draw only the report view's language (the model's `report_views`)
        that way, so each report is also aligned with its twin in another language while the
        study towers keep learning from the reports as written.
    stage_overrides: {stage: {key: value}} merged in for the chosen stage, so one file holds
        both stages (e.g. more steps and a higher lr for "mae").
    """

    model: str = "cardioclip-tiny"
    model_overrides: dict = field(default_factory=dict)
    init_from: str | None = None
    stage: str = "align"
    preprocess: dict = field(default_factory=dict)
    loss: str | None = None
    cross_modal_pairs: list | None = None
    mae_mask_ratio: float | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    epochs: int = 1
    max_steps: int | None = None
    stop_at_step: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    mixed_precision: str = "no"
    grad_checkpointing: bool = False
    seed: int = 0
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    balance_modalities: float = 1.0
    balance_languages: float = 0.0
    samples_per_epoch: int | None = None
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    stage_overrides: dict = field(default_factory=dict)
    extend_vocabulary: bool = True
    sample_sentences: bool = True
    text_unit: str = "sentence"
    train_on_translations: bool = False
    translation_views: bool = False

    def __post_init__(self) -> None:
        checks = [("stage", self.stage in STAGES, f"expected one of {STAGES}"),
                  ("mixed_precision", self.mixed_precision in PRECISIONS, f"expected one of {PRECISIONS}"),
                  ("batch_size", self.batch_size >= 1, "expected at least 1"),
                  ("grad_accum", self.grad_accum >= 1, "expected at least 1"),
                  ("log_every", self.log_every >= 1, "expected at least 1"),
                  ("checkpoint_every", self.checkpoint_every >= 0, "expected 0 (off) or more"),
                  ("text_unit", self.text_unit in UNITS, f"expected one of {UNITS}")]
        for name, ok, problem in checks:
            if not ok:
                raise ConfigError(f"{problem}, got {getattr(self, name)!r}", field=name)


# ------------------------------------------------------------------------------ config

def parse_overrides(items: Sequence[str]) -> dict:
    """["a.b=1", "c=[1, 2]"] -> {"a": {"b": 1}, "c": [1, 2]} (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {item!r}", field="--set")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _yaml_value(value)
    return out


def _yaml_value(text: str) -> Any:
    """A YAML scalar or collection; exponent floats without a dot ("1e-3") become floats
    (YAML 1.1, which PyYAML reads, would keep them as strings)."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def deep_merge(base: dict, extra: dict) -> dict:
    """`base` updated by `extra`, recursing into nested mappings (inputs unchanged)."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_pretrain_config(path: str | Path | None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """The run config from YAML/JSON (or the defaults): file < its stage_overrides for the
    chosen stage < `--set` overrides."""
    data = read_mapping(path) if path else {}
    source = str(path) if path else "<defaults>"
    given = parse_overrides(overrides)
    stage = given.get("stage", data.get("stage", PretrainConfig.stage))
    per_stage = deep_merge(data.get("stage_overrides") or {}, given.get("stage_overrides") or {})
    unknown = sorted(set(per_stage) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; expected some of {STAGES}", source, "stage_overrides")
    return from_dict(PretrainConfig, deep_merge(deep_merge(data, per_stage.get(stage) or {}), given), source)


def model_config_dict(cfg: PretrainConfig) -> dict:
    """The full model config the run trains: registry config, overrides, preprocess merged."""
    from mmcardio.model import build_config, config_path, get_config

    source = str(config_path(cfg.model))
    resolved = to_dict(build_config(get_config(cfg.model), source))  # tower names -> dicts
    resolved = deep_merge(resolved, cfg.model_overrides)
    for key in ("loss", "cross_modal_pairs"):
        if getattr(cfg, key) is not None:
            resolved[key] = getattr(cfg, key)
    preprocess = deep_merge(resolved.get("preprocess") or {}, cfg.preprocess)
    resolved["preprocess"] = PreprocessConfig.from_dict(preprocess, source).to_dict()
    return to_dict(build_config(resolved, source))


def run_preprocess(cfg: PretrainConfig) -> PreprocessConfig:
    """The preprocessing the run's model takes (model config + the run's overrides)."""
    return PreprocessConfig.from_dict(model_config_dict(cfg)["preprocess"])


def build_model(cfg: PretrainConfig):
    """The CardioCLIP to train, built from the run's model config; with `init_from`, its
    weights are loaded from that saved folder (same architecture; the run's own settings,
    e.g. preprocessing or MAE masking, stay the run's). A run may change the loss (an MAE
    run's "clip" weights into a "siglip" alignment): the loss's temperature and bias then
    start from the model config."""
    from safetensors.torch import load_model

    from mmcardio.model import (
        LOSS_ONLY_PARAMETERS,
        OPTIONAL_STATE,
        WEIGHTS_FILE,
        CardioCLIP,
        build_config,
        few_names,
    )

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
        misfit = f"the weights do not fit model {cfg.model!r} with this run's model_overrides"
        try:
            missing, unexpected = load_model(model, str(weights), strict=False)
        except RuntimeError as err:  # a tensor of another shape
            raise ConfigError(f"{misfit}: {err}", weights, "init_from") from None
        misfits = set(missing) | set(unexpected)
        wrong = sorted(misfits - LOSS_ONLY_PARAMETERS - OPTIONAL_STATE)
        if wrong:
            raise ConfigError(f"{misfit} (missing or unexpected: {few_names(wrong)})", weights, "init_from")
        if misfits & LOSS_ONLY_PARAMETERS:  # the loss changed: a softmax temperature is no sigmoid one
            with torch.no_grad():
                model.logit_scale.fill_(model.config.init_logit_scale)
    return model


# ----------------------------------------------------------------------------- objective

class PretrainObjective(nn.Module):
    """The model and its loss as one module, so DDP/FSDP/DeepSpeed wrap what makes the loss
    (calling a tower's `mae_loss` outside the wrapper's forward would skip gradient sync).

    forward(batch) -> {"loss": scalar, "losses": {term: scalar}}.
    """

    def __init__(self, model: nn.Module, stage: str, loss_fn: nn.Module | None = None,
                 mae_mask_ratio: float | None = None):
        super().__init__()
        self.model, self.stage, self.loss_fn, self.mae_mask_ratio = model, stage, loss_fn, mae_mask_ratio

    def forward(self, batch: dict) -> dict:
        if self.stage == "mae":
            ecg = batch["ecg"]
            out = self.model.towers["ecg"].mae_loss(ecg["signal"], ecg["lead_mask"], self.mae_mask_ratio)
            return {"loss": out["loss"], "losses": {"ecg_mae": out["loss"]}}
        out = self.loss_fn(**self.model(batch))
        return {"loss": out["loss"], "losses": out["losses"]}


def loss_terms(objective: PretrainObjective) -> list[str]:
    """Every term name the objective can report, in a fixed order (for reductions and logs)."""
    if objective.stage == "mae":
        return ["ecg_mae"]
    pairs = [f"{a}-{b}" for a, b in objective.loss_fn.cross_modal_pairs]
    return list(objective.loss_fn.modalities) + pairs


def trainable_for_stage(model: nn.Module, stage: str) -> None:
    """MAE trains the ECG tower alone; alignment trains everything the model leaves trainable."""
    if stage == "mae":
        if "ecg" not in model.towers:
            raise ConfigError("the MAE stage needs a model with an ECG tower", field="stage")
        model.requires_grad_(False)
        model.towers["ecg"].requires_grad_(True)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only matrix weights of Linear/Conv/attention projections; no decay on norms,
    biases, embeddings, tokens and logit scale/bias. (timm's helper only spots 1-D
    parameters and listed names; embeddings and tokens here are 2-D and 3-D.)"""
    matrices: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            matrices.add(id(module.weight))
        elif isinstance(module, nn.MultiheadAttention):
            matrices.update(id(p) for p in (module.in_proj_weight, module.q_proj_weight,
                                            module.k_proj_weight, module.v_proj_weight) if p is not None)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if id(p) in matrices]
    no_decay = [p for p in params if id(p) not in matrices]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute transformer layers in the backward pass (PyTorch's activation-checkpoint
    wrapper around each layer; the transformers text model uses its own switch)."""
    from monai.networks.blocks.transformerblock import TransformerBlock
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
    )

    for module in model.modules():
        if hasattr(module, "gradient_checkpointing_enable") and hasattr(module, "config"):
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    apply_activation_checkpointing(
        model, check_fn=lambda m: isinstance(m, (nn.TransformerEncoderLayer, TransformerBlock)))


def measure_flops(objective: PretrainObjective, batch: dict) -> float:
    """Model FLOPs of one forward + backward on `batch`, per sample (matmuls and convolutions,
    as torch's FlopCounterMode counts them). Leaves weights, gradients and RNG untouched."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = objective.training
    objective.eval()  # same FLOPs; no running statistics updated
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        objective(batch)["loss"].backward()
    objective.zero_grad(set_to_none=True)
    objective.train(was_training)
    return counter.get_total_flops() / len(batch["study_id"])


def param_checksum(model: nn.Module) -> str:
    """sha256 over every parameter's bytes, in name order (equal on all DDP ranks)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_mae(model: nn.Module, dataset: StudyDataset, batch_size: int = 16, seed: int = 0,
                 mask_ratio: float | None = None) -> dict:
    """Held-out ECG reconstruction.

    mae_vs_mean_ratio: squared error of the model on the hidden samples divided by that of a
        mean predictor, which predicts every hidden sample of a lead as the mean of that
        lead's visible samples in the same ECG (the ECG's visible mean when a whole lead is
        hidden). Masks come from the tower's own MAE masking, with a fixed seed.
    lead_reconstruction_corr: mean Pearson correlation of V1-V6 reconstructed from lead I
        alone with the recorded V1-V6.
    """
    tower = model.towers["ecg"]
    was_training = model.training
    model.eval()
    device = next(tower.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    loader = make_loader(dataset, batch_size, drop_last=False)
    err_model = err_mean = 0.0
    correlations: list[torch.Tensor] = []
    lead_i, chest = 0, slice(6, 12)
    for batch in loader:
        signal = batch["ecg"]["signal"].to(device)
        lead_mask = batch["ecg"]["lead_mask"].to(device)
        out = tower.mae_loss(signal, lead_mask, mask_ratio, generator=generator)
        hidden, target = out["mask"], out["target"]
        err_model += float(((out["pred"] - target) ** 2)[hidden].sum())
        err_mean += float(((mean_prediction(target, lead_mask[..., None] & ~hidden) - target) ** 2)[hidden].sum())
        has_i = lead_mask[:, lead_i]
        if has_i.any():
            only_i = torch.zeros_like(lead_mask)
            only_i[:, lead_i] = True
            recon = tower.reconstruct_leads(signal[has_i], only_i[has_i])
            corr = pearson(recon[:, chest], signal[has_i][:, chest])
            correlations.append(corr[lead_mask[has_i][:, chest] & torch.isfinite(corr)])
    model.train(was_training)
    corr = torch.cat(correlations) if correlations else torch.empty(0)
    return {"mae_vs_mean_ratio": err_model / err_mean if err_mean > 0 else float("nan"),
            "lead_reconstruction_corr": float(corr.mean()) if corr.numel() else float("nan"),
            "n_ecgs": len(dataset), "n_chest_leads_scored": int(corr.numel()),
            "mean_predictor": "per-lead mean of the visible samples of the same ECG"}


def mean_prediction(signal: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """[n, L, S]: each lead's mean over its visible samples (the ECG's visible mean if none)."""
    weight = visible.to(signal.dtype)
    per_lead = (signal * weight).sum(2) / weight.sum(2).clamp_min(1)
    per_ecg = (signal * weight).sum((1, 2)) / weight.sum((1, 2)).clamp_min(1)
    has_visible = visible.any(2)
    return torch.where(has_visible, per_lead, per_ecg[:, None])[..., None].expand_as(signal)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last axis (NaN where either side is constant)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


# ----------------------------------------------------------------------------- the loop

@dataclass
class TrainState:
    """Where the run is: optimizer steps done, epoch, batches of that epoch consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    seconds: float = 0.0
    samples: int = 0


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
        if not found:
            raise MMCardioError("nothing to resume: no checkpoint under checkpoints/", out)
        return found[-1]
    folder = Path(resume)
    if not (folder / "train_state.json").is_file():
        raise MMCardioError("not a checkpoint folder (no train_state.json)", folder)
    return folder


def save_checkpoint(accelerator, out: Path, state: TrainState, keep: int) -> Path:
    """accelerate state + train_state.json into checkpoints/step_N (renamed when complete)."""
    final = out / "checkpoints" / f"step_{state.step}"
    partial = final.with_name(f".{final.name}.partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(partial / "train_state.json", dataclasses.asdict(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in checkpoint_dirs(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


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


def _flat(data: dict, prefix: str = "") -> dict:
    """Flat scalar dict for tensorboard's hparams (lists and None as strings)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def _studies_for_run(cfg: PretrainConfig, studies: list[Study], modalities: list[str]) -> list[Study]:
    keep = [s for s in studies if s.split in cfg.train_splits
            and any(str(m) in modalities for m in s.modalities())]
    if cfg.stage == "align":
        keep = [s for s in keep if s.report.strip()]  # the text is the anchor: no report, no pair
    if not keep:
        raise MMCardioError(f"no {'/'.join(cfg.train_splits)} study has {modalities}"
                            + (" and a report" if cfg.stage == "align" else ""), field="split")
    return keep


def _check_resume_config(out: Path, cfg: PretrainConfig) -> None:
    saved_file = out / "config.yaml"
    if not saved_file.is_file():
        return
    saved = from_dict(PretrainConfig, read_mapping(saved_file), str(saved_file))
    diffs = [d for d in dict_differences(to_dict(saved), to_dict(cfg)) if d.split(":")[0] not in RESUMABLE_CHANGES]
    if diffs:
        raise ConfigError(f"resuming with a different run config: {diffs}", saved_file)


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (the run redoes them)."""
    if path.is_file():
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
                 if ln.strip() and json.loads(ln)["step"] <= step]
        write_text(path, "".join(ln + "\n" for ln in lines))


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
        _check_resume_config(out, cfg)
    set_seed(cfg.seed)
    model = build_model(cfg)
    if model.text.needs_tokenizer:
        _fit_text_tokenizer(accelerator, model, cfg, manifest, out)
    elif cfg.stage == "align" and cfg.extend_vocabulary:
        _extend_text_vocabulary(model, cfg, manifest)
    trainable_for_stage(model, cfg.stage)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    data = _prepare_data(cfg, accelerator, model, manifest, Path(cache) if cache else out / "cache", out, progress)
    run = _prepare_training(cfg, accelerator, model, data)
    state = _restore(accelerator, resume_from, out)
    if accelerator.is_main_process:
        write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    accelerator.init_trackers("tensorboard", config=_flat(to_dict(cfg)))
    state = _train(cfg, accelerator, run, data, state, out, progress)
    finished = state.step >= run.total_steps
    if not finished and not (out / "checkpoints" / f"step_{state.step}").is_dir():
        save_checkpoint(accelerator, out, state, cfg.keep_checkpoints)  # a stop is always resumable
    if finished:
        save_final(accelerator, run.objective, out / "final",
                   _training_sentences(cfg, manifest) if cfg.stage == "align" else None)
    model = accelerator.unwrap_model(run.objective).model
    _write_rank_file(accelerator, out, model, state)
    if accelerator.is_main_process:
        summary = _run_summary(cfg, accelerator, out, state, finished, run, wall_start, data)
        if finished and cfg.stage == "mae":
            summary["mae_eval"] = _evaluate_held_out(cfg, model, data)
        write_json(out / "run.json", summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes trackers and the process group
    return json.loads((out / "run.json").read_text(encoding="utf-8"))


def training_reports(cfg: PretrainConfig, manifest: str | Path) -> list[str]:
    """Whole and exam reports of the training studies (in every language with
    `train_on_translations` or `translation_views`)."""
    studies = [s for s in read_manifest(manifest) if s.split in cfg.train_splits]
    if cfg.train_on_translations or cfg.translation_views:
        studies = [s.in_language(lang) for s in studies for lang in s.languages()]
    return [t for s in studies for t in (s.report, *s.reports.values()) if t]


def _training_sentences(cfg: PretrainConfig, manifest: str | Path) -> list[str]:
    """The distinct sentences of the training reports, sorted (the same on every run)."""
    return sorted({s for t in training_reports(cfg, manifest) for s in report_sentences(t)})


def _fit_text_tokenizer(accelerator, model: nn.Module, cfg: PretrainConfig, manifest: str | Path,
                        out: Path) -> None:
    """A scratch text tower's vocabulary: the tokenizer of `init_from` when it has one (its
    weights were trained with it), else learned from the training reports on the main process
    and saved to OUT/tokenizer, which every rank (and a resumed run) then loads."""
    from mmcardio.model import TOKENIZER_DIR

    inherited = Path(cfg.init_from) / TOKENIZER_DIR if cfg.init_from else None
    if inherited is not None and (inherited / "tokenizer.json").is_file():
        model.text.load_tokenizer(inherited)
        return
    source = out / TOKENIZER_DIR
    if accelerator.is_main_process and not (source / "tokenizer.json").is_file():
        size = model.text.fit_tokenizer(training_reports(cfg, manifest))
        with atomic_path(source) as tmp:
            model.text.save_tokenizer(tmp)
        log.info("text vocabulary: %d WordPiece tokens learned from the training reports", size)
    accelerator.wait_for_everyone()  # on every rank, whoever wrote the folder
    model.text.load_tokenizer(source)


def _extend_text_vocabulary(model: nn.Module, cfg: PretrainConfig, manifest: str | Path) -> None:
    """Give the text tower tokens for the training reports' words it reads only as [UNK]
    (deterministic, so every rank and a resumed run build the same vocabulary)."""
    added = model.text.extend_vocabulary(training_reports(cfg, manifest))
    if added:
        log.info("text vocabulary: %d new tokens from the training reports (e.g. %s)",
                 len(added), " ".join(added[:10]))


@dataclass
class RunData:
    """The studies, the cache and the per-rank loader of a run."""

    studies: list[Study]
    cache_dir: Path
    preprocess: PreprocessConfig
    failed: set[str]
    dataset: StudyDataset
    sampler: ModalityBalancedSampler
    loader: Any


def _prepare_data(cfg: PretrainConfig, accelerator, model: nn.Module, manifest: str | Path,
                  cache_dir: Path, out: Path, progress: bool) -> RunData:
    """Prepare missing studies into the cache (main process), then open this rank's loader."""
    modalities = ["ecg"] if cfg.stage == "mae" else list(model.modalities)
    preprocess = PreprocessConfig.from_dict(model.config.preprocess)
    studies = read_manifest(manifest)
    if (cache_dir / CACHE_CONFIG).is_file():
        StudyCache(cache_dir, preprocess, modalities)  # every rank refuses a foreign cache, none waits
    if accelerator.is_main_process:
        eval_studies = [s for s in studies if s.split in cfg.eval_splits] if cfg.stage == "mae" else []
        used = _studies_for_run(cfg, studies, modalities) + eval_studies
        write_json(out / "prepare.json", prepare_cache(used, cache_dir, preprocess, progress=progress,
                                                       num_workers=cfg.num_workers, modalities=modalities))
    accelerator.wait_for_everyone()
    failed = set(json.loads((out / "prepare.json").read_text(encoding="utf-8"))["failed"])
    if failed and accelerator.is_main_process:
        log.warning("%d studies failed to decode and are left out (see %s): %s", len(failed),
                    out / "prepare.json", sorted(failed)[:10])
    train_studies = [s for s in _studies_for_run(cfg, studies, modalities) if s.study_id not in failed]
    dataset = StudyDataset(train_studies, preprocess, cache_dir=cache_dir, train=True, modalities=modalities,
                           sample_sentences=cfg.sample_sentences, text_unit=cfg.text_unit,
                           translations=cfg.train_on_translations, view_translations=cfg.translation_views,
                           report_views=cfg.stage == "align" and model.config.report_views)
    sampler = ModalityBalancedSampler(dataset.study_modalities(), accelerator.num_processes,
                                      accelerator.process_index, cfg.seed, cfg.balance_modalities,
                                      cfg.samples_per_epoch, [s.report_lang for s in dataset.studies],
                                      cfg.balance_languages)
    if sampler.num_samples < cfg.batch_size:
        raise ConfigError(f"each of {accelerator.num_processes} processes gets {sampler.num_samples} "
                          f"studies per epoch, fewer than batch_size {cfg.batch_size}", field="batch_size")
    loader = make_loader(dataset, cfg.batch_size, sampler, cfg.num_workers, cfg.seed)
    return RunData(studies, cache_dir, preprocess, failed, dataset, sampler, loader)


@dataclass
class Training:
    """What `accelerator.prepare` returned, the step budget and the measured FLOPs."""

    objective: Any
    optimizer: Any
    scheduler: Any
    steps_per_epoch: int
    total_steps: int
    flops: float


def _prepare_training(cfg: PretrainConfig, accelerator, model: nn.Module, data: RunData) -> Training:
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


def _restore(accelerator, resume_from: Path | None, out: Path) -> TrainState:
    """Load a checkpoint (weights, optimizer, scheduler, RNG) and its data position."""
    metrics_file = out / "metrics.jsonl"
    if resume_from is None:
        if accelerator.is_main_process:
            metrics_file.unlink(missing_ok=True)
        return TrainState()
    accelerator.load_state(str(resume_from))
    state = TrainState(**json.loads((resume_from / "train_state.json").read_text(encoding="utf-8")))
    if accelerator.is_main_process:
        _keep_metrics_until(metrics_file, state.step)
    return state


def _train(cfg: PretrainConfig, accelerator, run: Training, data: RunData, state: TrainState,
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
    if accelerator.is_main_process:
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:  # a log: appended line by line
            fh.write(json.dumps(record) + "\n")
    accelerator.log(_flat({k: v for k, v in record.items() if k != "step"}), step=state.step)
    meter.reset()


def _set_deepspeed_batch_size(accelerator, batch_size: int) -> None:
    """DeepSpeed needs the micro-batch size; our loader is not prepared, so tell it here."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size


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
            "skipped_studies": sorted(data.failed),
            "first_loss": lines[0]["loss"] if lines else None,
            "final_loss": lines[-1]["loss"] if lines else None,
            "samples_per_s": state.samples / state.seconds if state.seconds else None,
            "seconds": round(state.seconds, 2), "wall_seconds": round(time.perf_counter() - wall_start, 2),
            "flops_per_sample": run.flops, "final": str(out / "final") if finished else None}


def _evaluate_held_out(cfg: PretrainConfig, model: nn.Module, data: RunData) -> dict:
    held_out = [s for s in data.studies if s.split in cfg.eval_splits and s.ecg and s.study_id not in data.failed]
    if not held_out:
        return {"error": f"no {'/'.join(cfg.eval_splits)} study with an ECG to evaluate on"}
    # reconstruction is judged on one (the centre) window per ECG, as the MAE stage reads them
    one_window = dataclasses.replace(data.preprocess, ecg=dataclasses.replace(data.preprocess.ecg, windows=1))
    dataset = StudyDataset(held_out, one_window, cache_dir=data.cache_dir, train=False, modalities=["ecg"])
    return evaluate_mae(model, dataset, seed=cfg.seed, mask_ratio=cfg.mae_mask_ratio)


# ------------------------------------------------------------------------------- entry

def main(argv: Sequence[str] | None = None) -> dict:
    """Entry for `accelerate launch scripts/pretrain.py ...` (same flags as `mmcardio pretrain`)."""
    from mmcardio.commands.pretrain import add_arguments

    parser = argparse.ArgumentParser(prog="pretrain", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = run(args)
    if args.json and summary:
        print(json.dumps(summary, indent=2))
    return summary


def run(args: argparse.Namespace) -> dict:
    cfg = load_pretrain_config(args.config, args.overrides)
    return run_pretraining(cfg, args.manifest, args.out, cache=args.cache, resume=args.resume,
                           progress=not getattr(args, "json", False))
