"""Embed a manifest (sharded over `accelerate launch` processes), build the index and,
optionally, answer a text query — the whole retrieval pipeline in one launch.

    accelerate launch scripts/retrieve.py --model RUN/final --manifest M --store S --index I \\
        [--kind flat|ivf|hnsw] ["reduced ejection fraction" --k 10 --modality study]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from accelerate import Accelerator

from mmcardio.commands.retrieve import format_hits
from mmcardio.errors import MMCardioError
from mmcardio.retrieval import KINDS, STORE_KEYS, Retriever, build_index, embed_manifest


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", nargs="?", help="report text to search for after indexing (optional)")
    p.add_argument("--model", required=True, help="CardioCLIP folder, e.g. RUN/final")
    p.add_argument("--manifest", required=True, help="study manifest")
    p.add_argument("--store", required=True, help="embedding store folder (created or extended)")
    p.add_argument("--index", required=True, help="index folder to write")
    p.add_argument("--kind", choices=KINDS, default="flat", help="FAISS index type (default flat)")
    p.add_argument("--batch-size", type=int, default=8, help="studies per forward pass")
    p.add_argument("--k", type=int, default=10, help="results for the query (default 10)")
    p.add_argument("--modality", choices=STORE_KEYS, default="study", help="embeddings to search")
    p.add_argument("--cpu", action="store_true", help="run on CPU even when GPUs are present")
    p.add_argument("--json", action="store_true", help="print JSON (main process)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    try:
        summary = embed_manifest(args.model, args.manifest, args.store, args.batch_size,
                                 progress=not args.json, accelerator=accelerator)
        if not accelerator.is_main_process:
            return 0
        index = build_index(args.store, args.index, kind=args.kind, progress=not args.json)
        hits = Retriever(args.index, args.model).search_text(args.query, args.k, args.modality) \
            if args.query else []
    except MMCardioError as err:
        print(f"retrieve: error: {err}", file=sys.stderr)
        return 2
    result = {"embed": summary, "index": {"folder": args.index, "counts": index.info["counts"]},
              "hits": [h.as_dict() for h in hits]}
    text = f"{summary['vectors']} vectors indexed in {args.index}" + (f"\n{format_hits(hits)}" if args.query else "")
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
