"""CardioCLIP pretraining under `accelerate launch` (same flags as `mmcardio pretrain`).

    accelerate launch --multi_gpu --num_processes 2 scripts/pretrain.py \
        --config configs/pretrain/tiny.yaml --manifest cohort/manifest.csv --out runs/tiny
"""
import sys

from mmcardio.errors import MMCardioError
from mmcardio.train.pretrain import main

if __name__ == "__main__":
    try:
        main()
    except MMCardioError as err:
        print(f"pretrain: error: {err}", file=sys.stderr)
        sys.exit(2)
