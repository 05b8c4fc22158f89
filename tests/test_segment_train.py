"""Segmenter training on a tiny phantom cohort: the dataset's boxes, a real DiceCE drop,
bit-exact resume and a LoRA run that trains only the adapter and the decoder."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmcardio.adapters.lora import trainable_share
from mmcardio.adapters.sam import build_sam, load_segmenter, sam_config, save_segmenter
from mmcardio.adapters.seg_data import SegmentationFrames
from mmcardio.cli import main
from mmcardio.datasets.readers import read_volume
from mmcardio.datasets.synthetic import generate_cohort
from mmcardio.records import Label
from mmcardio.study import read_manifest
from mmcardio.train.segment import (
    BoxPromptedSam,
    build_segmenter_model,
    load_segment_config,
    run_segment_training,
    segmentation_loss,
)

TINY = Path(__file__).parents[1] / "configs" / "segment" / "tiny.yaml"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("segment")
    generate_cohort(root / "cohort", 4, seed=0, progress=False, workers=1)
    return root / "cohort" / "manifest.csv"


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator (accelerate keeps process-wide state)."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train(cohort: Path, out: Path, *sets: str, resume: bool = False) -> dict:
    cfg = load_segment_config(TINY, ["checkpoint_every=0", "log_every=5", *sets])
    return run_segment_training(cfg, cohort, out, resume=resume, progress=False)


def test_box_is_the_masks_bounding_box_on_the_input_grid(cohort):
    studies = [s for s in read_manifest(cohort) if s.split == "train"]
    frames = SegmentationFrames(studies, "echo", ["lv_cavity"], image_size=128)
    sample, where = frames[7], frames.describe(7)
    rows, cols = torch.nonzero(sample["mask"][0], as_tuple=True)
    assert sample["box"].tolist() == [cols.min(), rows.min(), cols.max(), rows.max()]
    # the same box as the original label's box mapped by SAM's own prompt geometry (within a pixel)
    study = next(s for s in studies if s.study_id == where["study_id"])
    label = read_volume(study.masks[where["series"]]).array[where["frame"], 0] == Label.LV_CAVITY
    r, c = np.nonzero(label)
    scale = 128 / max(label.shape)
    mapped = np.array([c.min(), r.min(), c.max() + 1, r.max() + 1]) * scale
    assert np.abs(mapped - sample["box"].numpy() - [0, 0, 1, 1]).max() <= 1.0
    assert tuple(sample["input_size"].tolist()) == (128, 128) and sample["image"].shape == (3, 128, 128)
    assert len(frames) == sum(int((read_volume(s.masks[k]).array == Label.LV_CAVITY).any(axis=(1, 2, 3)).sum())
                              for s in studies for k in s.masks if k.startswith("echo:"))


def test_box_jitter_is_seeded_and_bounded(cohort):
    studies = [s for s in read_manifest(cohort) if s.split == "train"]
    exact = SegmentationFrames(studies, "echo", image_size=128)
    jittered = SegmentationFrames(studies, "echo", image_size=128, box_jitter=0.05, seed=3)
    box, a, b, c = exact[7]["box"], jittered[(7, 0)]["box"], jittered[(7, 0)]["box"], jittered[(7, 1)]["box"]
    size = (box[2:] - box[:2] + 1).repeat(2)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, box)
    assert ((a - box).abs() <= 0.05 * size + 1e-4).all()


def test_training_lowers_the_dice_ce_loss_on_a_fixed_batch(cohort, tmp_path):
    torch.manual_seed(0)
    start = save_segmenter(build_sam("tiny"), sam_config("tiny"), tmp_path / "start")
    studies = [s for s in read_manifest(cohort) if s.split == "train"]
    frames = SegmentationFrames(studies, "echo", image_size=128)
    batch = {k: torch.stack([frames[i][k] for i in range(0, len(frames), len(frames) // 8)])
             for k in ("image", "mask", "box", "input_size")}

    def loss_of(folder: Path) -> float:
        with torch.no_grad():
            return float(segmentation_loss(BoxPromptedSam(load_segmenter(folder)[0].eval()), batch))

    summary = train(cohort, tmp_path / "run", "max_steps=40", "lr=3e-3", f"init_from={start}")
    first, last = loss_of(start), loss_of(tmp_path / "run" / "final")
    print(f"fixed-batch DiceCE {first:.4f} -> {last:.4f}; {summary['seconds_per_step']} s/step")
    assert last < 0.8 * first
    assert summary["steps"] == 40 and summary["trainable_share"] > 0.9


def test_resume_ends_with_the_same_weights(cohort, tmp_path):
    whole = train(cohort, tmp_path / "whole", "max_steps=6", "checkpoint_every=3")
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step_3", cut / "checkpoints" / "step_3")
    shutil.copy(tmp_path / "whole" / "config.yaml", cut / "config.yaml")
    resumed = train(cohort, cut, "max_steps=6", "checkpoint_every=3", resume=True)
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(cut / "final" / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["steps"] == whole["steps"] == 6
    with pytest.raises(Exception, match="different run config"):
        train(cohort, cut, "max_steps=6", "checkpoint_every=3", "lr=0.5", resume=True)


def test_lora_run_trains_only_the_adapter_and_decoder(cohort, tmp_path):
    cfg = load_segment_config(TINY, ["lora_rank=4", "modality=cmr"])
    model, base_state = build_segmenter_model(cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "mask_decoder.modules_to_save.cmr" in n for n in trainable)
    counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert counted / total == pytest.approx(trainable_share(model.model))
    assert base_state is not None

    out = tmp_path / "lora"
    code = main(["segment", "train", "--config", str(TINY), "--manifest", str(cohort), "--out", str(out),
                 "--set", "lora_rank=4", "--set", "modality=cmr", "--set", "max_steps=3",
                 "--set", "checkpoint_every=0", "--json"])
    assert code == 0
    adapter = out / "final" / "adapters" / "cmr"
    assert (adapter / "adapter_config.json").is_file()
    size = (adapter / "adapter_model.safetensors").stat().st_size
    assert size < 0.5 * (out / "final" / "model.safetensors").stat().st_size
    load_segmenter(out / "final")  # the base stays a plain segmenter folder


def test_training_forward_is_the_predictors_forward(cohort):
    """The logits training optimises are those CardiacPredictor gives for the same frame and
    box: the same pixel normalisation, padding and prompt geometry (a vit_b with SAM's
    ImageNet statistics, so a scale mistake in either shows)."""
    from mmcardio.adapters.sam import CardiacPredictor
    from mmcardio.adapters.sam_preprocess import grey_frames
    from mmcardio.datasets.readers import read_video

    torch.manual_seed(0)
    config = sam_config("tiny")
    config.pixel_mean, config.pixel_std = sam_config("vit_b").pixel_mean, sam_config("vit_b").pixel_std
    model = build_sam(config).eval()
    study = next(s for s in read_manifest(cohort) if s.echo and s.masks)
    frames = SegmentationFrames([study], "echo", image_size=128)
    item, where = frames[3], frames.describe(3)
    with torch.no_grad():
        trained = BoxPromptedSam(model)(item["image"][None], item["box"][None], item["input_size"][None])[0]
    clip = next(c for c in study.echo if f"echo:{c.view}" == where["series"])
    predictor = CardiacPredictor(model, "echo")
    predictor.set_frames(grey_frames(read_video(clip.path).frames))
    scale = predictor.frames.original_size[0] / predictor.frames.input_size[0]
    predicted = predictor.predict(where["frame"], box=item["box"].numpy() * scale).low_res_logits
    # the training image is stored in 8 bits: within a 1/255 step of the predictor's pixels
    assert torch.allclose(trained, predicted, atol=0.05 * float(predicted.abs().max()))


def test_several_structures_train_on_their_own_mask_tokens(cohort):
    """With two structures the training logits are the decoder's tokens 0 and 1, the ones
    CardiacPredictor.predict_all reads, and each channel's mask is its own structure."""
    from mmcardio.adapters.sam import CardiacPredictor

    torch.manual_seed(0)
    model = build_sam("tiny").eval()
    study = next(s for s in read_manifest(cohort) if s.cmr is not None)
    frames = SegmentationFrames([study], "cmr", ["lv_cavity", "lv_epicardium"], image_size=128)
    item, where = frames[0], frames.describe(0)
    cavity, epicardium = item["mask"]
    assert epicardium.sum() > cavity.sum() > 0 and bool((epicardium >= cavity).all())
    with torch.no_grad():
        trained = BoxPromptedSam(model, 2)(item["image"][None], item["box"][None], item["input_size"][None])[0]
    cine = read_volume(study.cmr, modality="cmr").array
    predictor = CardiacPredictor(model, "cmr", outputs=2)
    predictor.set_frames(cine.reshape(-1, *cine.shape[-2:]))
    scale = predictor.frames.original_size[0] / predictor.frames.input_size[0]
    outputs = predictor.predict_all(where["frame"], box=item["box"].numpy() * scale)
    assert trained.shape[0] == 2 and len(outputs) == 2
    for k in range(2):
        assert torch.allclose(trained[k], outputs[k].low_res_logits[0], atol=0.05 * float(trained[k].abs().max()))
    with torch.no_grad():  # token 0 is SAM's single-mask output: a one-structure model's
        single = BoxPromptedSam(model, 1)(item["image"][None], item["box"][None], item["input_size"][None])[0]
    assert torch.equal(single[0], trained[0])


def test_a_lora_run_carries_the_adapters_of_its_start(cohort, tmp_path):
    """echo base -> CMR adapter -> CT adapter: the last folder segments all three."""
    from mmcardio.adapters.segmenter import Segmenters, read_card

    train(cohort, tmp_path / "echo", "max_steps=2", "batch_size=2")
    train(cohort, tmp_path / "cmr", "max_steps=2", "batch_size=2", "modality=cmr", "lora_rank=4", "frames_per_series=4",
          f"init_from={tmp_path / 'echo' / 'final'}")
    train(cohort, tmp_path / "ct", "max_steps=2", "batch_size=2", "modality=ct", "lora_rank=4", "structures=[heart]",
          "frames_per_series=4", f"init_from={tmp_path / 'cmr' / 'final'}")
    card = read_card(tmp_path / "ct" / "final")
    assert card.base.modality == "echo" and card.adapters == {"cmr": ["lv_cavity"], "ct": ["heart"]}
    segmenters = Segmenters(tmp_path / "ct" / "final")
    assert sorted(segmenters.predictors) == ["cmr", "ct", "echo"]
    base = load_file(tmp_path / "echo" / "final" / "model.safetensors")
    carried = load_file(tmp_path / "ct" / "final" / "model.safetensors")
    assert all(torch.equal(base[k], carried[k]) for k in base)  # adapters never touch the base
    cmr_adapter = tmp_path / "cmr" / "final" / "adapters" / "cmr" / "adapter_model.safetensors"
    assert (tmp_path / "ct" / "final" / "adapters" / "cmr" / "adapter_model.safetensors").read_bytes() == \
        cmr_adapter.read_bytes()


def test_frames_per_series_and_max_series_sample_evenly(cohort):
    studies = [s for s in read_manifest(cohort) if s.split == "train"]
    every = SegmentationFrames(studies, "cmr", image_size=128)
    sampled = SegmentationFrames(studies, "cmr", image_size=128, frames_per_series=5, max_series=1)
    assert len(sampled.series) == 1 and len(sampled) == 5
    shown = [every.describe(i)["frame"] for i in range(len(every))
             if every.describe(i)["study_id"] == sampled.describe(0)["study_id"]]
    assert [sampled.describe(i)["frame"] for i in range(5)] == [shown[round(j)] for j in np.linspace(0, len(shown) - 1, 5)]
