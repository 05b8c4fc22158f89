"""`mmcardio pretrain --config RUN.yaml --manifest M --out RUN`: train CardioCLIP.

The one entry point of pretraining: `mmcardio pretrain ...`, `accelerate launch -m mmcardio.cli
pretrain ...` and `accelerate launch scripts/pretrain.py ...` run this command."""
from __future__ import annotations

import argparse

from mmcardio.cli import add_run_flags, emit


def register(sub) -> None:
    p = sub.add_parser(
        "pretrain", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="pretrain CardioCLIP (ECG MAE stage or report alignment)",
        description="Train a CardioCLIP on a manifest, in this process (for several processes or "
                    "GPUs use `accelerate launch scripts/pretrain.py` with the same flags). Stage "
                    "'mae' trains the ECG tower by masked reconstruction (and reports held-out "
                    "reconstruction figures); stage 'align' aligns every modality with the report "
                    "text. Studies are decoded once into a cache (OUT/cache unless --cache); a study "
                    "whose files cannot be decoded is logged with the reader's message, left out and "
                    "listed under skipped_studies in OUT/run.json, while at most max_failed_fraction "
                    "of the studies fail (default 0.01; more stops the run: raise it with --set "
                    "max_failed_fraction=0.05). Writes OUT/metrics.jsonl, OUT/tensorboard/, "
                    "OUT/checkpoints/step_N/, OUT/final/ (load it with CardioCLIP.from_pretrained) "
                    "and OUT/run.json.",
        epilog="examples:\n"
               "  mmcardio pretrain --config configs/pretrain/tiny.yaml --manifest c/manifest.csv "
               "--out runs/mae --set stage=mae\n"
               "  mmcardio pretrain --config configs/pretrain/tiny.yaml --manifest c/manifest.csv "
               "--out runs/align --set init_from=runs/mae/final\n"
               "  mmcardio pretrain ... --out runs/align --resume\n"
               "  accelerate launch --multi_gpu --num_processes 2 scripts/pretrain.py --config ...",
    )
    p.add_argument("--config", help="run config YAML/JSON (e.g. configs/pretrain/tiny.yaml)")
    p.add_argument("--manifest", required=True, help="study manifest (.csv, .parquet or .jsonl)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, final model)")
    p.add_argument("--cache", help="prepared cache folder (default OUT/cache); missing studies are prepared first")
    add_run_flags(p, "--set optimizer.lr=1e-4")
    p.set_defaults(func=run)


def run(args) -> int:
    from accelerate import PartialState

    from mmcardio.failures import skipped_note
    from mmcardio.train.config import load_pretrain_config
    from mmcardio.train.pretrain import run_pretraining

    summary = run_pretraining(load_pretrain_config(args.config, args.overrides), args.manifest, args.out,
                              cache=args.cache, resume=args.resume, progress=not args.json)
    if not PartialState().is_main_process:  # every rank has the summary; one prints it
        return 0
    text = (f"{summary['status']}: {summary['steps']} steps on {summary['world_size']} process(es) in "
            f"{summary['seconds']} s, loss {summary['first_loss']} -> {summary['final_loss']}"
            + (f"; model in {summary['final']}" if summary["final"] else "; resume with --resume"))
    text += skipped_note(summary["skipped_studies"])
    if "mae_eval" in summary:
        text += f"\nMAE held-out: {summary['mae_eval']}"
    emit(summary, args.json, text)
    return 0
