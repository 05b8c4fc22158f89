"""Studies whose files are corrupt: pretraining, segmenter training, report-head training and
embedding skip them under `max_failed_fraction` (default 1%), list them with the reader's
reason in their summaries, never train on or store them, and stop above the limit."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmcardio.cli import main
from mmcardio.config import load_yaml
from mmcardio.datasets.synthetic import generate_cohort
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.failures import DEFAULT_MAX_FAILED_FRACTION, FailurePolicy
from mmcardio.retrieval import EmbeddingStore
from mmcardio.study import read_manifest
from mmcardio.train.config import PretrainConfig, load_pretrain_config
from mmcardio.train.segment import SegmentConfig
from tests.test_zeroshot import untrained_model

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = ["--config", str(REPO / "configs" / "pretrain" / "tiny.yaml"), "--set", "batch_size=4",
            "--set", "num_workers=0", "--set", "log_every=1", "--set", "optimizer.warmup_steps=1",
            "--set", "max_steps=2"]
SEGMENT = ["--config", str(REPO / "configs" / "segment" / "tiny.yaml"), "--set", "batch_size=4",
           "--set", "max_steps=2", "--set", "log_every=1", "--set", "checkpoint_every=0"]
# the phantom cohort (seed 0, 12 studies): training studies S00001, 2, 5, 7, 8, 9, 10, 12
BAD_ECG, BAD_ECHO_IMAGE, BAD_CLIP = "S00007", "S00008", "S00012"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("failed")
    generate_cohort(root / "cohort", 12, seed=0, progress=False, workers=1)
    return root / "cohort"


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator (accelerate keeps process-wide state)."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def cohort_copy(pristine: Path, folder: Path) -> Path:
    shutil.copytree(pristine, folder)
    return folder / "manifest.csv"


def truncate(path: Path) -> bytes:
    """Cut a file to a third of its bytes; returns the original bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return data


def study(manifest: Path, study_id: str):
    return next(s for s in read_manifest(manifest) if s.study_id == study_id)


def run(*argv) -> tuple[int, dict]:
    """The command's exit code and its JSON output (with "error" when it failed)."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main([*map(str, argv), "--json"])
    return code, json.loads(buffer.getvalue())


def test_the_default_limit_is_one_percent_and_bounds_are_exact():
    assert DEFAULT_MAX_FAILED_FRACTION == 0.01
    assert PretrainConfig().max_failed_fraction == SegmentConfig().max_failed_fraction == 0.01
    assert FailurePolicy().max_failed_fraction == 0.01
    assert load_pretrain_config(REPO / "configs" / "pretrain" / "tiny.yaml").max_failed_fraction == 0.01
    default = FailurePolicy()
    default.check({"a": "bad"}, 100)  # 1 of 100 is 1%: skipped
    with pytest.raises(MMCardioError, match="2 of 100 studies failed"):
        default.check({"a": "bad", "b": "bad"}, 100)
    with pytest.raises(MMCardioError, match="1 of 99 studies"):
        default.check({"a": "bad"}, 99)
    with pytest.raises(MMCardioError, match="1 of 1000"):
        FailurePolicy(0.0).check({"a": "bad"}, 1000)  # 0: the first failure stops
    FailurePolicy(1.0).check({str(i): "bad" for i in range(7)}, 7)  # 1: never stops
    FailurePolicy(0.29).check({str(i): "bad" for i in range(29)}, 100)  # 0.29 * 100 is 28.999...
    with pytest.raises(ConfigError, match="max_failed_fraction"):
        load_pretrain_config(None, ["max_failed_fraction=1.5"])
    with pytest.raises(ConfigError, match="max_failed_fraction"):
        FailurePolicy(-0.1)


def test_pretraining_skips_a_truncated_ecg_lists_it_and_remembers_it_on_resume(pristine, tmp_path):
    manifest = cohort_copy(pristine, tmp_path / "cohort")
    ecg = study(manifest, BAD_ECG).ecg
    original = truncate(ecg.with_suffix(".dat"))
    out = tmp_path / "run"
    args = ["pretrain", *PRETRAIN, "--manifest", manifest, "--out", out, "--cache", tmp_path / "cache"]
    # the default limit: 1 of the 8 training studies is 12.5% > 1%: stops before training
    code, stopped = run(*args)
    message = stopped["error"]
    assert code == 2 and "1 of 8 studies failed to read" in message and "max_failed_fraction 0.01" in message
    assert "--set max_failed_fraction=0.125" in message and f"{BAD_ECG}: {ecg}" in message
    assert not (out / "metrics.jsonl").exists()

    code, summary = run(*args, "--set", "max_failed_fraction=0.2", "--set", "stop_at_step=1",
                        "--set", "checkpoint_every=1")
    assert code == 0 and summary["status"] == "stopped"
    assert list(summary["skipped_studies"]) == [BAD_ECG]
    reason = summary["skipped_studies"][BAD_ECG]
    assert str(ecg) in reason and "truncated" in reason
    train = [s for s in read_manifest(manifest) if s.split == "train"]
    assert summary["train_studies"] == len(train) - 1  # left out, not replaced
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert BAD_ECG not in index["studies"] and BAD_ECG in index["failed"]

    ecg.with_suffix(".dat").write_bytes(original)  # fixed before the resume: trained on from now on
    code, resumed = run(*args, "--set", "max_failed_fraction=0.2", "--set", "checkpoint_every=1", "--resume")
    assert code == 0 and resumed["status"] == "finished" and resumed["steps"] == 2
    assert json.loads((out / "prepare.json").read_text())["failed"] == {}
    assert resumed["skipped_studies"] == {BAD_ECG: reason}  # step 1 was trained without it


def test_embedding_skips_an_unreadable_clip_then_embeds_it_once_fixed(pristine, tmp_path, caplog):
    manifest = cohort_copy(pristine, tmp_path / "cohort")
    untrained_model(manifest, seed=0).save_pretrained(tmp_path / "model")
    clip = next(c.path for c in study(manifest, BAD_CLIP).echo if c.view == "A2C")
    original = truncate(clip)
    store = tmp_path / "store"
    args = ["embed", "--model", tmp_path / "model", "--manifest", manifest, "--out", store]
    code, stopped = run(*args)
    assert code == 2 and "1 of 12 studies failed to read" in stopped["error"]
    assert "--max-failed-fraction 0.084" in stopped["error"] and str(clip) in stopped["error"]
    assert not store.exists()  # nothing written above the limit

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmcardio.failures"):
        code, summary = run(*args, "--max-failed-fraction", "0.1")
    assert code == 0 and summary["new_studies"] == summary["studies"] == 11
    assert list(summary["skipped_studies"]) == [BAD_CLIP] and str(clip) in summary["skipped_studies"][BAD_CLIP]
    logged = [r.getMessage() for r in caplog.records if BAD_CLIP in r.getMessage()]
    assert logged == [f"embed: study {BAD_CLIP} skipped, it cannot be read: {summary['skipped_studies'][BAD_CLIP]}"]
    held = EmbeddingStore.load(store)
    assert BAD_CLIP not in set(held.meta["study_id"]) and held.skipped == summary["skipped_studies"]
    assert json.loads((store / "skipped.json").read_text()) == summary["skipped_studies"]

    clip.write_bytes(original)
    code, again = run(*args, "--max-failed-fraction", "0.1")
    assert code == 0 and again["new_studies"] == 1 and again["studies"] == 12 and again["skipped_studies"] == {}
    fixed = EmbeddingStore.load(store)
    assert fixed.skipped == {} and len(fixed.vectors) > len(held.vectors)
    assert np.array_equal(fixed.vectors[: len(held.vectors)], held.vectors)  # the others are not redone
    assert set(fixed.meta.loc[fixed.meta["study_id"] == BAD_CLIP, "modality"]) >= {"echo", "study", "text"}


def test_segmenter_training_leaves_out_a_study_with_a_truncated_image(pristine, tmp_path):
    from mmcardio.adapters.seg_data import SegmentationFrames

    manifest = cohort_copy(pristine, tmp_path / "cohort")
    image = next(c.path for c in study(manifest, BAD_ECHO_IMAGE).echo if c.view == "A4C")
    truncate(image)
    args = ["segment", "train", *SEGMENT, "--manifest", manifest]
    code, stopped = run(*args, "--out", tmp_path / "stopped")
    assert code == 2 and "1 of 6 studies failed to read" in stopped["error"]
    assert "max_failed_fraction 0.01" in stopped["error"] and str(image) in stopped["error"]
    assert not (tmp_path / "stopped" / "metrics.jsonl").exists()

    code, summary = run(*args, "--out", tmp_path / "run", "--set", "max_failed_fraction=0.2")
    assert code == 0 and summary["steps"] == 2
    assert list(summary["skipped_studies"]) == [BAD_ECHO_IMAGE] and str(image) in summary["skipped_studies"][BAD_ECHO_IMAGE]
    others = [s for s in read_manifest(manifest) if s.split == "train" and s.study_id != BAD_ECHO_IMAGE]
    # every frame of the other studies, none of the skipped one (not even of its readable A2C view)
    assert summary["train_frames"] == len(SegmentationFrames(others, "echo", image_size=128))


def test_report_head_training_skips_a_study_embed_could_not_read(pristine, tmp_path):
    from mmcardio.report.config import load_report_config
    from mmcardio.report.train import run_report_training

    manifest = cohort_copy(pristine, tmp_path / "cohort")
    untrained_model(manifest, seed=0).save_pretrained(tmp_path / "clip")
    clip = next(c.path for c in study(manifest, BAD_CLIP).echo if c.view == "A2C")
    truncate(clip)
    assert main(["embed", "--model", str(tmp_path / "clip"), "--manifest", str(manifest), "--out",
                 str(tmp_path / "store"), "--max-failed-fraction", "0.1", "--json"]) == 0
    sets = [f"clip_model={tmp_path / 'clip'}", f"store={tmp_path / 'store'}", "max_steps=2", "batch_size=4",
            "tiny.n_layer=1", "tiny.n_embd=32", "tiny.vocab_size=400", "log_every=1"]
    with pytest.raises(MMCardioError, match=rf"1 of 8 studies failed to read .*{BAD_CLIP}: no embedding in the "
                                            r"store .*could not read it \(.*A2C"):
        run_report_training(load_report_config(None, sets), manifest, tmp_path / "stopped", progress=False)

    cfg = load_report_config(None, [*sets, "max_failed_fraction=0.2"])
    summary = run_report_training(cfg, manifest, tmp_path / "head", progress=False)
    assert summary["steps"] == 2 and list(summary["skipped_studies"]) == [BAD_CLIP]
    assert str(clip) in summary["skipped_studies"][BAD_CLIP]
    archived = [json.loads(line)["study_id"]
                for line in (tmp_path / "head" / "final" / "archive.jsonl").read_text().splitlines()]
    assert BAD_CLIP not in archived and len(archived) == 7
    assert load_yaml((tmp_path / "head" / "config.yaml").read_text())["max_failed_fraction"] == 0.2
