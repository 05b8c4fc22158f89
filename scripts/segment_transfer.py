"""Segmenter transfer on the phantom: the tiny SAM trained on echo LV cavity frames, then a
LoRA adapter (with its copy of the mask decoder) trained on CMR; box-prompted LV cavity Dice
(MONAI DiceMetric) on the test split before and after the adapter.

    .venv/bin/python scripts/segment_transfer.py --out runs/seg-transfer --studies 60 --steps 300
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from monai.metrics import DiceMetric

from mmcardio.adapters.lora import load_lora
from mmcardio.adapters.sam import load_segmenter
from mmcardio.adapters.seg_data import SegmentationFrames
from mmcardio.datasets.synthetic import generate_cohort
from mmcardio.study import read_manifest
from mmcardio.train.segment import BoxPromptedSam, load_segment_config, run_segment_training

TINY = Path(__file__).resolve().parents[1] / "configs" / "segment" / "tiny.yaml"


def train(manifest: Path, out: Path, *sets: str, progress: bool) -> float:
    """Seconds to train the tiny config with `sets` overrides into `out`."""
    start = time.perf_counter()
    run_segment_training(load_segment_config(TINY, sets), manifest, out, progress=progress)
    return round(time.perf_counter() - start, 1)


@torch.no_grad()
def test_dice(model, manifest: Path, modality: str, image_size: int, batch_size: int = 16) -> tuple[float, int]:
    """Mean Dice over the test split's frames showing the LV cavity, prompted with its box."""
    frames = SegmentationFrames([s for s in read_manifest(manifest) if s.split == "test"], modality,
                                image_size=image_size)
    wrapped, metric = BoxPromptedSam(model).eval(), DiceMetric(reduction="mean")
    for start in range(0, len(frames), batch_size):
        items = [frames[i] for i in range(start, min(start + batch_size, len(frames)))]
        batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
        logits = wrapped(batch["image"], batch["box"], batch["input_size"])
        upsampled = torch.nn.functional.interpolate(logits, batch["mask"].shape[-2:], mode="bilinear")
        metric(y_pred=(upsampled > 0).float(), y=batch["mask"])
    return float(metric.aggregate()), len(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the cohort and both runs")
    parser.add_argument("--studies", type=int, default=60, help="phantom studies to synthesize")
    parser.add_argument("--steps", type=int, default=300, help="echo steps (the CMR adapter trains half as many)")
    parser.add_argument("--seed", type=int, default=1, help="phantom cohort seed")
    parser.add_argument("--json", action="store_true", help="no progress bars: only the JSON result")
    args = parser.parse_args()
    manifest = args.out / "cohort" / "manifest.csv"
    if not manifest.is_file():
        generate_cohort(args.out / "cohort", args.studies, seed=args.seed, progress=not args.json)
    progress = not args.json
    result = {"echo_train_s": train(manifest, args.out / "echo", f"max_steps={args.steps}", "checkpoint_every=0",
                                    progress=progress)}
    echo_model, config = load_segmenter(args.out / "echo" / "final")
    result["echo_dice"], result["echo_frames"] = test_dice(echo_model, manifest, "echo", config.image_size)
    result["cmr_dice_unadapted"], result["cmr_frames"] = test_dice(echo_model, manifest, "cmr", config.image_size)
    result["cmr_lora_train_s"] = train(manifest, args.out / "cmr", f"max_steps={args.steps // 2}", "checkpoint_every=0",
                                       "modality=cmr", "lora_rank=4", f"init_from={args.out / 'echo' / 'final'}",
                                       progress=progress)
    base, _ = load_segmenter(args.out / "cmr" / "final")
    adapted = load_lora(base, args.out / "cmr" / "final" / "adapters" / "cmr", "cmr")
    result["cmr_dice_lora"], _ = test_dice(adapted, manifest, "cmr", config.image_size)
    result["lora_dice_gain"] = result["cmr_dice_lora"] - result["cmr_dice_unadapted"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
