"""`mmcardio pretrain --config RUN.yaml --manifest M --out RUN`: train CardioCLIP in-process."""
from __future__ import annotations

import argparse

from mmcardio.cli import add_json_flag, emit


def add_arguments(parser) -> None:
    """The arguments `mmcardio pretrain` and scripts/pretrain.py share."""
    parser.add_argument("--config", help="run config YAML/JSON (e.g. configs/pretrain/tiny.yaml)")
    parser.add_argument("--manifest", required=True, help="study manifest (.csv, .parquet or .jsonl)")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, metrics, final model)")
    parser.add_argument("--cache", help="prepared cache folder (default OUT/cache); missing studies are prepared first")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from the latest checkpoint in OUT/checkpoints, or from CHECKPOINT")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted, YAML value), e.g. --set optimizer.lr=1e-4")


def register(sub) -> None:
    p = sub.add_parser(
        "pretrain", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="pretrain CardioCLIP (ECG MAE stage or report alignment) in this process",
        description="Train a CardioCLIP on a manifest, in this process (for several processes or "
                    "GPUs use `accelerate launch scripts/pretrain.py` with the same flags). Stage "
                    "'mae' trains the ECG tower by masked reconstruction (and reports held-out "
                    "reconstruction figures); stage 'align' aligns every modality with the report "
                    "text. Studies are decoded once into a cache (OUT/cache unless --cache). Writes "
                    "OUT/metrics.jsonl, OUT/tensorboard/, OUT/checkpoints/step_N/, OUT/final/ (load "
                    "it with CardioCLIP.from_pretrained) and OUT/run.json.",
        epilog="examples:\n"
               "  mmcardio pretrain --config configs/pretrain/tiny.yaml --manifest c/manifest.csv "
               "--out runs/mae --set stage=mae\n"
               "  mmcardio pretrain --config configs/pretrain/tiny.yaml --manifest c/manifest.csv "
               "--out runs/align --set init_from=runs/mae/final\n"
               "  mmcardio pretrain ... --out runs/align --resume",
    )
    add_arguments(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mmcardio.train.pretrain import run as run_pretraining

    summary = run_pretraining(args)
    text = (f"{summary['status']}: {summary['steps']} steps on {summary['world_size']} process(es) in "
            f"{summary['seconds']} s, loss {summary['first_loss']} -> {summary['final_loss']}"
            + (f"; model in {summary['final']}" if summary["final"] else "; resume with --resume"))
    if "mae_eval" in summary:
        text += f"\nMAE held-out: {summary['mae_eval']}"
    emit(summary, args.json, text)
    return 0
