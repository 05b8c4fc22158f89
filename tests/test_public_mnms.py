"""`mmcardio manifest mnms`: a tiny M&Ms OpenDataset (Training/Labeled, Training/Unlabeled,
Validation, Testing and the information table) read back as a manifest."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmcardio.cli import main
from mmcardio.datasets.readers.nifti import read_nifti
from mmcardio.records import Label
from mmcardio.study import read_manifest
from mmcardio.validation import validate_manifest
from tests.test_public_acdc import (
    ED_COUNTS,
    ES_COUNTS,
    PHASES,
    VOXEL_ML,
    cine,
    drawn,
    write_nifti_xyzt,
)

MNMS_LV, MNMS_MYO, MNMS_RV = 1, 2, 3
TABLE = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
#: ED/ES counts in ACDC's values (tests.test_public_acdc) -> the same counts in M&Ms's values.
ACDC_TO_MNMS = {3: MNMS_LV, 2: MNMS_MYO, 1: MNMS_RV}
ED, ES = ({ACDC_TO_MNMS[v]: n for v, n in counts.items()} for counts in (ED_COUNTS, ES_COUNTS))

SUBJECTS = [  # folder, External code, Pathology, Sex, Age, ED, ES (0-based)
    ("Training/Labeled", "A0S9V9", "HCM", "M", 45, 0, 2),
    ("Training/Unlabeled", "B3D0N1", "DCM", "F", 61, 0, 2),
    ("Validation", "C1K6P4", "DCM", "F", 58, 1, 3),
    ("Testing", "D2L5R8", "NOR", "M", 30, 0, 1),
]


def write_subject(base, folder: str, code: str, ed: int, es: int, labelled: bool) -> None:
    """A subject folder: the 4-D cine and its 4-D segmentation, drawn at ED and ES only (an
    Unlabeled subject's is empty, as in the release)."""
    folder = base / folder / code
    write_nifti_xyzt(cine(), folder / f"{code}_sa.nii.gz")
    segmentation = np.zeros((*drawn({}).shape, PHASES), dtype=np.uint8)
    if labelled:
        segmentation[..., ed], segmentation[..., es] = drawn(ED), drawn(ES)
    write_nifti_xyzt(segmentation, folder / f"{code}_sa_gt.nii.gz")


def write_table(base, rows: list[tuple], name: str = TABLE, drop: tuple[str, ...] = ()) -> None:
    frame = pd.DataFrame(
        [{"External code": code, "VendorName": "Siemens", "Vendor": "A", "Centre": 1, "ED": ed, "ES": es,
          "Age": age, "Pathology": pathology, "Sex": sex, "Height": 175.0, "Weight": 80.0}
         for _, code, pathology, sex, age, ed, es in rows]).drop(columns=list(drop))
    frame.to_csv(base / name)  # with the release's leading unnamed index column


@pytest.fixture
def mnms_root(tmp_path):
    base = tmp_path / "MnM" / "OpenDataset"
    for folder, code, _, _, _, ed, es in SUBJECTS:
        write_subject(base, folder, code, ed, es, labelled=folder != "Training/Unlabeled")
    write_table(base, SUBJECTS)
    return tmp_path / "MnM"


def test_mnms_manifest_has_official_splits_pathology_labels_masks_and_volumes(mnms_root, tmp_path, capsys):
    out = tmp_path / "mnms.csv"
    assert main(["manifest", "mnms", str(mnms_root), "--out", str(out), "--json"]) == 0
    assert "10.1109/TMI.2021.3090082" in json.loads(capsys.readouterr().out)["citation"]
    studies = {s.study_id: s for s in read_manifest(out)}
    assert {code: s.split for code, s in studies.items()} == {
        "A0S9V9": "train", "B3D0N1": "train", "C1K6P4": "val", "D2L5R8": "test"}
    hcm, unlabelled, dcm, nor = (studies[code] for code in ("A0S9V9", "B3D0N1", "C1K6P4", "D2L5R8"))
    assert hcm.labels == {"thick_walls": 1} and dcm.labels == unlabelled.labels == {"lv_dilation": 1}
    assert nor.labels == {"reduced_ef": 0, "lv_dilation": 0, "thick_walls": 0}
    assert (hcm.age, hcm.sex, dcm.age, dcm.sex) == (45.0, "M", 58.0, "F")
    base = mnms_root / "OpenDataset"
    assert hcm.cmr == base / "Training" / "Labeled" / "A0S9V9" / "A0S9V9_sa.nii.gz"

    # volumes by hand: voxels x 1.5 x 1.5 x 10 mm3 at the table's ED and ES
    measured = {name: (m.value, m.unit) for name, m in dcm.measurements.items()}
    assert measured == {"lvedv": (round(80 * VOXEL_ML, 1), "mL"), "lvesv": (round(40 * VOXEL_ML, 1), "mL"),
                        "lvef": (50.0, "%"), "lv_mass": (round(40 * VOXEL_ML * 1.05, 1), "g"),
                        "rvedv": (round(40 * VOXEL_ML, 1), "mL")}
    assert unlabelled.masks == {} and unlabelled.measurements == {}

    # the renumbered label map: the cine's grid, drawn at ED (1) and ES (3) only
    movie, mask = read_nifti(dcm.cmr), read_nifti(dcm.masks["cmr"])
    assert mask.array.shape == movie.array.shape == (PHASES, 3, 8, 8)
    np.testing.assert_allclose(mask.affine, movie.affine)
    assert np.count_nonzero(mask.array[1] == Label.LV_CAVITY) == 80
    assert np.count_nonzero(mask.array[1] == Label.RV_CAVITY) == 40
    assert np.count_nonzero(mask.array[3] == Label.LV_MYOCARDIUM) == 48
    assert not mask.array[0].any() and not mask.array[2].any()
    assert validate_manifest(out, workers=1) == []


def test_mnms_older_table_without_diagnosis_gives_no_labels(tmp_path):
    base = tmp_path / "OpenDataset"  # ROOT is the OpenDataset folder itself
    write_subject(base, "Training/Labeled", "A0S9V9", 0, 2, labelled=True)
    write_table(base, SUBJECTS[:1], "201014_M&Ms_Dataset_Information_-_opendataset.csv",
                drop=("Age", "Pathology", "Sex", "Height", "Weight"))
    out = tmp_path / "m.csv"
    assert main(["manifest", "mnms", str(base), "--out", str(out), "--json"]) == 0
    (study,) = read_manifest(out)
    assert study.labels == {} and study.age is None and study.measurements["lvef"].value == 50.0


def test_mnms_errors_name_the_table_and_column(mnms_root, tmp_path, capsys):
    base = mnms_root / "OpenDataset"
    write_table(base, SUBJECTS, drop=("ED",))
    assert main(["manifest", "mnms", str(mnms_root), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert TABLE in err and "'ED'" in err
    # 1-based phase numbers would point at undrawn phases: refused, not measured
    write_table(base, [(*row[:5], row[5] + 1, row[6] + 1) for row in SUBJECTS])
    assert main(["manifest", "mnms", str(mnms_root), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert TABLE in err and "'ED'" in err and "A0S9V9" in err
