"""The report head's run config (`mmcardio report train --config`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmcardio.config import check_fields, load_run_config
from mmcardio.failures import FailureLimit
from mmcardio.study import LANGUAGES


@dataclass
class TinyLMConfig:
    """A GPT-2 trained from scratch here (CPU tests, the demo): its size and BPE vocabulary."""

    n_layer: int = 3
    n_embd: int = 128
    n_head: int = 4
    vocab_size: int = 2000
    n_positions: int = 640
    dropout: float = 0.0  # a few hundred steps on a small corpus: dropout only slows the fit


@dataclass
class ReportHeadConfig(FailureLimit):
    """A report-head training run.

    clip_model: the CardioCLIP folder whose embeddings condition the head (a run's final/).
    store: an embedding store of the manifest made with that model (`mmcardio embed`).
    lm: "tiny" (a GPT-2 of `tiny` sizes and a BPE vocabulary learned from the training
        reports, trained in full) or a local folder of any transformers causal LM (its
        tokenizer beside it), adapted with LoRA of `lora_rank` (0 = full fine-tuning).
    prefix_tokens: LM input tokens each modality's embedding is projected to (LLaVA-style).
    k_retrieved: reports of the most similar training studies put in the prompt (EchoPrime);
        each cut to `retrieved_tokens` tokens.
    k_vote: similar training studies whose labels vote on each finding (the share with it is
        averaged with the zero-shot probability into the finding's score).
    languages: report languages trained (targets from the manifest's report and translations).
    mixed_precision: "no", "bf16" or "fp16", as accelerate's (autocast; the loss is taken in
        fp32). bf16 halves the tiny LM's step time on CPUs with bf16 matrix units.
    max_failed_fraction (from `FailureLimit`): the share of the training studies that may have
        no embedding in the store (embed could not read them); they are skipped and listed.
    repetition_penalty: logits of tokens a section already holds are divided by this when
        drafting (1 = plain greedy decoding).
    ood_k, ood_quantile, ood_margin: an embedding is out of distribution when its mean cosine
        distance to its `ood_k` nearest training studies is beyond `ood_margin` times the
        `ood_quantile` of the training studies' own (leave-one-out) distances; the margin
        covers the gap between those in-sample distances and a new study's.
    min_confidence: a draft whose mean sentence confidence is below this is not drafted.
    review_below: sentences less confident than this are marked for review.
    """

    clip_model: str = ""
    store: str = ""
    lm: str = "tiny"
    tiny: TinyLMConfig = field(default_factory=TinyLMConfig)
    lora_rank: int = 8
    lora_targets: list[str] | None = None
    prefix_tokens: int = 2
    k_retrieved: int = 2
    k_vote: int = 10
    retrieved_tokens: int = 96
    max_target_tokens: int = 224
    languages: list[str] = field(default_factory=lambda: list(LANGUAGES))
    lr: float = 1e-3
    mixed_precision: str = "no"
    weight_decay: float = 0.01
    warmup_steps: int = 20
    batch_size: int = 16
    max_steps: int = 300
    seed: int = 0
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    repetition_penalty: float = 1.2
    ood_k: int = 10
    ood_quantile: float = 0.995
    ood_margin: float = 1.1
    min_confidence: float = 0.5
    review_below: float = 0.6
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    num_workers: int = 0

    def __post_init__(self) -> None:
        checks = [("mixed_precision", self.mixed_precision in ("no", "bf16", "fp16"),
                   "expected no, bf16 or fp16"),
                  ("languages", bool(self.languages) and set(self.languages) <= set(LANGUAGES),
                   f"expected some of {LANGUAGES}"),
                  ("prefix_tokens", self.prefix_tokens >= 1, "expected at least 1"),
                  ("k_retrieved", self.k_retrieved >= 0, "expected 0 or more"),
                  ("k_vote", self.k_vote >= 1, "expected at least 1"),
                  ("lora_rank", self.lora_rank >= 0, "expected 0 (full fine-tuning) or a rank"),
                  ("batch_size", self.batch_size >= 1, "expected at least 1"),
                  ("max_steps", self.max_steps >= 1, "expected at least 1"),
                  ("ood_quantile", 0.5 <= self.ood_quantile <= 1.0, "expected a share in [0.5, 1]"),
                  ("ood_margin", self.ood_margin >= 1.0, "expected 1 or more"),
                  ("ood_k", self.ood_k >= 1, "expected at least 1"),
                  ("repetition_penalty", self.repetition_penalty >= 1.0, "expected 1 (none) or more"),
                  ("min_confidence", 0 <= self.min_confidence <= 1, "expected a value in [0, 1]"),
                  ("review_below", 0 <= self.review_below <= 1, "expected a value in [0, 1]"),
                  ("log_every", self.log_every >= 1, "expected at least 1")]
        check_fields(self, checks)
        super().__post_init__()


def load_report_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ReportHeadConfig:
    """The run config from YAML/JSON (or the defaults), `--set key=value` items on top."""
    return load_run_config(ReportHeadConfig, path, overrides)
