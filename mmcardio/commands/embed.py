"""`mmcardio embed`: embed every study of a manifest into an embedding store."""
from __future__ import annotations

from mmcardio.cli import add_json_flag, emit


def register(sub) -> None:
    p = sub.add_parser(
        "embed", help="embed a manifest's studies and reports into an embedding store",
        description="Run a trained CardioCLIP over every study of a manifest and store, per study, "
                    "one L2-normalised vector for each modality it holds (ecg, echo, cmr, ct), the "
                    "fused study embedding and the report text embedding, with metadata (patient, "
                    "split, views, report, labels) and the model's fingerprint. Re-running on a "
                    "grown manifest embeds only the new studies; a store made by another model is "
                    "refused. Under `accelerate launch -m mmcardio.cli embed ...` every process "
                    "embeds a shard. Next step: `mmcardio index --store STORE --out INDEX`.",
        epilog="example: mmcardio embed --model runs/demo/final --manifest cohort/manifest.csv "
               "--out runs/demo/store",
    )
    p.add_argument("--model", required=True, help="CardioCLIP folder (config.json + model.safetensors), "
                                                  "e.g. RUN/final from `mmcardio pretrain`")
    p.add_argument("--manifest", required=True, help="study manifest (.csv, .parquet or .jsonl)")
    p.add_argument("--out", required=True, help="store folder to create or extend")
    p.add_argument("--batch-size", type=int, default=8, help="studies per forward pass (default 8)")
    p.add_argument("--cache", help="a `mmcardio prepare` folder made with the model's preprocessing: "
                                   "its studies are read from it instead of being decoded again")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mmcardio.retrieval.store import embed_manifest, launched_accelerator  # torch: on use

    summary = embed_manifest(args.model, args.manifest, args.out, args.batch_size,
                             progress=not args.json, accelerator=launched_accelerator(), cache=args.cache)
    per_key = ", ".join(f"{k} {n}" for k, n in summary["per_key"].items())
    text = (f"{summary['store']}: {summary['new_studies']} new of {summary['studies']} studies embedded; "
            f"{summary['vectors']} vectors ({per_key}) in {summary['seconds']:.1f} s")
    emit(summary, args.json, text)
    return 0
