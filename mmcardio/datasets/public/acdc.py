"""ACDC, the Automated Cardiac Diagnosis Challenge (MICCAI 2017): short-axis cine CMR of 150
patients of the University Hospital of Dijon (100 training, 50 testing) in five groups of
equal size, with expert segmentations of the LV cavity, LV myocardium and RV cavity at ED and ES.

Citation (mandatory for any use): O. Bernard, A. Lalande, C. Zotti, F. Cervenansky et al., "Deep
Learning Techniques for Automatic MRI Cardiac Multi-structures Segmentation and Diagnosis: Is the
Problem Solved?", IEEE Transactions on Medical Imaging 37(11):2514-2525, 2018,
doi:10.1109/TMI.2018.2837502.
Licence: research use under the ACDC challenge's terms, citing the paper; the 2023 re-release on
the Creatis "Human Heart Project" platform is distributed under CC BY-NC-SA 4.0 (non-commercial,
share alike). Get it from https://www.creatis.insa-lyon.fr/Challenge/acdc/ (which links the
re-release, https://humanheart-project.creatis.insa-lyon.fr/database/).

Layout; ROOT is the folder holding training/ and testing/, or the re-release's folder holding
database/ (both releases name the files alike):

    [database/]training/patient001/Info.cfg        "ED: 1", "ES: 12", "Group: DCM", "Height: 184.0",
                                                   "NbFrame: 30", "Weight: 95.0"
                       patient001/patient001_4d.nii.gz           the cine, (x, y, z, t)
                       patient001/patient001_frame01.nii.gz      the ED phase (frame number = ED)
                       patient001/patient001_frame01_gt.nii.gz   its segmentation (x, y, z)
                       patient001/patient001_frame12[_gt].nii.gz the ES phase and its segmentation
                       patient001/MANDATORY_CITATION.md          (re-release only; not read)
    [database/]testing/patient101/...                            the same

The 2017 challenge release has neither *_gt files nor a Group for the testing patients; the
2023 re-release has both for all 150. Segmentation values: 0 background, 1 RV cavity,
2 LV myocardium, 3 LV cavity (`ACDC_LABELS`).

What the manifest gets, per patient (one study each):
- cmr: the 4d cine (`read_nifti` gives (t, z, y, x)). ED and ES of Info.cfg are 1-based frame
  numbers (patient001_frame01 is the cine's first phase), so their phase index is ED - 1.
- masks["cmr"]: the ED and ES segmentations renumbered into `records.Label` and put at their
  phases of a (t, z, y, x) map on the cine's grid and affine (other phases 0), written to
  files_dir/<patient>_sa_labels.nii.gz; only where the patient has both segmentations.
- measurements from those masks (`cmr_masks.measure_phases`, voxel counts x voxel volume):
  lvedv, lvesv, lvef, lv_mass (ED myocardium x 1.05 g/mL), rvedv.
- split: testing/ -> test (the official split); training/ -> train, except a share of its
  patients (option val_share, default 0.1) drawn as val by `common.patient_split` from a hash
  of the patient id: patient-disjoint and the same on every run (not stratified by group).
- labels from Group by the groups' definitions (`GROUP_LABELS`); none without a Group.
- no age or sex (ACDC has neither); Height and Weight have no manifest column and are not read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmcardio.datasets.public import Recipe
from mmcardio.datasets.public.cmr_masks import check_aligned, measure_phases, write_label_map
from mmcardio.datasets.public.common import patient_split, renumber_labels
from mmcardio.datasets.readers.info_file import info_number, read_info_cfg
from mmcardio.datasets.readers.nifti import read_nifti
from mmcardio.errors import ManifestError
from mmcardio.records import Label, Measurement
from mmcardio.study import Study

#: ACDC segmentation value -> `records.Label`.
ACDC_LABELS = {0: Label.BACKGROUND, 1: Label.RV_CAVITY, 2: Label.LV_MYOCARDIUM, 3: Label.LV_CAVITY}

#: Findings each Group settles by its definition (Bernard et al. 2018 and the challenge's
#: classification rules page); a finding its definition leaves open is absent, not 0.
#: The package's thresholds: reduced_ef LVEF < 40%, thick_walls >= 13 mm; lv_dilation is taken
#: from ACDC's own (body-surface indexed) LV volume threshold.
GROUP_LABELS = {
    # normal subjects: normal anatomy and function (LVEF > 50%, diastolic wall < 12 mm)
    "NOR": {"reduced_ef": 0, "lv_dilation": 0, "thick_walls": 0},
    # previous infarction: LVEF < 40% and several segments contracting abnormally; the LV may be
    # dilated or locally thickened (the rules put such patients here), so those stay open
    "MINF": {"reduced_ef": 1},
    # dilated cardiomyopathy: LVEF < 40% and LV diastolic volume > 100 mL/m2; wall not defined
    "DCM": {"reduced_ef": 1, "lv_dilation": 1},
    # hypertrophic cardiomyopathy: LVEF > 55%, several segments > 15 mm thick in diastole,
    # LV mass > 110 g/m2; LV volume not defined
    "HCM": {"reduced_ef": 0, "thick_walls": 1},
    # abnormal right ventricle: RV volume > 110 mL/m2 or RVEF < 40%; nothing said of the LV
    "RV": {},
}
#: Other spellings of a Group (the paper calls the RV group "ARV").
GROUP_ALIASES = {"ARV": "RV"}
DEFAULT_VAL_SHARE = 0.1


def build(root: Path, files_dir: Path, progress: bool = False, limit: int | None = None,
          val_share: str = str(DEFAULT_VAL_SHARE)) -> list[Study]:
    base, share = dataset_folder(root), parse_share(val_share)
    patients = [p for part in ("training", "testing") for p in sorted((base / part).glob("patient*"))
                if p.is_dir()][:limit]
    return [patient_study(folder, files_dir, share)
            for folder in tqdm(patients, desc="acdc", unit="patient", disable=not progress)]


def dataset_folder(root: Path) -> Path:
    """ROOT itself or its database/ folder (the re-release), whichever holds training/ or testing/."""
    for base in (root, root / "database"):
        if (base / "training").is_dir() or (base / "testing").is_dir():
            return base
    raise ManifestError("expected ACDC's training/ and testing/ folders here or in database/", root, "ROOT")


def parse_share(value: str) -> float:
    """The val_share option: a share of the training patients, in [0, 1)."""
    try:
        if 0 <= float(value) < 1:
            return float(value)
    except ValueError:
        pass
    raise ManifestError(f"expected a share of patients in [0, 1), got {value!r}", field="--option val_share")


def patient_study(folder: Path, files_dir: Path, val_share: float) -> Study:
    patient, cfg = folder.name, folder / "Info.cfg"
    info = read_info_cfg(cfg)
    frames = {which: int(info_number(info, which, cfg)) for which in ("ED", "ES")}
    cine = folder / f"{patient}_4d.nii.gz"
    if not cine.is_file():
        raise ManifestError("expected the patient's 4-D cine here", cine)
    split = "test" if folder.parent.name == "testing" else patient_split(patient, (1 - val_share, val_share, 0))
    study = Study(study_id=patient, patient_id=patient, split=split, cmr=cine, labels=group_labels(info, cfg))
    segmentations = {which: folder / f"{patient}_frame{number:02d}_gt.nii.gz" for which, number in frames.items()}
    missing = [path for path in segmentations.values() if not path.is_file()]
    if len(missing) == 1:
        raise ManifestError("expected the segmentations of both ED and ES; this one is missing", missing[0])
    if not missing:
        study.masks["cmr"], study.measurements = expert_masks(
            cine, frames, segmentations, cfg, files_dir / f"{patient}_sa_labels.nii.gz")
    return study


def expert_masks(cine_path: Path, frames: dict[str, int], segmentations: dict[str, Path], cfg: Path,
                 out: Path) -> tuple[Path, dict[str, Measurement]]:
    """The ED and ES segmentations as one label map on the cine's grid, and their measurements."""
    cine = read_nifti(cine_path, "cmr")
    labels = np.zeros(cine.array.shape, dtype=np.uint8)
    for which, number in frames.items():
        if not 1 <= number <= len(labels):
            raise ManifestError(f"frame {number} is not among the cine's {len(labels)} frames (numbered "
                                "from 1)", cfg, which)
        segmentation = read_nifti(segmentations[which], "cmr")
        check_aligned(cine, segmentation, segmentations[which])
        labels[number - 1] = renumber_labels(segmentation.array, ACDC_LABELS, segmentations[which])
    measurements = measure_phases(labels, frames["ED"] - 1, frames["ES"] - 1, cine.spacing_mm, segmentations)
    return write_label_map(cine, labels, out), measurements


def group_labels(info: dict[str, str], cfg: Path) -> dict[str, int]:
    if "Group" not in info:  # the 2017 release's testing patients
        return {}
    group = info["Group"].strip().upper()
    group = GROUP_ALIASES.get(group, group)
    if group not in GROUP_LABELS:
        raise ManifestError(f"unknown group {info['Group']!r}; ACDC's are {sorted(GROUP_LABELS)}", cfg, "Group")
    return dict(GROUP_LABELS[group])


RECIPE = Recipe(
    name="acdc", title="ACDC (Automated Cardiac Diagnosis Challenge)", modality="cmr",
    fills="splits (testing/ official test; val drawn from training/), cine CMR, ED/ES label maps, "
          "LV/RV volumes, LVEF and LV mass from the expert masks, labels from the diagnostic group",
    citation="O. Bernard, A. Lalande, C. Zotti, F. Cervenansky et al., Deep Learning Techniques for "
             "Automatic MRI Cardiac Multi-structures Segmentation and Diagnosis: Is the Problem Solved?, "
             "IEEE Trans. Med. Imaging 37(11):2514-2525, 2018, doi:10.1109/TMI.2018.2837502",
    licence="ACDC challenge terms (research use, citing the paper); the 2023 Human Heart Project "
            "re-release: CC BY-NC-SA 4.0",
    url="https://www.creatis.insa-lyon.fr/Challenge/acdc/",
    build=build,
    options={"val_share": f"share of the training/ patients drawn as val by a hash of the patient id "
                          f"(default {DEFAULT_VAL_SHARE}; 0 for none)"},
)
