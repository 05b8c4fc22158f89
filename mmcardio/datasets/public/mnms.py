"""M&Ms, the Multi-Centre, Multi-Vendor & Multi-Disease Cardiac Image Segmentation Challenge
(MICCAI 2020): short-axis cine CMR of 375 subjects from six hospitals in Spain, Germany and
Canada on four scanner vendors (A Siemens, B Philips, C GE, D Canon), 345 of them in the open
dataset, with expert segmentations of the LV cavity, LV myocardium and RV cavity at ED and ES.

Citation: V. M. Campello, P. Gkontra, C. Izquierdo, C. Martin-Isla et al., "Multi-Centre,
Multi-Vendor and Multi-Disease Cardiac Segmentation: The M&Ms Challenge", IEEE Transactions on
Medical Imaging 40(12):3543-3554, 2021, doi:10.1109/TMI.2021.3090082.
Licence: CC BY-NC-SA 4.0 as stated on the challenge site (non-commercial, share alike, cite the
paper). Get it from https://www.ub.edu/mnms/ (the "OpenDataset" download).

Layout; ROOT is the OpenDataset folder or the folder holding it:

    OpenDataset/211230_M&Ms_Dataset_information_diagnosis_opendataset.csv   (found by the pattern
                *M&Ms_Dataset_Information*.csv; the newest by name when several)
    OpenDataset/Training/Labeled/A0S9V9/A0S9V9_sa.nii.gz      the cine, (x, y, z, t)
    OpenDataset/Training/Labeled/A0S9V9/A0S9V9_sa_gt.nii.gz   its segmentation, the same shape,
                                                              drawn at the ED and ES phases only
    OpenDataset/Training/Unlabeled/<code>/<code>_sa.nii.gz    Vendor C training cines without
                                                              segmentation (a _gt file there is not read)
    OpenDataset/Validation/<code>/<code>_sa[_gt].nii.gz
    OpenDataset/Testing/<code>/<code>_sa[_gt].nii.gz

The information table: a leading unnamed index column, then External code, VendorName, Vendor,
Centre, ED, ES, Age, Pathology, Sex, Height, Weight. ED and ES are 0-based phase indices of the
cine (the recipe checks that the segmentation is drawn at both). Earlier releases' tables
(e.g. 201014_M&Ms_Dataset_Information_-_opendataset.csv) end at ES, without the diagnosis
columns: their studies get no age, sex or labels. Segmentation values: 0 background, 1 LV
cavity (blood pool), 2 LV myocardium, 3 RV cavity (`MNMS_LABELS`).

What the manifest gets, per subject (one study each):
- split: Training/ (Labeled and Unlabeled) -> train, Validation/ -> val, Testing/ -> test: the
  challenge's own split (one study per subject, so patient-disjoint).
- cmr: the cine; masks["cmr"]: the segmentation renumbered into `records.Label` (already a
  (t, z, y, x) map aligned with the cine), written to files_dir/<code>_sa_labels.nii.gz.
- measurements from the masks at the table's ED and ES (`cmr_masks.measure_phases`): lvedv,
  lvesv, lvef, lv_mass (ED myocardium x 1.05 g/mL), rvedv. Unlabeled subjects get neither.
- age (Age, years) and sex (Sex, M or F); Height and Weight have no manifest column.
- labels from Pathology (`PATHOLOGY_LABELS`).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from mmcardio.datasets.public import Recipe
from mmcardio.datasets.public.cmr_masks import check_aligned, measure_phases, write_label_map
from mmcardio.datasets.public.common import read_table, renumber_labels
from mmcardio.datasets.readers.nifti import read_nifti
from mmcardio.errors import ManifestError
from mmcardio.records import Label, Measurement
from mmcardio.study import SEXES, Study

#: M&Ms segmentation value -> `records.Label`.
MNMS_LABELS = {0: Label.BACKGROUND, 1: Label.LV_CAVITY, 2: Label.LV_MYOCARDIUM, 3: Label.RV_CAVITY}

#: Findings each Pathology settles. The consortium publishes the diagnoses (the centres'
#: clinical ones) without criteria of its own, so a finding is set only where the diagnosis's
#: standard definition implies it; every other finding is absent, not 0.
PATHOLOGY_LABELS = {
    # healthy subjects: normal LV size, function and wall thickness
    "NOR": {"reduced_ef": 0, "lv_dilation": 0, "thick_walls": 0},
    # hypertrophic cardiomyopathy: LV wall >= 15 mm in some segment (ESC 2014), above the
    # package's 13 mm; EF and size vary (end-stage HCM dilates and fails)
    "HCM": {"thick_walls": 1},
    # dilated cardiomyopathy: LV dilatation with systolic dysfunction (ESC); dysfunction is not
    # necessarily an LVEF < 40%, so reduced_ef stays open
    "DCM": {"lv_dilation": 1},
    # hypertensive heart disease, abnormal right ventricle, athlete's heart, ischaemic heart
    # disease, LV non-compaction, other: no LV finding follows from the diagnosis alone
    "HHD": {}, "ARV": {}, "AHS": {}, "IHD": {}, "LVNC": {}, "OTHER": {},
}
#: Folders of the open dataset: (folder, split, whether its segmentations are drawn).
FOLDERS = (("Training/Labeled", "train", True), ("Training/Unlabeled", "train", False),
           ("Validation", "val", True), ("Testing", "test", True))
CODE, PHASES = "External code", ("ED", "ES")
#: The information table of the latest release, and what every release's has in its name.
TABLE_NAME, TABLE_PATTERN = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv", "m&ms_dataset_information"


def build(root: Path, files_dir: Path, progress: bool = False, limit: int | None = None) -> list[Study]:
    base = dataset_folder(root)
    table = information_table(base, root)
    subjects = [(folder, split, drawn) for sub, split, drawn in FOLDERS
                for folder in sorted((base / sub).glob("*")) if folder.is_dir()][:limit]
    return [subject_study(folder, split, drawn, table, files_dir)
            for folder, split, drawn in tqdm(subjects, desc="mnms", unit="subject", disable=not progress)]


def dataset_folder(root: Path) -> Path:
    """ROOT itself or its OpenDataset/ folder, whichever holds the challenge's folders."""
    for base in (root, root / "OpenDataset"):
        if any((base / sub).is_dir() for sub in ("Training", "Validation", "Testing")):
            return base
    raise ManifestError("expected M&Ms's Training/, Validation/ and Testing/ folders here or in "
                        "OpenDataset/", root, "ROOT")


def information_table(base: Path, root: Path) -> pd.DataFrame:
    """The newest information table in the dataset's folder or ROOT (the date leads its name),
    indexed by External code, with its path in `attrs["path"]`."""
    found = [p for folder in {base, root} for p in folder.glob("*.csv") if TABLE_PATTERN in p.name.lower()]
    path = max(found, key=lambda p: p.name) if found else base / TABLE_NAME
    table = read_table(path, (CODE, *PHASES), dtype={CODE: str})
    table[CODE] = table[CODE].str.strip()
    repeated = sorted(set(table[CODE][table[CODE].duplicated()]))
    if repeated:
        raise ManifestError(f"subjects {repeated} have more than one row", path, CODE)
    table = table.set_index(CODE)
    table.attrs["path"] = path
    return table


def subject_study(folder: Path, split: str, drawn: bool, table: pd.DataFrame, files_dir: Path) -> Study:
    code, path = folder.name, table.attrs["path"]
    if code not in table.index:
        raise ManifestError(f"subject {code} (folder {folder}) has no row", path, CODE)
    row = table.loc[code]
    cine = folder / f"{code}_sa.nii.gz"
    if not cine.is_file():
        raise ManifestError("expected the subject's 4-D cine here", cine)
    study = Study(study_id=code, patient_id=code, split=split, cmr=cine, age=number(row, "Age", path),
                  sex=sex(row, path), labels=pathology_labels(row, path))
    segmentation = folder / f"{code}_sa_gt.nii.gz"
    if drawn and segmentation.is_file():
        phases = {which: int(number(row, which, path, required=True)) for which in PHASES}
        study.masks["cmr"], study.measurements = expert_masks(
            cine, segmentation, phases, path, files_dir / f"{code}_sa_labels.nii.gz")
    return study


def expert_masks(cine_path: Path, segmentation_path: Path, phases: dict[str, int], table: Path,
                 out: Path) -> tuple[Path, dict[str, Measurement]]:
    """The segmentation renumbered on the cine's grid, and its measurements at ED and ES."""
    cine, segmentation = read_nifti(cine_path, "cmr"), read_nifti(segmentation_path, "cmr")
    check_aligned(cine, segmentation, segmentation_path)
    labels = renumber_labels(segmentation.array, MNMS_LABELS, segmentation_path)
    drawn_at = [int(t) for t in range(len(labels)) if labels[t].any()]
    for which, phase in phases.items():
        if phase not in drawn_at:
            raise ManifestError(f"subject {segmentation_path.parent.name}: phase index {phase} (0-based) is "
                                f"not drawn in {segmentation_path.name}, which draws {drawn_at}", table, which)
    measurements = measure_phases(labels, phases["ED"], phases["ES"], cine.spacing_mm,
                                  dict.fromkeys(PHASES, segmentation_path))
    return write_label_map(cine, labels, out), measurements


def number(row: pd.Series, column: str, path: Path, required: bool = False) -> float | None:
    value = row.get(column)
    if value is None or pd.isna(value):
        if required:
            raise ManifestError(f"subject {row.name}: empty; expected a number", path, column)
        return None
    try:
        return float(value)
    except ValueError:
        raise ManifestError(f"subject {row.name}: expected a number, got {value!r}", path, column) from None


def sex(row: pd.Series, path: Path) -> str | None:
    value = row.get("Sex")
    if value is None or pd.isna(value):
        return None
    if str(value).strip().upper() not in SEXES:
        raise ManifestError(f"subject {row.name}: expected one of {SEXES}, got {value!r}", path, "Sex")
    return str(value).strip().upper()


def pathology_labels(row: pd.Series, path: Path) -> dict[str, int]:
    value = row.get("Pathology")
    if value is None or pd.isna(value):  # earlier releases' tables have no Pathology
        return {}
    if str(value).strip().upper() not in PATHOLOGY_LABELS:
        raise ManifestError(f"subject {row.name}: unknown pathology {value!r}; M&Ms's are "
                            f"{sorted(PATHOLOGY_LABELS)}", path, "Pathology")
    return dict(PATHOLOGY_LABELS[str(value).strip().upper()])


RECIPE = Recipe(
    name="mnms", title="M&Ms (Multi-Centre, Multi-Vendor & Multi-Disease Cardiac Segmentation)",
    modality="cmr",
    fills="official splits, cine CMR, ED/ES label maps, LV/RV volumes, LVEF and LV mass from the "
          "expert masks, age, sex, labels from the pathology",
    citation="V. M. Campello, P. Gkontra, C. Izquierdo, C. Martin-Isla et al., Multi-Centre, Multi-Vendor "
             "and Multi-Disease Cardiac Segmentation: The M&Ms Challenge, IEEE Trans. Med. Imaging "
             "40(12):3543-3554, 2021, doi:10.1109/TMI.2021.3090082",
    licence="CC BY-NC-SA 4.0 (per the challenge site)",
    url="https://www.ub.edu/mnms/",
    build=build,
)
