"""CAMUS recipe, both releases: the 2023 NIfTI layout (database_nifti/, database_split/) and the
2019 MetaImage layout (training/, testing/), tiny files in the real formats; and the readers of
their sequences (`read_video`, `mmcardio read`, the MetaImage reader)."""
from __future__ import annotations

import json
import zlib

import nibabel as nib
import numpy as np
import pytest

from mmcardio.cli import main
from mmcardio.datasets.readers import read_volume
from mmcardio.datasets.readers.metaimage import read_metaimage
from mmcardio.datasets.readers.video import read_video
from mmcardio.errors import ReaderError
from mmcardio.records import Label
from mmcardio.study import read_manifest
from mmcardio.validation import validate_manifest

X, Y, T = 12, 10, 5          # sequence size: x (columns), y (rows), frames
SPACING = (0.3, 0.25)        # mm along x and y
ED, ES = 1, 4                # 1-based, as the info files write them
#: CAMUS value -> the package's, as the recipe must renumber them
RENUMBERED = {0: Label.BACKGROUND, 1: Label.LV_CAVITY, 2: Label.LV_MYOCARDIUM, 3: Label.LA_CAVITY}


def sequence(seed):
    """An (x, y, t) uint8 image, as CAMUS stores it, and an (x, y, t) label map of values 0-3."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (X, Y, T), dtype=np.uint8), rng.integers(0, 4, (X, Y, T), dtype=np.uint8)


def renumbered(camus_labels):
    return np.vectorize(lambda v: int(RENUMBERED[int(v)]))(camus_labels)


def write_info(path, **values):
    path.write_text("".join(f"{key}: {value}\n" for key, value in values.items()))


def write_nii(path, array):
    nib.save(nib.Nifti1Image(array, np.diag([*SPACING, 1.0, 1.0])), path)


def write_mhd(path, array, compressed=False, msb=False):
    """A MetaImage header and its .raw (or zlib .zraw) data; `array` indexed (x, y[, t])."""
    data = np.asarray(array).transpose().astype(array.dtype.newbyteorder(">" if msb else "<")).tobytes()
    raw = path.with_suffix(".zraw" if compressed else ".raw")
    raw.write_bytes(zlib.compress(data) if compressed else data)
    kind = {"u1": "MET_UCHAR", "u2": "MET_USHORT"}[array.dtype.str[1:]]
    spacing = " ".join(str(s) for s in (*SPACING, 1.0)[: array.ndim])
    path.write_text(f"ObjectType = Image\nNDims = {array.ndim}\nBinaryData = True\n"
                    f"BinaryDataByteOrderMSB = {msb}\nCompressedData = {compressed}\n"
                    f"TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = {spacing}\n"
                    f"DimSize = {' '.join(map(str, array.shape))}\nElementType = {kind}\n"
                    f"ElementDataFile = {raw.name}\n")


INFO_2023 = {"ED": ED, "ES": ES, "NbFrame": T, "Sex": "F", "Age": 54, "ImageQuality": "Good", "FrameRate": 25}
INFO_2019 = {"ED": ED, "ES": ES, "NbFrame": T, "Sex": "M", "Age": 71, "ImageQuality": "Medium"}
#: patient -> EF (%): reduced, mildly reduced (no label), normal
EF = {"patient0001": 35.0, "patient0002": 47.0, "patient0003": 60.0}


@pytest.fixture
def camus_2023(tmp_path):
    root = tmp_path / "CAMUS_public"
    for seed, (patient, ef) in enumerate(EF.items()):
        folder = root / "database_nifti" / patient
        folder.mkdir(parents=True)
        for view in ("2CH", "4CH"):
            image, labels = sequence(seed * 2 + (view == "4CH"))
            write_nii(folder / f"{patient}_{view}_half_sequence.nii.gz", image)
            if patient != "patient0002":  # patient0002 has only the ED and ES label maps
                write_nii(folder / f"{patient}_{view}_half_sequence_gt.nii.gz", labels)
            for phase, frame in (("ED", ED), ("ES", ES)):
                write_nii(folder / f"{patient}_{view}_{phase}.nii.gz", image[..., frame - 1])
                write_nii(folder / f"{patient}_{view}_{phase}_gt.nii.gz", labels[..., frame - 1])
            write_info(folder / f"Info_{view}.cfg", **INFO_2023, EF=ef)
    (root / "database_split").mkdir()
    for name, patient in (("training", "patient0001"), ("validation", "patient0002"), ("testing", "patient0003")):
        (root / "database_split" / f"subgroup_{name}.txt").write_text(patient + "\n")
    return root


@pytest.fixture
def camus_2019(tmp_path):
    root = tmp_path / "camus"
    for seed, (patient, ef) in enumerate(EF.items()):
        folder = root / ("testing" if patient == "patient0003" else "training") / patient
        folder.mkdir(parents=True)
        for view in ("2CH", "4CH"):
            image, labels = sequence(seed * 2 + (view == "4CH"))
            write_mhd(folder / f"{patient}_{view}_sequence.mhd", image)
            volumes = {}
            if patient != "patient0003":  # the test set has no label maps and no volumes
                for phase, frame in (("ED", ED), ("ES", ES)):
                    write_mhd(folder / f"{patient}_{view}_{phase}_gt.mhd", labels[..., frame - 1:frame])
                volumes = {"LVedv": 120.5, "LVesv": 120.5 * (1 - ef / 100), "LVef": ef}
            write_info(folder / f"Info_{view}.cfg", **INFO_2019, **volumes)
    return root


def run_manifest(root, out, *options):
    return main(["manifest", "camus", str(root), "--out", str(out), "--json", *options])


def test_nifti_release(camus_2023, tmp_path, capsys):
    out = tmp_path / "camus.csv"
    assert run_manifest(camus_2023, out) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["studies"] == 3 and "10.1109/TMI.2019.2900516" in summary["citation"]
    assert "CC BY-NC-SA 4.0" in summary["licence"]
    studies = {s.study_id: s for s in read_manifest(out)}
    assert {p: s.split for p, s in studies.items()} == {
        "patient0001": "train", "patient0002": "val", "patient0003": "test"}
    assert [studies[p].labels for p in EF] == [{"reduced_ef": 1}, {}, {"reduced_ef": 0}]
    first = studies["patient0001"]
    assert (first.age, first.sex) == (54, "F")
    assert {k: (m.value, m.unit) for k, m in first.measurements.items()} == {"lvef": (35.0, "%")}
    assert [(c.view, c.path.name) for c in first.echo] == [
        ("A2C", "patient0001_2CH_half_sequence.nii.gz"), ("A4C", "patient0001_4CH_half_sequence.nii.gz")]
    assert first.echo[0].path.parent == camus_2023 / "database_nifti" / "patient0001"  # the original, not a copy
    image, labels = sequence(1)  # patient0001, 4CH
    video = read_video(first.echo[1].path)
    np.testing.assert_array_equal(video.frames, image.transpose(2, 1, 0))  # [t, y, x]
    assert video.fps == 25 and video.pixel_spacing_mm == pytest.approx((SPACING[1], SPACING[0]))
    mask = read_volume(first.masks["echo:A4C"]).array
    np.testing.assert_array_equal(mask[:, 0], renumbered(labels).transpose(2, 1, 0))  # every frame
    # patient0002: ED and ES label maps on frames 1 and 4, nothing elsewhere
    _, labels = sequence(2)  # patient0002, 2CH
    mask = read_volume(studies["patient0002"].masks["echo:A2C"]).array
    assert mask.shape == (T, 1, Y, X)
    for frame in (ED, ES):
        np.testing.assert_array_equal(mask[frame - 1, 0], renumbered(labels[..., frame - 1]).T)
    assert not mask[[f - 1 for f in range(1, T + 1) if f not in (ED, ES)]].any()
    assert validate_manifest(out, workers=1) == []


def test_metaimage_release(camus_2019, tmp_path, capsys):
    out = tmp_path / "camus.csv"
    assert run_manifest(camus_2019, out) == 2  # the 2019 release states no frame rate
    error = json.loads(capsys.readouterr().out)
    assert error["field"] == "fps" and "--option fps=" in error["error"]
    assert run_manifest(camus_2019, out, "--option", "fps=30") == 0
    capsys.readouterr()
    studies = {s.study_id: s for s in read_manifest(out)}
    assert studies["patient0003"].split == "test" and not studies["patient0003"].masks
    assert not studies["patient0003"].measurements and not studies["patient0003"].labels
    assert {studies[p].split for p in ("patient0001", "patient0002")} <= {"train", "val"}
    second = studies["patient0002"]
    assert second.measurements["lvedv"].value == 120.5 and second.measurements["lvedv"].unit == "mL"
    assert second.measurements["lvesv"].value == pytest.approx(120.5 * 0.53)
    assert (second.age, second.sex, second.labels) == (71, "M", {})
    assert studies["patient0001"].labels == {"reduced_ef": 1}
    image, labels = sequence(1)  # patient0001, 4CH
    video = read_video(studies["patient0001"].echo[1].path)  # the copy with the frame rate
    assert video.fps == pytest.approx(30)
    np.testing.assert_array_equal(video.frames, image.transpose(2, 1, 0))
    assert video.pixel_spacing_mm == pytest.approx((SPACING[1], SPACING[0]))
    mask = read_volume(studies["patient0001"].masks["echo:A4C"]).array
    for frame in (ED, ES):
        np.testing.assert_array_equal(mask[frame - 1, 0], renumbered(labels[..., frame - 1]).T)
    assert validate_manifest(out, workers=1) == []


def test_unknown_label_value_and_missing_info_key(camus_2023, tmp_path, capsys):
    gt = camus_2023 / "database_nifti" / "patient0001" / "patient0001_2CH_half_sequence_gt.nii.gz"
    write_nii(gt, np.full((X, Y, T), 7, np.uint8))
    assert run_manifest(camus_2023, tmp_path / "m.csv") == 2
    error = json.loads(capsys.readouterr().out)
    assert error["file"] == str(gt) and "[7]" in error["error"]
    gt.unlink()  # falls back to the ED and ES label maps, which need the info's ED
    info = gt.parent / "Info_2CH.cfg"
    write_info(info, **{k: v for k, v in INFO_2023.items() if k != "ED"}, EF=35)
    assert run_manifest(camus_2023, tmp_path / "m.csv") == 2
    error = json.loads(capsys.readouterr().out)
    assert error["file"] == str(info) and error["field"] == "ED"


def test_mmcardio_read_on_sequences(camus_2023, tmp_path, capsys):
    nifti = camus_2023 / "database_nifti" / "patient0001" / "patient0001_2CH_half_sequence.nii.gz"
    assert main(["read", str(nifti), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fps"] == 25 and summary["shape"] == [T, Y, X]
    assert summary["pixel_spacing_mm"] == pytest.approx([SPACING[1], SPACING[0]])
    folder = tmp_path / "mhd"
    folder.mkdir()
    mhd = folder / "patient0009_4CH_sequence.mhd"
    write_mhd(mhd, sequence(0)[0])
    assert main(["read", str(mhd), "--json"]) == 2  # no frame rate anywhere
    error = json.loads(capsys.readouterr().out)
    assert error["field"] == "fps" and error["file"] == str(mhd)
    write_info(folder / "Info_4CH.cfg", **INFO_2023)
    assert main(["read", str(mhd), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fps"] == 25 and summary["frame_count"] == T
    assert summary["pixel_spacing_mm"] == pytest.approx([SPACING[1], SPACING[0]])


def test_metaimage_reader(tmp_path):
    image = np.arange(X * Y * 3, dtype=np.uint16).reshape(X, Y, 3) * 97
    for compressed, msb in ((False, True), (True, False)):
        path = tmp_path / f"im_{compressed}.mhd"
        write_mhd(path, image, compressed=compressed, msb=msb)
        read = read_metaimage(path)
        np.testing.assert_array_equal(read.array, image.transpose())  # [t, y, x]
        assert read.spacing == (*SPACING, 1.0)
    local = tmp_path / "local.mha"  # header and data in one file
    header = (tmp_path / "im_False.mhd").read_text().replace("ElementDataFile = im_False.raw", "ElementDataFile = LOCAL")
    local.write_bytes(header.encode() + (tmp_path / "im_False.raw").read_bytes())
    assert read_metaimage(local).array.shape == (3, Y, X)
    raw = tmp_path / "im_False.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(ReaderError, match="truncated") as err:
        read_metaimage(tmp_path / "im_False.mhd")
    assert err.value.field == "DimSize"
    bad = tmp_path / "bad.mhd"
    bad.write_text("ObjectType = Image\nNDims = 2\nDimSize = 4 4\nElementType = MET_BLOB\nElementDataFile = x.raw\n")
    with pytest.raises(ReaderError, match="MET_UCHAR") as err:
        read_metaimage(bad)
    assert err.value.field == "ElementType"
