"""`mmcardio manifest acdc`: a tiny ACDC folder in the re-release's layout (database/training,
database/testing with and without segmentations) read back as a manifest."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mmcardio.cli import main
from mmcardio.datasets.public.common import patient_split
from mmcardio.datasets.readers.nifti import read_nifti
from mmcardio.records import Label
from mmcardio.study import read_manifest
from mmcardio.validation import validate_manifest

SHAPE, PHASES = (8, 8, 3), 4                       # x, y, z voxels; cine phases
PIXDIM, FRAME_MS = (1.5, 1.5, 10.0), 25.0          # mm; ms between phases
VOXEL_ML = 1.5 * 1.5 * 10.0 / 1000.0               # 0.0225 mL
ACDC_RV, ACDC_MYO, ACDC_LV = 1, 2, 3


def write_nifti_xyzt(array: np.ndarray, path) -> None:
    """A NIfTI as the datasets store theirs: (x, y, z[, t]) with pixdim in mm and ms."""
    affine = np.diag([*PIXDIM, 1.0])
    affine[:3, 3] = (-6.0, -6.0, 20.0)
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "msec")
    image.header.set_zooms((*PIXDIM, FRAME_MS)[:array.ndim])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def drawn(counts: dict[int, int]) -> np.ndarray:
    """An (x, y, z) segmentation with `counts[value]` voxels of each value, in sequence."""
    flat, start = np.zeros(np.prod(SHAPE), dtype=np.uint8), 0
    for value, count in counts.items():
        flat[start:start + count] = value
        start += count
    return flat.reshape(SHAPE)


def cine() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 800, (*SHAPE, PHASES)).astype(np.int16)


def write_patient(folder, info: dict, ed: dict | None = None, es: dict | None = None) -> None:
    """One patient folder: Info.cfg, the 4d cine, the ED/ES frames and (given counts) their gt."""
    patient, movie = folder.name, cine()
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text("".join(f"{key}: {value}\n" for key, value in info.items()))
    (folder / "MANDATORY_CITATION.md").write_text("Bernard et al., IEEE TMI 2018\n")
    write_nifti_xyzt(movie, folder / f"{patient}_4d.nii.gz")
    for key, counts in (("ED", ed), ("ES", es)):
        frame = int(info[key])
        write_nifti_xyzt(movie[..., frame - 1], folder / f"{patient}_frame{frame:02d}.nii.gz")
        if counts is not None:
            write_nifti_xyzt(drawn(counts), folder / f"{patient}_frame{frame:02d}_gt.nii.gz")


def info(group: str | None, ed: int = 1, es: int = 3) -> dict:
    fields = {"ED": ed, "ES": es, "Group": group, "Height": 184.0, "NbFrame": PHASES, "Weight": 95.0}
    return {key: value for key, value in fields.items() if value is not None}


#: Voxel counts of the DCM patient's ED and ES segmentations.
ED_COUNTS = {ACDC_LV: 80, ACDC_MYO: 40, ACDC_RV: 40}
ES_COUNTS = {ACDC_LV: 40, ACDC_MYO: 48, ACDC_RV: 24}


@pytest.fixture
def acdc_root(tmp_path):
    data = tmp_path / "ACDC" / "database"
    write_patient(data / "training" / "patient001", info("DCM", ed=1, es=3), ED_COUNTS, ES_COUNTS)
    write_patient(data / "training" / "patient002", info("NOR", ed=1, es=2),
                  {ACDC_LV: 120, ACDC_MYO: 40}, {ACDC_LV: 40, ACDC_MYO: 40})
    write_patient(data / "testing" / "patient101", info("RV", ed=2, es=4), ED_COUNTS, ES_COUNTS)
    write_patient(data / "testing" / "patient102", info(None))  # the 2017 test set: no gt, no group
    return tmp_path / "ACDC"


def test_acdc_manifest_has_official_and_hashed_splits_group_labels_masks_and_volumes(acdc_root, tmp_path, capsys):
    out = tmp_path / "acdc.csv"
    assert main(["manifest", "acdc", str(acdc_root), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "10.1109/TMI.2018.2837502" in summary["citation"]
    studies = {s.study_id: s for s in read_manifest(out)}
    assert sorted(studies) == ["patient001", "patient002", "patient101", "patient102"]
    # testing/ is the official test set; training/ splits by the patient hash (10% val)
    assert {pid: s.split for pid, s in studies.items()} == {
        "patient001": "train", "patient002": "val", "patient101": "test", "patient102": "test"}
    assert all(patient_split(pid, (0.9, 0.1, 0.0)) == studies[pid].split for pid in ("patient001", "patient002"))

    dcm, nor, arv, unlabelled = (studies[p] for p in ("patient001", "patient002", "patient101", "patient102"))
    assert dcm.labels == {"reduced_ef": 1, "lv_dilation": 1}
    assert nor.labels == {"reduced_ef": 0, "lv_dilation": 0, "thick_walls": 0}
    assert arv.labels == {} and unlabelled.labels == {}
    assert dcm.cmr == acdc_root / "database" / "training" / "patient001" / "patient001_4d.nii.gz"
    assert dcm.age is None and dcm.sex is None

    # volumes by hand: voxels x 1.5 x 1.5 x 10 mm3; mass = ED myocardium x 1.05 g/mL
    measured = {name: (m.value, m.unit) for name, m in dcm.measurements.items()}
    assert measured == {"lvedv": (round(80 * VOXEL_ML, 1), "mL"), "lvesv": (round(40 * VOXEL_ML, 1), "mL"),
                        "lvef": (50.0, "%"), "lv_mass": (round(40 * VOXEL_ML * 1.05, 1), "g"),
                        "rvedv": (round(40 * VOXEL_ML, 1), "mL")}
    assert "rvedv" not in nor.measurements and nor.measurements["lvef"].value == pytest.approx(66.7)
    assert unlabelled.masks == {} and unlabelled.measurements == {}

    # the label map: (t, z, y, x) on the cine's grid, ED gt at frame ED - 1, ES gt at ES - 1
    movie, mask = read_nifti(arv.cmr), read_nifti(arv.masks["cmr"])
    assert mask.array.shape == movie.array.shape == (PHASES, 3, 8, 8)
    np.testing.assert_allclose(mask.affine, movie.affine)
    counts = [{label: int(np.count_nonzero(phase == label)) for label in Label if label} for phase in mask.array]
    assert counts[1][Label.LV_CAVITY] == 80 and counts[1][Label.RV_CAVITY] == 40
    assert counts[1][Label.LV_MYOCARDIUM] == 40 and counts[3][Label.LV_CAVITY] == 40
    assert not mask.array[0].any() and not mask.array[2].any()
    assert set(np.unique(mask.array)) == {0, Label.LV_CAVITY, Label.LV_MYOCARDIUM, Label.RV_CAVITY}
    assert validate_manifest(out, workers=1) == []


def test_acdc_original_layout_and_val_share_option(tmp_path):
    root = tmp_path / "acdc_2017"  # the challenge release: training/ and testing/ at the top
    write_patient(root / "training" / "patient002", info("HCM"), ED_COUNTS, ES_COUNTS)
    write_patient(root / "testing" / "patient101", info(None))
    out = tmp_path / "m.csv"
    assert main(["manifest", "acdc", str(root), "--out", str(out), "--json", "--option", "val_share=0"]) == 0
    studies = {s.study_id: s for s in read_manifest(out)}
    assert studies["patient002"].split == "train" and studies["patient101"].split == "test"
    assert studies["patient002"].labels == {"reduced_ef": 0, "thick_walls": 1}


def test_acdc_errors_name_the_file_and_field(acdc_root, tmp_path, capsys):
    cfg = acdc_root / "database" / "training" / "patient001" / "Info.cfg"
    cfg.write_text("ED: 1\nGroup: DCM\n")
    assert main(["manifest", "acdc", str(acdc_root), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "'ES'" in err
    cfg.write_text("ED: 1\nES: 3\nGroup: XYZ\n")
    assert main(["manifest", "acdc", str(acdc_root), "--out", str(tmp_path / "m.csv")]) == 2
    assert "'Group'" in capsys.readouterr().err
