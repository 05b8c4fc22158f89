"""Zero-shot evaluation for `accelerate launch`: every process embeds a shard of the manifest,
the main process evaluates and writes metrics.json, report.md and the plots.

    accelerate launch scripts/zeroshot_eval.py --model RUN/final --manifest M --out DIR
    python scripts/zeroshot_eval.py ...   (one process; same as `mmcardio zeroshot`)
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from accelerate import Accelerator

from mmcardio.commands.zeroshot import add_arguments, evaluate, summary_text
from mmcardio.errors import MMCardioError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when GPUs are present")
    parser.add_argument("--json", action="store_true", help="print metrics as JSON (main process)")
    args = parser.parse_args(argv)
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    try:
        results = evaluate(args, accelerator)
    except MMCardioError as err:
        print(f"zeroshot_eval: error: {err}", file=sys.stderr)
        return 2
    if accelerator.is_main_process:
        print(json.dumps(results, indent=2, ensure_ascii=False, default=str) if args.json else summary_text(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
