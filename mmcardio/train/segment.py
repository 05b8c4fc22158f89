"""Training a promptable segmenter (SAM/MedSAM) on one modality and structure, with accelerate.

MedSAM's recipe: box prompts from the label's bounding box (jittered), the prompt encoder
frozen, the image encoder and mask decoder trained with Dice + BCE (MONAI `DiceCELoss`) on the
decoder's low-res logits upsampled to the model input (S x S, as MedSAM upsamples them), AdamW,
cosine decay to 0. With `lora_rank > 0` only a LoRA adapter named after the modality and its
own copy of the mask decoder train (`mmcardio.adapters.lora`).

The run follows pretraining's conventions and reuses its checkpoint functions: OUT/checkpoints/
step_N (accelerate state + data position, written to a partial folder and renamed),
metrics.jsonl, `resume`, config.yaml, run.json. OUT/final is a segmenter folder
(`load_segmenter`, or `adapters.segmenter.Segmenters` for inference); a LoRA run writes the
base weights there, the adapter alone into OUT/final/adapters/<modality> (`load_lora`) and
carries on the adapters of the folder it started from. Each rank takes its own share of the frames
(`DistributedSampler`), so the data position is (epoch, batches done).

Every series is read once before training: a study with an image or label map that cannot be
read is left out whole, logged and listed with its reason in run.json's "skipped_studies"
(kept across `--resume`), under `max_failed_fraction` (default 1%; more stops the run).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn

from mmcardio.adapters.lora import add_lora, sam_lora_config, save_lora, trainable_share
from mmcardio.adapters.sam import (
    build_sam,
    load_sam_checkpoint,
    sam_config,
    save_segmenter,
    structure_logits,
)
from mmcardio.adapters.seg_data import SEGMENTABLE, SegmentationFrames
from mmcardio.adapters.segmenter import (
    ADAPTERS_DIR,
    BasePart,
    SegmenterCard,
    carry_adapters,
    read_card,
    write_card,
)
from mmcardio.config import check_fields, load_run_config, save_config
from mmcardio.errors import ConfigError
from mmcardio.failures import (
    FAILED_FRACTION_KEY,
    FailureLimit,
    log_failures,
    read_skipped,
    remember_skipped,
)
from mmcardio.io import write_json
from mmcardio.model_config import WEIGHTS_FILE
from mmcardio.records import STRUCTURES
from mmcardio.study import read_manifest
from mmcardio.train.checkpoint import (
    TrainState,
    check_resume_config,
    resolve_resume,
    restore,
)
from mmcardio.train.steps import epoch_loader, run_steps
from mmcardio.weights import load_weights

#: Keys that may change on resume: they do not change what is computed.
RESUMABLE_CHANGES = ("log_every", "checkpoint_every", "keep_checkpoints", "num_workers", FAILED_FRACTION_KEY)


@dataclass
class SegmentConfig(FailureLimit):
    """A segmenter training run.

    model: a SAM registry name ("tiny", "vit_b", "medsam_vit_b") or a SamConfig file.
    init_from: starting weights: a segmenter folder (e.g. a run's final/) or a SAM/MedSAM
        `.pth` checkpoint; random when None.
    modality: "echo" (cine frames of every view), "cmr" (slices of every phase) or "ct"
        (axial slices). structures: names of `records.STRUCTURES`, e.g. ["lv_cavity"] or
        ["lv_cavity", "lv_epicardium"]: the box outlines the first; the others are what the
        same box also gives on SAM's further mask tokens (`structure_logits`); at most 4.
    frames_per_series: frames kept per series, evenly spaced (null: all); a
        cine's neighbouring frames are near copies, so a few per series cover a cohort.
    max_series: series (cines, volumes) trained on, evenly spread over the manifest (null: all):
        for quick runs; each series costs a decode.
    lora_rank: 0 trains the image encoder and mask decoder; above 0, a LoRA adapter of that
        rank named after the modality and its decoder copy only.
    box_jitter: each box side moves by up to this share of the box size (0 = the exact box).
    batch_size: frames per process per step. max_steps: optimizer steps.
    checkpoint_every: steps between checkpoints (0 = none); keep_checkpoints: how many stay.
    max_failed_fraction (from `FailureLimit`): the share of the studies read that may fail
        to read and be left out (default 0.01; more stops the run before training).
    """

    model: str = "tiny"
    init_from: str | None = None
    modality: str = "echo"
    structures: list[str] = field(default_factory=lambda: ["lv_cavity"])
    frames_per_series: int | None = None
    max_series: int | None = None
    lora_rank: int = 0
    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 8
    max_steps: int = 100
    seed: int = 0
    box_jitter: float = 0.05
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    num_workers: int = 0
    train_splits: list[str] = field(default_factory=lambda: ["train"])

    def __post_init__(self) -> None:
        checks = [("modality", self.modality in [str(m) for m in SEGMENTABLE],
                   f"expected one of {[str(m) for m in SEGMENTABLE]}"),
                  ("structures", 1 <= len(self.structures) <= 4 and set(self.structures) <= set(STRUCTURES),
                   f"expected 1-4 names (SAM has 4 mask tokens) among {sorted(STRUCTURES)}"),
                  ("frames_per_series", self.frames_per_series is None or self.frames_per_series >= 1,
                   "expected null (all frames) or at least 1"),
                  ("max_series", self.max_series is None or self.max_series >= 1,
                   "expected null (all series) or at least 1"),
                  ("lora_rank", self.lora_rank >= 0, "expected 0 (full training) or a rank"),
                  ("batch_size", self.batch_size >= 1, "expected at least 1"),
                  ("max_steps", self.max_steps >= 1, "expected at least 1"),
                  ("box_jitter", 0 <= self.box_jitter < 0.5, "expected a share of the box size in [0, 0.5)"),
                  ("checkpoint_every", self.checkpoint_every >= 0, "expected 0 (off) or more"),
                  ("log_every", self.log_every >= 1, "expected at least 1")]
        check_fields(self, checks)
        super().__post_init__()


def load_segment_config(path: str | Path | None, overrides: Sequence[str] = ()) -> SegmentConfig:
    """The run config from YAML/JSON (or the defaults), `--set key=value` items on top."""
    return load_run_config(SegmentConfig, path, overrides)


class BoxPromptedSam(nn.Module):
    """A SAM (or a peft model of one) as a trainable function of images and boxes.

    Not `Sam.forward`: it runs under `no_grad` and takes a list of dicts. The decoder runs
    per image because segment-anything's `MaskDecoder` pairs one image with many prompts."""

    def __init__(self, model: nn.Module, structures: int = 1):
        super().__init__()
        self.model, self.structures = model, structures

    @property
    def sam(self) -> nn.Module:
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    def forward(self, image: torch.Tensor, box: torch.Tensor, input_size: torch.Tensor) -> torch.Tensor:
        """image [B, 3, S, S] in [0, 1] (zero padded), box [B, 4] XYXY input pixels, input_size
        [B, 2] -> low-res mask logits [B, K, s, s], one per structure as `CardiacPredictor`
        reads them. Pixels are normalised, then the padding zeroed, as `Sam.preprocess` does."""
        sam = self.sam
        size = image.shape[-1]
        grid = torch.arange(size, device=image.device)
        inside = (grid[None, :, None] < input_size[:, :1, None]) & (grid[None, None, :] < input_size[:, 1:, None])
        pixels = (image - sam.pixel_mean) / sam.pixel_std * inside[:, None]
        embeddings = sam.image_encoder(pixels)
        sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
        position = sam.prompt_encoder.get_dense_pe()
        logits = [structure_logits(sam, self.structures, image_embeddings=embeddings[i: i + 1], image_pe=position,
                                   sparse_prompt_embeddings=sparse[i: i + 1],
                                   dense_prompt_embeddings=dense[i: i + 1])[0]
                  for i in range(len(image))]
        return torch.cat(logits)


def segmentation_loss(model: BoxPromptedSam, batch: dict, loss_fn: nn.Module | None = None) -> torch.Tensor:
    """DiceCE of the low-res logits upsampled (bilinear) to the input grid against the mask."""
    from monai.losses import DiceCELoss

    logits = model(batch["image"], batch["box"], batch["input_size"])
    upsampled = nn.functional.interpolate(logits, batch["mask"].shape[-2:], mode="bilinear", align_corners=False)
    return (loss_fn or DiceCELoss(sigmoid=True))(upsampled, batch["mask"])


def build_segmenter_model(cfg: SegmentConfig) -> tuple[BoxPromptedSam, dict | None]:
    """The SAM of `cfg.model` with its `init_from` weights and the prompt encoder frozen; with
    `lora_rank`, wrapped with the modality's LoRA adapter (only it and its decoder copy train)
    and returned with a copy of the frozen base's state (saved beside the adapter)."""
    sam = build_sam(cfg.model)
    if cfg.init_from is not None:
        start = Path(cfg.init_from)
        if start.is_dir():
            load_weights(sam, start / WEIGHTS_FILE, fits=f"SAM {cfg.model!r}", field="init_from")
        else:
            load_sam_checkpoint(sam, start)
    sam.prompt_encoder.requires_grad_(False)
    if not cfg.lora_rank:
        return BoxPromptedSam(sam, len(cfg.structures)), None
    base_state = {k: v.detach().clone() for k, v in sam.state_dict().items()}
    peft_model = add_lora(sam, cfg.modality, sam_lora_config(cfg.lora_rank))
    return BoxPromptedSam(peft_model, len(cfg.structures)), base_state


@dataclass
class SegmentRun:
    """What `accelerator.prepare` returned, the frames and the base weights of a LoRA run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    frames: SegmentationFrames
    base_state: dict | None


def run_segment_training(cfg: SegmentConfig, manifest: str | Path, out: str | Path,
                         resume: str | bool | None = None, progress: bool = True) -> dict:
    """Train, checkpoint, save OUT/final and OUT/run.json; returns the run summary.
    resume: True/"latest" for the newest checkpoint under OUT/checkpoints, or a folder."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    out = Path(out)
    # the IoU head gets no loss (MedSAM trains masks only), so DDP must tolerate it
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    resume_from = resolve_resume(resume, out)
    if resume_from is not None:
        check_resume_config(out, cfg, RESUMABLE_CHANGES)
    set_seed(cfg.seed)
    run = _prepare(cfg, accelerator, manifest)
    if accelerator.is_main_process:
        log_failures(run.frames.failed, f"segment {cfg.modality}")
        remember_skipped(out, run.frames.failed, resumed=resume_from is not None)
    state = restore(accelerator, resume_from, out)
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
    state = _train(cfg, accelerator, run, state, out, progress)
    _save_final(cfg, accelerator, run, out / "final")
    if accelerator.is_main_process:
        write_json(out / "run.json", _summary(cfg, accelerator, run, state, out))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return json.loads((out / "run.json").read_text(encoding="utf-8"))


def _prepare(cfg: SegmentConfig, accelerator, manifest: str | Path) -> SegmentRun:
    """Frames of the training splits (the studies that cannot be read left out, under the
    failure limit), the model, AdamW over its trainable parameters and the cosine schedule,
    through `accelerator.prepare`."""
    studies = [s for s in read_manifest(manifest) if s.split in cfg.train_splits]
    model, base_state = build_segmenter_model(cfg)
    image_size = sam_config(cfg.model).image_size
    frames = SegmentationFrames(studies, cfg.modality, cfg.structures, image_size, cfg.box_jitter, cfg.seed,
                                cfg.frames_per_series, cfg.max_series, skip_unreadable=True)
    cfg.failure_policy.check(frames.failed, frames.studies_read, manifest)  # on every rank: all stop
    if len(frames) < cfg.batch_size * accelerator.num_processes:
        raise ConfigError(f"{len(frames)} training frames show {cfg.structures} in {cfg.modality} (splits "
                          f"{cfg.train_splits}); expected at least batch_size x processes", manifest)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    # a prepared scheduler steps once per process per optimizer step (accelerate's convention)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.max_steps * accelerator.num_processes)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return SegmentRun(model, optimizer, scheduler, frames, base_state)


def _train(cfg: SegmentConfig, accelerator, run: SegmentRun, state: TrainState, out: Path,
           progress: bool) -> TrainState:
    """Optimizer steps until `max_steps` (`steps.run_steps`); frames are fetched as
    (frame, epoch) so each epoch draws new box jitter."""
    from accelerate.utils import send_to_device
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(sigmoid=True)

    def step(batch: dict) -> torch.Tensor:
        loss = segmentation_loss(run.model, send_to_device(batch, accelerator.device), loss_fn)
        accelerator.backward(loss)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    run.model.train()
    return run_steps(cfg, accelerator, lambda st: epoch_loader(cfg, accelerator, run.frames, st, keyed=True),
                     step, run.scheduler, state, out, f"segment {cfg.modality}", progress)


def _save_final(cfg: SegmentConfig, accelerator, run: SegmentRun, folder: Path) -> None:
    """OUT/final: the trained segmenter, or for LoRA the base segmenter, adapters/<modality>
    (the adapter alone) and the adapters of `init_from` carried on; `segmenter.json` says
    what each outlines."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        config = sam_config(cfg.model)
        model = accelerator.unwrap_model(run.model).model
        if run.base_state is None:
            save_segmenter(model, config, folder)
            write_card(folder, SegmenterCard(BasePart(cfg.modality, cfg.structures)))
        else:
            base = build_sam(config)
            base.load_state_dict(run.base_state)
            save_segmenter(base, config, folder)
            save_lora(model, cfg.modality, folder / ADAPTERS_DIR / cfg.modality)
            start = Path(cfg.init_from) if cfg.init_from and Path(cfg.init_from).is_dir() else None
            carried = carry_adapters(start, folder, skip=cfg.modality) if start else {}
            write_card(folder, SegmenterCard(read_card(start).base if start else None,
                                             carried | {cfg.modality: cfg.structures}))
    accelerator.wait_for_everyone()


def _summary(cfg: SegmentConfig, accelerator, run: SegmentRun, state: TrainState, out: Path) -> dict:
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if ln]
    model = accelerator.unwrap_model(run.model).model
    return {"status": "finished", "model": cfg.model, "init_from": cfg.init_from, "modality": cfg.modality,
            "structures": cfg.structures, "lora_rank": cfg.lora_rank, "steps": state.step,
            "world_size": accelerator.num_processes, "train_frames": len(run.frames),
            "skipped_studies": read_skipped(out),  # this session's and the earlier ones'
            "trainable_share": trainable_share(model),
            "first_loss": lines[0]["loss"] if lines else None, "final_loss": lines[-1]["loss"] if lines else None,
            "seconds": round(state.seconds, 2),
            "seconds_per_step": round(state.seconds / state.step, 4) if state.step else None,
            "final": str(out / "final"),
            "adapter": str(out / "final" / ADAPTERS_DIR / cfg.modality) if cfg.lora_rank else None}
