"""`mmcardio prepare --manifest M --out CACHE`: decode every study once into a cache."""
from __future__ import annotations

from mmcardio.cli import add_json_flag, emit


def register(sub) -> None:
    p = sub.add_parser(
        "prepare", help="decode and preprocess every study once into a training cache",
        description="Read every study of a manifest with the readers, apply the preprocessing of "
                    "a run config's model (resampling, filtering, resizing, intensity windows) and "
                    "write one .safetensors file per study, CACHE/preprocess.json (the config used) "
                    "and CACHE/index.json. Training reads the cache instead of decoding files every "
                    "epoch, and refuses a cache made with a different preprocessing. Re-running on a "
                    "grown or edited manifest only processes new or changed studies. Studies whose "
                    "files fail to decode are listed (exit code 1), the others are cached.",
        epilog="example: mmcardio prepare --manifest cohort/manifest.csv --out cache/tiny "
               "--config configs/pretrain/tiny.yaml",
    )
    p.add_argument("--manifest", required=True, help="study manifest (.csv, .parquet or .jsonl)")
    p.add_argument("--out", required=True, help="cache folder (created or extended)")
    p.add_argument("--config", help="run config whose model sets the preprocessing "
                                    "(default: the built-in defaults, model cardioclip-tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run-config key, e.g. --set preprocess.ecg.notch_hz=50")
    p.add_argument("--workers", type=int, default=0, help="decoding worker processes (default 0: in this process)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mmcardio.datasets.cache import prepare_cache
    from mmcardio.processor import CardioProcessor
    from mmcardio.train.config import load_pretrain_config, run_preprocess

    cfg = load_pretrain_config(args.config, args.overrides)
    result = prepare_cache(args.manifest, args.out, CardioProcessor(run_preprocess(cfg)),
                           progress=not args.json, num_workers=args.workers)
    head = (f"{args.out}: {result['prepared']} prepared, {result['reused']} reused, "
            f"{len(result['failed'])} failed of {result['studies']} studies in {result['seconds']} s")
    lines = [head]
    lines += [f"  {study_id}: {problem}" for study_id, problem in result["failed"].items()]
    emit(result, args.json, "\n".join(lines))
    return 1 if result["failed"] else 0
