"""CAMUS: apical two- and four-chamber echo sequences (end-diastole to end-systole) of 500
patients, with expert label maps of the LV cavity, LV myocardium and left atrium.

Citation: S. Leclerc, E. Smistad, J. Pedrosa, A. Ostvik, F. Cervenansky, F. Espinosa, T. Espeland,
E. A. R. Berg, P.-M. Jodoin, T. Grenier, C. Lartizien, J. D'hooge, L. Lovstakken, O. Bernard,
"Deep Learning for Segmentation using an Open Large-Scale Dataset in 2D Echocardiography",
IEEE Transactions on Medical Imaging 38(9), 2198-2210 (2019), doi:10.1109/TMI.2019.2900516.
Licence: the 2023 public release on the Creatis "Human Heart Project" platform is distributed
under CC BY-NC-SA 4.0 (non-commercial, share alike, cite the paper); the 2019 challenge release
under the CAMUS challenge's terms of use (research use, cite the paper). Get it at
https://www.creatis.insa-lyon.fr/Challenge/camus/ (registration on
https://humanheart-project.creatis.insa-lyon.fr/).

Layouts (VIEW is 2CH or 4CH; ROOT is the unpacked top folder):
- 2023 NIfTI release (CAMUS_public):
    ROOT/database_nifti/patient0001/patient0001_VIEW_half_sequence.nii.gz   (x, y, t)
    ROOT/database_nifti/patient0001/patient0001_VIEW_half_sequence_gt.nii.gz  every frame
    ROOT/database_nifti/patient0001/patient0001_VIEW_{ED,ES}[_gt].nii.gz
    ROOT/database_nifti/patient0001/Info_VIEW.cfg   ED, ES, NbFrame, Sex, Age, ImageQuality,
                                                    EF, FrameRate
    ROOT/database_split/subgroup_{training,validation,testing}.txt   one patient a line
- 2019 challenge release (MetaImage, .mhd header + .raw data):
    ROOT/training/patient0001/patient0001_VIEW_sequence.mhd   (x, y, t)
    ROOT/training/patient0001/patient0001_VIEW_{ED,ES}[_gt].mhd
    ROOT/training/patient0001/Info_VIEW.cfg   ED, ES, NbFrame, Sex, Age, ImageQuality, LVedv,
                                              LVesv, LVef
    ROOT/testing/patient0451/...   the same without _gt files (and without the volumes)
ED and ES in the info files are 1-based frame numbers of the sequence.

What the manifest gets, one study per patient (study_id = patient_id = the folder name):
- split: the official database_split lists when present; else for the 2019 release "test" for
  testing/ and `common.patient_split` over train/val for training/; else `patient_split`.
- echo: the sequence of each view ("2CH" -> "A2C", "4CH" -> "A4C"), read by `read_video`
  (grey uint8 frames [t, y, x], pixel spacing from the header, frame rate from the info file's
  FrameRate beside it). The 2019 release states no frame rate anywhere: there the option
  fps=HZ must be given, and each sequence is copied with that frame rate into a NIfTI
  (x, y, 1, t) under the manifest's files folder, which the manifest names instead.
- masks["echo:A2C"], masks["echo:A4C"]: (t, 1, y, x) label maps aligned with the sequence,
  CAMUS values renumbered (CAMUS_LABELS): the _sequence_gt of every frame when the release has
  it, else the ED and ES label maps on the ED and ES frames and 0 elsewhere; none without gt.
- measurements lvedv, lvesv (mL), lvef (%) from the info file (INFO_MEASUREMENTS; 4CH first,
  both views state the patient's biplane values); age and sex from it.
- labels: reduced_ef from the EF as EchoNet's recipe maps it (`common.reduced_ef_labels`:
  1 below 40 %, 0 from 52 %, none in 40-51 %); nothing else (ImageQuality is not a finding).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmcardio.datasets.public import Recipe
from mmcardio.datasets.public.common import patient_split, reduced_ef_labels, renumber_labels
from mmcardio.datasets.readers.info_file import info_number, read_info_cfg
from mmcardio.datasets.readers.video import read_frames
from mmcardio.datasets.synthetic.findings import UNITS
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.errors import ManifestError
from mmcardio.records import Label, Measurement, Volume
from mmcardio.study import EchoClip, Study

#: CAMUS view -> manifest view.
VIEWS = {"2CH": "A2C", "4CH": "A4C"}
#: CAMUS label value -> `Label` (paper, section II-B: 1 LV endocardium, 2 epicardium, 3 atrium).
CAMUS_LABELS = {0: Label.BACKGROUND, 1: Label.LV_CAVITY, 2: Label.LV_MYOCARDIUM, 3: Label.LA_CAVITY}
#: manifest measurement -> info-file keys (2019 release, 2023 release).
INFO_MEASUREMENTS = {"lvedv": ("LVedv",), "lvesv": ("LVesv",), "lvef": ("LVef", "EF")}
SPLIT_FILES = {"train": "subgroup_training.txt", "val": "subgroup_validation.txt", "test": "subgroup_testing.txt"}
#: release folder -> (file suffix, sequence name, split of the folder or None).
RELEASES = {
    "database_nifti": (".nii.gz", "half_sequence", None),
    "training": (".mhd", "sequence", None),
    "testing": (".mhd", "sequence", "test"),
}


def build(root: Path, files_dir: Path, progress: bool = False, limit: int | None = None,
          fps: str | None = None) -> list[Study]:
    frame_rate = _frame_rate_option(fps)
    official = read_official_split(root)
    found = [(folder, patient) for folder in RELEASES if (root / folder).is_dir()
             for patient in sorted((root / folder).glob("patient*")) if patient.is_dir()]
    if not found:
        raise ManifestError(f"no patient folder under {' or '.join(RELEASES)}", root, "ROOT")
    found = found[:limit] if limit is not None else found
    return [study_of(patient, folder, split_of(patient.name, folder, official, root), files_dir, frame_rate)
            for folder, patient in tqdm(found, desc="camus", unit="patient", disable=not progress)]


def read_official_split(root: Path) -> dict[str, str] | None:
    """patient -> split from database_split/ (2023 release), or None when it is absent."""
    folder = root / "database_split"
    if not folder.is_dir():
        return None
    split_of = {}
    for split, name in SPLIT_FILES.items():
        if not (folder / name).is_file():
            raise ManifestError("expected the official split list here", folder / name)
        for line in (folder / name).read_text(encoding="utf-8").split():
            split_of[line.strip()] = split
    return split_of


def split_of(patient: str, folder: str, official: dict[str, str] | None, root: Path) -> str:
    if official is not None:
        if patient not in official:
            raise ManifestError(f"patient {patient} is in none of the lists", root / "database_split", "split")
        return official[patient]
    folder_split = RELEASES[folder][2]
    if folder_split:
        return folder_split
    return patient_split(patient, shares=(0.9, 0.1, 0.0)) if folder == "training" else patient_split(patient)


def study_of(patient_dir: Path, folder: str, split: str, files_dir: Path, fps: float | None) -> Study:
    patient = patient_dir.name
    study = Study(study_id=patient, patient_id=patient, split=split)
    infos = []
    for camus_view, view in VIEWS.items():
        info_path = patient_dir / f"Info_{camus_view}.cfg"
        if not info_path.is_file():
            continue
        info = read_info_cfg(info_path)
        infos.append((info, info_path))
        clip, mask = view_files(patient_dir, camus_view, RELEASES[folder], info, info_path, files_dir, fps)
        study.echo.append(EchoClip(clip, view))
        if mask is not None:
            study.masks[f"echo:{view}"] = mask
    if not infos:
        raise ManifestError("expected Info_2CH.cfg or Info_4CH.cfg in the patient's folder", patient_dir)
    for info, info_path in reversed(infos):  # 4CH first
        for key, names in INFO_MEASUREMENTS.items():
            name = next((n for n in names if n in info), None)
            if name and key not in study.measurements:
                study.measurements[key] = Measurement(info_number(info, name, info_path), UNITS[key])
        if study.age is None and "Age" in info:
            study.age = info_number(info, "Age", info_path)
        if study.sex is None and info.get("Sex", "").strip()[:1].upper() in ("F", "M"):
            study.sex = info["Sex"].strip()[:1].upper()
    if "lvef" in study.measurements:
        study.labels = reduced_ef_labels(study.measurements["lvef"].value)
    return study


def view_files(patient_dir: Path, view: str, release: tuple, info: dict[str, str], info_path: Path,
               files_dir: Path, fps: float | None) -> tuple[Path, Path | None]:
    """(the clip the manifest names, the label map written under files_dir or None) of a view."""
    suffix, sequence_name, _ = release
    stem = f"{patient_dir.name}_{view}"
    sequence = patient_dir / f"{stem}_{sequence_name}{suffix}"
    if not sequence.is_file():
        raise ManifestError(f"expected the {view} sequence beside {info_path.name}", sequence)
    frames, spacing, _ = read_frames(sequence)
    clip = sequence if "FrameRate" in info else with_frame_rate(sequence, frames, spacing, fps, files_dir, stem)
    labels = label_map(patient_dir, stem, suffix, sequence_name, frames.shape, info, info_path)
    if labels is None:
        return clip, None
    files_dir.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, spacing[0], spacing[1], 1.0])  # index (z, y, x) -> mm, the sequence's spacing
    return clip, write_nifti(labels, files_dir / f"{stem}_labels.nii.gz", affine)


def label_map(patient_dir: Path, stem: str, suffix: str, sequence_name: str, shape: tuple, info: dict[str, str],
              info_path: Path) -> np.ndarray | None:
    """(t, 1, y, x) `Label` values aligned with the sequence, or None when the view has no gt."""
    every_frame = patient_dir / f"{stem}_{sequence_name}_gt{suffix}"
    if every_frame.is_file():
        return _renumbered(every_frame, shape)[:, None]
    phases = {phase: patient_dir / f"{stem}_{phase}_gt{suffix}" for phase in ("ED", "ES")}
    if not any(path.is_file() for path in phases.values()):
        return None
    labels = np.zeros((shape[0], 1, *shape[1:]), dtype=np.uint8)
    for phase, path in phases.items():
        frame = int(info_number(info, phase, info_path))
        if not 1 <= frame <= shape[0]:
            raise ManifestError(f"frame {frame} is not in the sequence's 1..{shape[0]}", info_path, phase)
        labels[frame - 1, 0] = _renumbered(path, (1, *shape[1:]))[0]
    return labels


def _renumbered(path: Path, shape: tuple) -> np.ndarray:
    labels = read_frames(path)[0]
    if labels.shape != tuple(shape):
        raise ManifestError(f"label map of {labels.shape[::-1]} (x, y, t) does not match the sequence's "
                            f"{tuple(shape)[::-1]}", path, "dim")
    return renumber_labels(labels, CAMUS_LABELS, path)


def with_frame_rate(sequence: Path, frames: np.ndarray, spacing: tuple[float, float], fps: float | None,
                    files_dir: Path, stem: str) -> Path:
    """A NIfTI (x, y, 1, t) copy of a sequence whose release states no frame rate, with `fps`."""
    if fps is None:
        raise ManifestError("this release states no frame rate (its info files have no FrameRate); give "
                            "--option fps=HZ, or use the 2023 NIfTI release, which states it", sequence, "fps")
    files_dir.mkdir(parents=True, exist_ok=True)
    volume = Volume(array=frames[:, None], spacing_mm=(1.0, *spacing), affine=np.diag([1.0, *spacing, 1.0]),
                    frame_times_ms=[index * 1000.0 / fps for index in range(len(frames))], modality="echo")
    return write_nifti(volume, files_dir / f"{stem}_sequence.nii.gz")


def _frame_rate_option(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not math.isfinite(rate) or rate <= 0:
        raise ManifestError(f"expected a positive frame rate in Hz, got {value!r}", field="fps")
    return rate


RECIPE = Recipe(
    name="camus", title="CAMUS", modality="echo",
    fills="official splits (2023) or training/testing; A2C and A4C sequences; LV cavity, myocardium and "
          "left atrium label maps; lvedv, lvesv, lvef; reduced_ef; age, sex",
    citation="Leclerc S, Smistad E, Pedrosa J, et al. Deep Learning for Segmentation using an Open "
             "Large-Scale Dataset in 2D Echocardiography. IEEE Trans Med Imaging 38(9):2198-2210 (2019). "
             "doi:10.1109/TMI.2019.2900516",
    licence="CC BY-NC-SA 4.0 (2023 release on the Creatis Human Heart Project platform); the CAMUS "
            "challenge terms of use (2019 release)",
    url="https://www.creatis.insa-lyon.fr/Challenge/camus/",
    build=build,
    options={"fps": "frame rate in Hz of every clip, for a release that states none (the 2019 MetaImage "
                    "release); the sequences are then copied with it; default: none, such a release is refused"},
)
