"""EchoNet-Dynamic recipe: a tiny folder in the published layout (FileList.csv, VolumeTracings.csv,
Videos/*.avi written with PyAV as MJPEG, grey stored as RGB) read into a manifest."""
from __future__ import annotations

import json

import av
import numpy as np
import pandas as pd
import pytest

from mmcardio.cli import main
from mmcardio.datasets.readers import read_volume
from mmcardio.datasets.readers.video import read_video
from mmcardio.records import Label
from mmcardio.study import read_manifest
from mmcardio.validation import validate_manifest

FRAMES, SIZE = 8, 112
#: FileName (as the public FileList.csv writes it, without .avi), EF, ESV, EDV, Split
VIDEOS = [("0X1A", 30.0, 70.0, 100.0, "TRAIN"), ("0X2B", 45.5, 44.0, 80.7, "VAL"),
          ("0X3C", 61.2, 31.0, 80.0, "TEST")]
ED_FRAME, ES_FRAME = 2, 6


def write_avi(path, frames=FRAMES):
    """An MJPEG AVI of grey frames stored as RGB, as EchoNet's videos are."""
    grey = np.random.default_rng(0).integers(0, 256, (frames, SIZE, SIZE), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=50)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuvj444p"
        for image in grey:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.repeat(image[..., None], 3, 2), "rgb24")))
        container.mux(stream.encode())


def tracing(name, frame, top, bottom, left, right):
    """A frame's rows: the long axis first (reaching beyond the cavity, so that drawing it
    would show), then horizontal chords from the left wall (X1) to the right wall (X2)."""
    rows = [(name, 55.0, top - 8.0, 55.0, bottom + 8.0, frame)]
    rows += [(name, left + 0.3, y, right - 0.4, y, frame) for y in np.linspace(top, bottom, 6)]
    return rows


@pytest.fixture
def echonet(tmp_path):
    root = tmp_path / "EchoNet-Dynamic"
    (root / "Videos").mkdir(parents=True)
    for name, *_ in VIDEOS:
        write_avi(root / "Videos" / f"{name}.avi")
    pd.DataFrame([(n, ef, esv, edv, SIZE, SIZE, 50, FRAMES, split) for n, ef, esv, edv, split in VIDEOS],
                 columns=["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames",
                          "Split"]).to_csv(root / "FileList.csv", index=False)
    rows = []
    for name in ("0X1A.avi", "0X2B"):  # with and without .avi; 0X3C has no tracing
        rows += tracing(name, ES_FRAME, 40, 70, 45, 65) + tracing(name, ED_FRAME, 30, 80, 40, 70)
    pd.DataFrame(rows, columns=["FileName", "X1", "Y1", "X2", "Y2", "Frame"]).to_csv(
        root / "VolumeTracings.csv", index=False)
    return root


def test_manifest(echonet, tmp_path, capsys):
    out = tmp_path / "echonet.csv"
    assert main(["manifest", "echonet-dynamic", str(echonet), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["studies"] == 3 and summary["with_masks"] == 2
    assert "10.1038/s41586-020-2145-8" in summary["citation"] and "non-commercial" in summary["licence"]
    studies = {s.study_id: s for s in read_manifest(out)}
    assert {k: (s.patient_id, s.split) for k, s in studies.items()} == {
        "0X1A": ("0X1A", "train"), "0X2B": ("0X2B", "val"), "0X3C": ("0X3C", "test")}
    # EF 30 % is reduced, 61.2 % normal, 45.5 % mildly reduced: no label
    assert [studies[k].labels for k in ("0X1A", "0X2B", "0X3C")] == [{"reduced_ef": 1}, {}, {"reduced_ef": 0}]
    m = studies["0X2B"].measurements
    assert (m["lvef"].value, m["lvef"].unit, m["lvedv"].value, m["lvesv"].value, m["lvedv"].unit) == \
        (45.5, "%", 80.7, 44.0, "mL")
    clip = studies["0X1A"].echo[0]
    assert clip.view == "A4C" and clip.path == echonet / "Videos" / "0X1A.avi"
    assert read_video(clip.path).fps == 50
    assert not studies["0X3C"].masks
    for name in ("0X1A", "0X2B"):
        labels = read_volume(studies[name].masks["echo:A4C"]).array
        assert labels.shape == (FRAMES, 1, SIZE, SIZE)
        # the cavity is the chords' polygon: x 40..70, y 30..80 at ED; rounded vertices, border included
        expected_ed = np.zeros((SIZE, SIZE), np.uint8)
        expected_ed[30:81, 40:71] = Label.LV_CAVITY
        expected_es = np.zeros((SIZE, SIZE), np.uint8)
        expected_es[40:71, 45:66] = Label.LV_CAVITY
        np.testing.assert_array_equal(labels[ED_FRAME, 0], expected_ed)
        np.testing.assert_array_equal(labels[ES_FRAME, 0], expected_es)
        untraced = [f for f in range(FRAMES) if f not in (ED_FRAME, ES_FRAME)]
        assert not labels[untraced].any()
    assert validate_manifest(out, workers=1) == []


def test_limit_and_missing_column(echonet, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["manifest", "echonet-dynamic", str(echonet), "--out", str(out), "--limit", "1", "--json"]) == 0
    assert [s.study_id for s in read_manifest(out)] == ["0X1A"]
    capsys.readouterr()
    table = pd.read_csv(echonet / "FileList.csv").drop(columns="EF")
    table.to_csv(echonet / "FileList.csv", index=False)
    assert main(["manifest", "echonet-dynamic", str(echonet), "--out", str(out), "--json"]) == 2
    error = json.loads(capsys.readouterr().out)
    assert error["file"].endswith("FileList.csv") and error["field"] == "EF"


def test_tracing_outside_the_video(echonet, tmp_path, capsys):
    table = pd.read_csv(echonet / "VolumeTracings.csv")
    table.loc[table["Frame"] == ES_FRAME, "Frame"] = FRAMES + 3
    table.to_csv(echonet / "VolumeTracings.csv", index=False)
    assert main(["manifest", "echonet-dynamic", str(echonet), "--out", str(tmp_path / "m.csv"), "--json"]) == 2
    error = json.loads(capsys.readouterr().out)
    assert error["file"].endswith("VolumeTracings.csv") and error["field"] == "Frame"
    assert "outside its 8 frames" in error["error"]
