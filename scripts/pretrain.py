"""CardioCLIP pretraining under `accelerate launch`: `mmcardio pretrain` as a script file.

    accelerate launch --multi_gpu --num_processes 2 scripts/pretrain.py \
        --config configs/pretrain/tiny.yaml --manifest cohort/manifest.csv --out runs/tiny

is the same command as `accelerate launch ... -m mmcardio.cli pretrain --config ...`.
"""
import sys

from mmcardio.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
