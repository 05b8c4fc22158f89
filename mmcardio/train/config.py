"""The pretraining run config: its dataclasses, the layering of file, stage overrides and
`--set` items, and the model config and preprocessing a run resolves to."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmcardio.config import (
    check_fields,
    deep_merge,
    from_dict,
    parse_overrides,
    read_mapping,
    to_dict,
)
from mmcardio.datasets.preprocess_config import PreprocessConfig
from mmcardio.encoders.registry import config_path, get_config
from mmcardio.errors import ConfigError
from mmcardio.failures import FAILED_FRACTION_KEY, FailureLimit
from mmcardio.model_config import build_config
from mmcardio.sentences import UNITS

STAGES = ("mae", "align")
PRECISIONS = ("no", "bf16", "fp16")
#: Run-config keys that may change when resuming (they do not change what is computed).
RESUMABLE_CHANGES = ("stop_at_step", "num_workers", "log_every", "checkpoint_every", "keep_checkpoints",
                     FAILED_FRACTION_KEY)


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
class PretrainConfig(FailureLimit):
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
    max_failed_fraction (from `FailureLimit`, shared with the other training runs): the share
        of the run's studies that may fail to decode; they are skipped and listed in run.json
        ("skipped_studies"). More stops the run before training (default 0.01).
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
        check_fields(self, checks)
        super().__post_init__()


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
