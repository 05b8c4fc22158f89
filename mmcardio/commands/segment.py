"""`mmcardio segment train --config C --manifest M --out RUN`: train a promptable segmenter."""
from __future__ import annotations

import argparse

from mmcardio.cli import add_json_flag, add_run_flags, emit


def register(sub) -> None:
    p = sub.add_parser("segment", help="promptable segmenters (SAM/MedSAM with LoRA): train, evaluate",
                       description="Promptable segmenters: SAM or MedSAM models prompted with boxes.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser(
        "train", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train a SAM on one modality's structures (full, or a LoRA adapter only)",
        description="Train a SAM on the frames of a manifest's training studies that show a "
                    "structure (echo cine frames of every view, CMR slices of every phase, CT axial "
                    "slices), each prompted with its mask's bounding box, jittered by box_jitter "
                    "(structures: e.g. [lv_cavity]; a second one, e.g. lv_epicardium, is learned "
                    "on the next mask token for the same box). "
                    "The prompt encoder stays frozen; the loss is Dice + BCE (MONAI DiceCELoss). "
                    "With lora_rank > 0 only a LoRA adapter named after the modality (and its copy "
                    "of the mask decoder) trains. Runs in this process; for several processes or "
                    "GPUs use `accelerate launch -m mmcardio.cli segment train ...`. Every series is "
                    "read once first: a study with an image or mask that cannot be read is logged "
                    "with the reader's message, left out and listed under skipped_studies in "
                    "OUT/run.json, while at most max_failed_fraction of the studies fail (default "
                    "0.01; more stops the run: raise it with --set max_failed_fraction=0.05). Writes "
                    "OUT/metrics.jsonl, OUT/checkpoints/step_N/, OUT/config.yaml, OUT/run.json and "
                    "OUT/final/: the segmenter of every modality learned so far (a LoRA run carries "
                    "on the adapters of the folder it starts from; segmenter.json lists them), for "
                    "`segment eval`, `measure --segmenter` and mmcardio.adapters.segmenter.Segmenters.",
        epilog="examples:\n"
               "  mmcardio segment train --config configs/segment/tiny.yaml --manifest c/manifest.csv "
               "--out runs/seg-echo\n"
               "  mmcardio segment train --config configs/segment/tiny-cmr-lora.yaml --manifest c/manifest.csv "
               "--out runs/seg-cmr --set init_from=runs/seg-echo/final\n"
               "  mmcardio segment train --manifest c/manifest.csv --out runs/medsam-ct --set modality=ct "
               "--set structures=[heart] --set model=medsam_vit_b --set init_from=medsam_vit_b.pth"
               "   # your MedSAM checkpoint\n"
               "  mmcardio segment train ... --out runs/seg-echo --resume",
    )
    t.add_argument("--config", help="run config YAML/JSON (e.g. configs/segment/tiny.yaml); defaults otherwise")
    t.add_argument("--manifest", required=True, help="study manifest (.csv, .parquet or .jsonl) with a masks column")
    t.add_argument("--out", required=True, help="run folder (checkpoints, metrics, final segmenter)")
    add_run_flags(t, "--set modality=cmr --set lr=3e-4")
    t.set_defaults(func=run_train)
    _register_eval(actions)


def _register_eval(actions) -> None:
    e = actions.add_parser(
        "eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="segment a split without a user, score the masks and the measurements made from them",
        description="Segment every study of a split that has reference masks, with no user: the "
                    "LV box found in the image (echo: the first frame, then each frame from the "
                    "last one's mask; CMR: every slice and phase; CT: the heart between the lungs, "
                    "followed through the slices). Scores LV cavity Dice (MONAI DiceMetric) and HD95 in mm per modality "
                    "(LV myocardium Dice where the segmenter outlines the epicardium), and "
                    "measures LVEF, LV mass and the Agatston score from the predicted masks "
                    "against the manifest's reference values: LVEF MAE in points, LV mass mean "
                    "relative error, Agatston category (0, 1-99, 100-399, 400+) accuracy. The "
                    "same measurements from the reference masks are reported beside them: the "
                    "error of the measuring method itself.",
        epilog="example:\n  mmcardio segment eval --segmenter runs/seg-cmr/final --manifest c/manifest.csv "
               "--split test --out runs/seg-cmr/eval.json",
    )
    e.add_argument("--segmenter", required=True, help="segmenter folder (a segment train run's final/)")
    e.add_argument("--manifest", required=True, help="study manifest with a masks column and measurements")
    e.add_argument("--split", default="test", help="split to evaluate (default: test)")
    e.add_argument("--limit", type=int, help="only the first N studies of the split (a quick look)")
    e.add_argument("--out", help="also write the summary and every study's row to this JSON file")
    add_json_flag(e)
    e.set_defaults(func=run_eval)


def run_train(args) -> int:
    from accelerate import PartialState

    from mmcardio.failures import skipped_note
    from mmcardio.train.segment import load_segment_config, run_segment_training

    summary = run_segment_training(load_segment_config(args.config, args.overrides), args.manifest, args.out,
                                   resume=args.resume, progress=not args.json)
    if not PartialState().is_main_process:  # every rank has the summary; one prints it
        return 0
    text = (f"{summary['steps']} steps on {summary['train_frames']} {summary['modality']} frames in "
            f"{summary['seconds']} s, DiceCE {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}; "
            f"segmenter in {summary['final']}" + (f", adapter in {summary['adapter']}" if summary["adapter"] else "")
            + skipped_note(summary["skipped_studies"]))
    emit(summary, args.json, text)
    return 0


def run_eval(args) -> int:
    from mmcardio.adapters.segmenter import Segmenters
    from mmcardio.errors import MMCardioError
    from mmcardio.eval.structural import evaluate_segmenter
    from mmcardio.io import write_json
    from mmcardio.study import read_manifest

    studies = [s for s in read_manifest(args.manifest) if s.split == args.split][: args.limit]
    if not studies:
        raise MMCardioError(f"no study of split {args.split!r}", args.manifest, "split")
    result = evaluate_segmenter(studies, Segmenters(args.segmenter), progress=not args.json)
    if args.out:
        write_json(args.out, result)
    emit(result["summary"], args.json, _eval_text(result["summary"]))
    return 0


def _eval_text(summary: dict) -> str:
    def row(name: str, values: dict, fmt: str) -> str:
        return f"{name}: " + ", ".join(f"{m} {format(v, fmt) if v is not None else '-'}" for m, v in values.items())

    lines = [f"{summary['studies']} studies",
             row("LV cavity Dice", summary["dice"], ".3f"), row("HD95 (mm)", summary["hd95_mm"], ".1f"),
             row("LV myocardium Dice", summary["myocardium_dice"], ".3f"),
             row("LVEF MAE (points)", summary["ef_mae"], ".2f"),
             row("LV mass relative error", summary["lv_mass_rel_err"], ".3f")]
    if summary["agatston_category_acc"] is not None:
        lines.append(f"Agatston category accuracy: {summary['agatston_category_acc']:.3f}")
    return "\n".join(lines)
