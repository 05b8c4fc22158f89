"""Segmenting without a user: the automatic box on phantom frames, tracking mechanics with a
tiny untrained SAM, label Volumes for `measure_study`, and Dice/HD95 on closed-form shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmcardio.adapters.geometry import mask_box
from mmcardio.adapters.lora import add_lora, save_lora
from mmcardio.adapters.predict import predict_masks
from mmcardio.adapters.sam import (
    CardiacPredictor,
    Prediction,
    build_sam,
    sam_config,
    save_segmenter,
)
from mmcardio.adapters.segmenter import BasePart, SegmenterCard, Segmenters, write_card
from mmcardio.adapters.track import auto_box, outline_frames, segment_clip
from mmcardio.datasets.readers import read_for_column, read_volume
from mmcardio.datasets.synthetic.cohort import generate_cohort
from mmcardio.errors import MMCardioError
from mmcardio.eval.segmentation import SegmentationScore
from mmcardio.records import Label
from mmcardio.study import read_manifest


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    generate_cohort(out, 4, seed=0, progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def cohort(cohort_dir):
    truth = {r["study_id"]: r for r in map(json.loads, (cohort_dir / "truth.jsonl").open())}
    return {s.study_id: s for s in read_manifest(cohort_dir / "manifest.csv")}, truth


@pytest.fixture
def predictor():
    torch.manual_seed(0)
    return CardiacPredictor(build_sam("tiny").eval(), "echo")


def box_of(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two inclusive pixel boxes."""
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]) + 1, 0, None))
    area = lambda c: np.prod(c[2:] - c[:2] + 1)
    return float(inter / (area(a) + area(b) - inter))


def grey(video) -> np.ndarray:
    return video.frames.mean(-1) if video.frames.ndim == 4 else video.frames


# ------------------------------------------------------------------------------ automatic box
def test_auto_box_finds_the_lv_in_phantom_echo_at_end_diastole(cohort):
    studies, truth = cohort
    ious = []
    for sid, study in studies.items():
        for clip in study.echo:
            key = f"echo:{clip.view}"
            ed = truth[sid]["masks"][key]["ed_frame"]
            frames = grey(read_for_column("echo", clip.path))
            labels = read_volume(study.masks[key]).array[ed, 0]
            found = auto_box(frames, "echo", frame=ed)
            ious.append(box_iou(found.box, box_of(labels == Label.LV_CAVITY)))
    print("echo ED box IoUs", np.round(ious, 2))
    # measured on seed 0 (7 clips): 0.72-0.77 (the box sits inside the wall); at end-systole some frames fail (LV merged
    # with the LA through the open valve, or too small), see the report
    assert min(ious) >= 0.65


def test_auto_box_finds_the_lv_in_phantom_cmr_mid_slices(cohort):
    studies, truth = cohort
    ious = []
    for sid, study in studies.items():
        if study.cmr is None:
            continue
        cine = read_volume(study.cmr, modality="cmr").array
        labels = read_volume(study.masks["cmr"]).array[truth[sid]["masks"]["cmr"]["ed_phase"]]
        has_lv = np.flatnonzero((labels == Label.LV_CAVITY).any(axis=(1, 2)))
        mid = has_lv[len(has_lv) // 2]
        found = auto_box(cine[:, mid], "cmr", frame=truth[sid]["masks"]["cmr"]["ed_phase"])
        ious.append(box_iou(found.box, box_of(labels[mid] == Label.LV_CAVITY)))
    print("cmr mid-slice ED box IoUs", np.round(ious, 2))
    assert min(ious) >= 0.85  # measured on seed 0 (2 studies): 0.93, 0.97


def test_auto_box_says_why_not():
    assert "only the LV cavity" in auto_box(np.ones((8, 8)), "ct").reason
    assert auto_box(np.ones((8, 8)), "echo", Label.RV_CAVITY).box is None
    assert auto_box(np.zeros((8, 8)), "echo").reason.startswith("the frame is empty")


def test_mask_box_enlarges_within_the_image():
    mask = np.zeros((20, 30), bool)
    mask[5:10, 0:10] = True  # 10 wide, 5 high
    assert mask_box(mask, 0.1).tolist() == [0.0, 4.5, 10.0, 9.5]
    assert mask_box(np.zeros((4, 4), bool)) is None


# ------------------------------------------------------------------------------- tracking
class Spy:
    """Records each predict call's frame, box and mask prompt, and counts encoder runs."""

    def __init__(self, predictor: CardiacPredictor) -> None:
        self.calls, self.encoded, self.inner = [], 0, predictor.predict
        predictor.predict = self.predict
        predictor.sam.image_encoder.register_forward_hook(self.count)

    def count(self, *_):
        self.encoded += 1

    def predict(self, frame, box=None, mask_input=None, **kw):
        out = self.inner(frame, box=box, mask_input=mask_input, **kw)
        self.calls.append({"frame": frame, "box": np.asarray(box, float), "mask_input": mask_input,
                           "out": out})
        return out


def test_segment_clip_prompts_each_frame_from_its_neighbour(cohort, predictor):
    studies, _ = cohort
    frames = grey(read_for_column("echo", studies["S00002"].echo[0].path))[:8]
    spy = Spy(predictor)
    start, box = 3, np.array([40.0, 20.0, 70.0, 70.0])
    track = segment_clip(predictor, frames, box=box, start=start, margin=0.1)
    assert track.masks.shape == frames.shape and track.masks.dtype == bool
    assert track.ious.shape == (8,) and np.isfinite(track.ious).all()
    assert spy.encoded == 1  # one batched encoder run for the 8 frames
    by_frame = {c["frame"]: c for c in spy.calls}
    assert sorted(by_frame) == list(range(8)) and len(spy.calls) == 8
    assert np.array_equal(by_frame[start]["box"], box)
    for k in range(8):
        if k == start:
            continue
        neighbour = by_frame[k - 1 if k > start else k + 1]
        previous = neighbour["out"]
        assert by_frame[k]["mask_input"] is None  # our segmenters learn boxes only
        expected = mask_box(previous.mask, 0.1) if previous.mask.any() else neighbour["box"]
        assert np.array_equal(by_frame[k]["box"], expected)
        assert np.array_equal(track.boxes[k], expected)


def test_segment_clip_can_pass_the_mask_prompt(cohort, predictor):
    studies, _ = cohort
    frames = grey(read_for_column("echo", studies["S00002"].echo[0].path))[:3]
    spy = Spy(predictor)
    segment_clip(predictor, frames, box=np.array([40.0, 20.0, 70.0, 70.0]), mask_prompt=True)
    assert spy.calls[0]["mask_input"] is None
    assert [c["mask_input"] for c in spy.calls[1:]] == [c["out"].low_res_logits for c in spy.calls[:-1]]


def test_segment_clip_without_a_box_uses_auto_box(cohort, predictor):
    studies, _ = cohort
    frames = grey(read_for_column("echo", studies["S00004"].echo[0].path))[:3]
    spy = Spy(predictor)
    segment_clip(predictor, frames, start=1)
    assert np.array_equal(spy.calls[0]["box"], auto_box(frames, "echo", frame=1).box)
    with pytest.raises(MMCardioError, match="no box given"):
        segment_clip(predictor, np.zeros((2, 16, 16)))


class Oracle:
    """A predictor that returns the reference masks of each frame of the stack it was given
    (whatever the box): the painting logic, without a model's errors."""

    modality = "cmr"

    def __init__(self, *truths: np.ndarray) -> None:
        self.truths, self.boxes = truths, []

    def set_frames(self, frames):
        assert frames.shape == self.truths[0].shape

    def embed(self):
        pass

    def predict_all(self, frame, box=None):
        self.boxes.append((frame, box))
        return [Prediction(truth[frame], 1.0, torch.zeros(1, 4, 4)) for truth in self.truths]


def test_outline_frames_paints_the_cavity_over_the_myocardium(cohort):
    studies, _ = cohort
    study = studies["S00004"]
    cine = read_volume(study.cmr, modality="cmr").array
    labels = read_volume(study.masks["cmr"]).array
    z = cine.shape[1] // 2
    cavity = labels[:, z] == Label.LV_CAVITY
    epicardium = np.isin(labels[:, z], [Label.LV_CAVITY, Label.LV_MYOCARDIUM])
    oracle = Oracle(cavity, epicardium)
    painted = outline_frames(oracle, cine[:, z], ["lv_cavity", "lv_epicardium"])
    assert [t for t, _ in oracle.boxes] == list(range(len(cine)))  # every frame found its box
    for t, box in oracle.boxes:
        assert np.array_equal(box, auto_box(cine[t, z], "cmr").box)
    assert np.array_equal(painted == Label.LV_CAVITY, cavity)
    assert np.array_equal(painted == Label.LV_MYOCARDIUM, epicardium & ~cavity)


def segmenter_folder(path, with_cmr_adapter: bool = True):
    """A tiny untrained segmenter folder: base for echo, a LoRA adapter for CMR."""
    torch.manual_seed(0)
    model = build_sam("tiny")
    save_segmenter(model, sam_config("tiny"), path)
    adapters = {}
    if with_cmr_adapter:
        save_lora(add_lora(model, "cmr"), "cmr", path / "adapters" / "cmr")
        adapters = {"cmr": ["lv_cavity", "lv_epicardium"]}
    write_card(path, SegmenterCard(BasePart("echo", ["lv_cavity"]), adapters))
    return path


def test_segmenters_switch_adapters_per_modality(tmp_path):
    segmenters = Segmenters(segmenter_folder(tmp_path / "seg"))
    assert segmenters.structures("cmr") == ["lv_cavity", "lv_epicardium"]
    echo, cmr = segmenters.predictor("echo"), segmenters.predictor("cmr")
    assert not hasattr(echo.model, "peft_config") and cmr.model.active_adapter == "cmr"
    with pytest.raises(MMCardioError, match="not 'ct'"):
        segmenters.predictor("ct")
    with pytest.raises(MMCardioError, match="no segmenter.json"):
        Segmenters(tmp_path)


def disc(shape, radius2):
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    return np.broadcast_to((yy - 50) ** 2 + (xx - 50) ** 2 < radius2, shape)


@pytest.fixture
def disc_segmenter(monkeypatch, tmp_path):
    """A segmenter folder whose masks are discs (the cavity, and a larger epicardium): the
    tracking is tested above; here what is built from the masks."""

    def fake_clip(predictor, frames, box=None, *_, **__):
        predictor.set_frames(frames)
        return type("T", (), {"masks": disc(frames.shape, 200), "boxes": np.zeros((len(frames), 4))})()

    def fake_predict_all(self, frame, box=None, **_):
        return [Prediction(disc(self.frames.original_size, r2).copy(), 1.0, torch.zeros(1, 32, 32))
                for r2 in (200, 400)[: self.outputs]]

    monkeypatch.setattr("mmcardio.adapters.track.segment_clip", fake_clip)
    monkeypatch.setattr(CardiacPredictor, "predict_all", fake_predict_all)
    return segmenter_folder(tmp_path / "seg")


def test_predict_masks_feeds_measure_study_shapes(cohort, disc_segmenter):
    studies, _ = cohort
    study = studies["S00004"]
    masks = predict_masks(study, Segmenters(disc_segmenter))
    truth = {k: read_volume(p) for k, p in study.masks.items() if k.split(":")[0] in ("echo", "cmr")}
    assert sorted(masks) == sorted(truth)
    for key, volume in masks.items():
        assert volume.array.shape == truth[key].array.shape and volume.units == "label"
        assert np.allclose(volume.spacing_mm, truth[key].spacing_mm, atol=1e-5)
    assert set(np.unique(masks["echo:A4C"].array)) == {0, int(Label.LV_CAVITY)}
    # the CMR adapter outlines the epicardium too: the myocardium is the ring between them
    assert set(np.unique(masks["cmr"].array)) == {0, int(Label.LV_CAVITY), int(Label.LV_MYOCARDIUM)}
    ring = (masks["cmr"].array == Label.LV_MYOCARDIUM).sum(axis=(-2, -1))
    assert np.all(ring[masks["cmr"].array.any(axis=(-2, -1))] == disc((96, 96), 400).sum() - disc((96, 96), 200).sum())


def test_measure_and_segment_eval_commands_with_a_segmenter(cohort_dir, disc_segmenter, tmp_path, capsys):
    from mmcardio.cli import main

    manifest = str(cohort_dir / "manifest.csv")
    assert main(["measure", "--manifest", manifest, "--study", "S00004", "--segmenter", str(disc_segmenter),
                 "--out", str(tmp_path / "m"), "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert {"echo", "cmr"} <= set(measured["measurements"])
    ef = measured["measurements"]["cmr"]["lvef"]
    assert ef["unit"] == "%" and ef["value"] == pytest.approx(0.0, abs=1e-6)  # a disc that never moves
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(f"S00004_{k.replace(':', '_')}.nii.gz"
                                                                      for k in measured["masks"])
    assert main(["segment", "eval", "--segmenter", str(disc_segmenter), "--manifest", manifest,
                 "--split", "train", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["studies"] >= 1 and 0 <= summary["dice"]["echo"] <= 1
    # the measuring method on the reference masks is within a few points of the phantom's truth
    assert summary["from_reference_masks"]["ef_mae"]["echo"] < 5


# ----------------------------------------------------------------------------- Dice and HD95
def test_dice_of_two_offset_squares_in_closed_form():
    pred, truth = np.zeros((2, 40, 40), np.uint8), np.zeros((2, 40, 40), np.uint8)
    truth[:, 10:20, 10:20] = 1
    pred[:, 13:23, 10:20] = 1  # 10x10 squares, shifted 3 rows: overlap 7x10
    score = SegmentationScore()
    row = score("a", "echo", pred, truth, spacing=(0.5, 0.5))
    assert row["dice"] == pytest.approx(2 * 70 / 200) and row["items"] == 2
    score("b", "echo", truth, truth, spacing=(0.5, 0.5))
    summary = score.aggregate()
    assert summary["dice"]["echo"] == pytest.approx((0.7 + 1.0) / 2)
    assert [r["study_id"] for r in summary["studies"]] == ["a", "b"]
    score.reset()
    assert score.aggregate()["studies"] == []


def test_hd95_of_a_shifted_disc_is_the_shift_in_mm():
    zz, yy, xx = np.mgrid[:12, :40, :40]
    disc = lambda cx: ((yy - 20) ** 2 + (xx - cx) ** 2 < 100) & (zz >= 3) & (zz < 9)
    truth, pred = disc(18).astype(np.uint8), disc(22).astype(np.uint8)  # 4 columns apart
    score = SegmentationScore()
    row = score("c", "cmr", pred[None], truth[None], spacing=(8.0, 1.5, 0.7))
    assert row["hd95_mm"] == pytest.approx(4 * 0.7, rel=1e-6)
    empty = np.zeros_like(truth)[None]
    with pytest.raises(MMCardioError, match="nowhere in the truth"):
        score("d", "cmr", pred[None], empty, spacing=(8.0, 1.5, 0.7))
