"""Segmenting without a user: the automatic box on phantom frames, tracking mechanics with a
tiny untrained SAM, label Volumes for `measure_study`, and Dice/HD95 on closed-form shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmcardio.adapters.geometry import mask_box
from mmcardio.adapters.sam import CardiacPredictor, build_sam
from mmcardio.adapters.track import auto_box, predict_masks, segment_clip, segment_volume
from mmcardio.datasets.readers import read_for_column, read_volume
from mmcardio.datasets.synthetic.cohort import generate_cohort
from mmcardio.errors import MMCardioError
from mmcardio.eval.segmentation import SegmentationScore
from mmcardio.records import Label
from mmcardio.study import read_manifest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    generate_cohort(out, 4, seed=0, progress=False, workers=1)
    truth = {r["study_id"]: r for r in map(json.loads, (out / "truth.jsonl").open())}
    return {s.study_id: s for s in read_manifest(out / "manifest.csv")}, truth


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
    track = segment_clip(predictor, frames, box=box, start=start)
    assert track.masks.shape == frames.shape and track.masks.dtype == bool
    assert track.ious.shape == (8,) and np.isfinite(track.ious).all()
    assert spy.encoded == len(frames)  # one encoder run per frame
    by_frame = {c["frame"]: c for c in spy.calls}
    assert sorted(by_frame) == list(range(8)) and len(spy.calls) == 8
    assert by_frame[start]["mask_input"] is None and np.array_equal(by_frame[start]["box"], box)
    for k in range(8):
        if k == start:
            continue
        neighbour = by_frame[k - 1 if k > start else k + 1]
        previous = neighbour["out"]
        assert by_frame[k]["mask_input"] is previous.low_res_logits
        expected = mask_box(previous.mask, 0.1) if previous.mask.any() else neighbour["box"]
        assert np.array_equal(by_frame[k]["box"], expected)
        assert np.array_equal(track.boxes[k], expected)


def test_segment_clip_without_a_box_uses_auto_box(cohort, predictor):
    studies, _ = cohort
    frames = grey(read_for_column("echo", studies["S00004"].echo[0].path))[:3]
    spy = Spy(predictor)
    segment_clip(predictor, frames, start=1)
    assert np.array_equal(spy.calls[0]["box"], auto_box(frames, "echo", frame=1).box)
    with pytest.raises(MMCardioError, match="no box given"):
        segment_clip(predictor, np.zeros((2, 16, 16)))


def test_segment_volume_tracks_each_slice(cohort):
    studies, _ = cohort
    cine = read_volume(studies["S00004"].cmr, modality="cmr").array[:3, 6:8]
    predictor = CardiacPredictor(build_sam("tiny").eval(), "cmr")
    track = segment_volume(predictor, cine, box=np.array([30.0, 30.0, 70.0, 70.0]))
    assert track.masks.shape == cine.shape and track.ious.shape == (3, 2)
    assert track.boxes.shape == (3, 2, 4)


def test_predict_masks_feeds_measure_study_shapes(cohort, monkeypatch):
    studies, _ = cohort
    study = studies["S00004"]

    def fake_clip(predictor, frames, structure=Label.LV_CAVITY, **_):
        """A disc per frame: the tracking is tested above; here the Volumes' geometry."""
        yy, xx = np.mgrid[: frames.shape[-2], : frames.shape[-1]]
        return type("T", (), {"masks": np.broadcast_to((yy - 50) ** 2 + (xx - 50) ** 2 < 200,
                                                       frames.shape)})()

    monkeypatch.setattr("mmcardio.adapters.track.segment_clip", fake_clip)
    monkeypatch.setattr("mmcardio.adapters.track.segment_volume", fake_clip)
    masks = predict_masks(study, {"echo": {Label.LV_CAVITY: None}, "cmr": {Label.LV_CAVITY: None}})
    truth = {k: read_volume(p) for k, p in study.masks.items()}
    assert sorted(masks) == sorted(truth)
    for key, volume in masks.items():
        assert volume.array.shape == truth[key].array.shape and volume.units == "label"
        assert np.allclose(volume.spacing_mm, truth[key].spacing_mm, atol=1e-5)
        assert set(np.unique(volume.array)) == {0, int(Label.LV_CAVITY)}


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
