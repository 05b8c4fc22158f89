"""`mmcardio segment train --config C --manifest M --out RUN`: train a promptable segmenter."""
from __future__ import annotations

import argparse

from mmcardio.cli import add_run_flags, emit


def register(sub) -> None:
    p = sub.add_parser("segment", help="promptable segmenters (SAM/MedSAM with LoRA): training",
                       description="Promptable segmenters: SAM or MedSAM models prompted with boxes.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser(
        "train", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train a SAM on one modality and structure (full, or a LoRA adapter only)",
        description="Train a SAM on the frames of a manifest's training studies that show one "
                    "structure (echo cine frames of every view, CMR slices of every phase, CT axial "
                    "slices), each prompted with its label's bounding box, jittered by box_jitter. "
                    "The prompt encoder stays frozen; the loss is Dice + BCE (MONAI DiceCELoss). "
                    "With lora_rank > 0 only a LoRA adapter named after the modality (and its copy "
                    "of the mask decoder) trains. Runs in this process; for several processes or "
                    "GPUs use `accelerate launch -m mmcardio.cli segment train ...`. Writes "
                    "OUT/metrics.jsonl, OUT/checkpoints/step_N/, OUT/config.yaml, OUT/run.json and "
                    "OUT/final/ (load with mmcardio.adapters.sam.load_segmenter; a LoRA run's "
                    "adapter is OUT/final/adapters/MODALITY, load it with "
                    "mmcardio.adapters.lora.load_lora).",
        epilog="examples:\n"
               "  mmcardio segment train --config configs/segment/tiny.yaml --manifest c/manifest.csv "
               "--out runs/seg-echo\n"
               "  mmcardio segment train --config configs/segment/tiny.yaml --manifest c/manifest.csv "
               "--out runs/seg-cmr --set modality=cmr --set lora_rank=4 --set init_from=runs/seg-echo/final\n"
               "  mmcardio segment train --manifest c/manifest.csv --out runs/medsam-ct --set modality=ct "
               "--set model=medsam_vit_b --set init_from=medsam_vit_b.pth   # your MedSAM checkpoint\n"
               "  mmcardio segment train ... --out runs/seg-echo --resume",
    )
    t.add_argument("--config", help="run config YAML/JSON (e.g. configs/segment/tiny.yaml); defaults otherwise")
    t.add_argument("--manifest", required=True, help="study manifest (.csv, .parquet or .jsonl) with a masks column")
    t.add_argument("--out", required=True, help="run folder (checkpoints, metrics, final segmenter)")
    add_run_flags(t, "--set modality=cmr --set lr=3e-4")
    t.set_defaults(func=run_train)


def run_train(args) -> int:
    from accelerate import PartialState

    from mmcardio.train.segment import load_segment_config, run_segment_training

    summary = run_segment_training(load_segment_config(args.config, args.overrides), args.manifest, args.out,
                                   resume=args.resume, progress=not args.json)
    if not PartialState().is_main_process:  # every rank has the summary; one prints it
        return 0
    text = (f"{summary['steps']} steps on {summary['train_frames']} {summary['modality']} frames in "
            f"{summary['seconds']} s, DiceCE {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}; "
            f"segmenter in {summary['final']}" + (f", adapter in {summary['adapter']}" if summary["adapter"] else ""))
    emit(summary, args.json, text)
    return 0
