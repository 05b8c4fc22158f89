"""EchoNet-Dynamic: 10,030 apical four-chamber echo videos of 10,030 patients, with the ejection
fraction, the end-diastolic and end-systolic volumes, and the left-ventricle tracings of two
frames of each video.

Citation: D. Ouyang, B. He, A. Ghorbani, N. Yuan, J. Ebinger, C. P. Langlotz, P. A. Heidenreich,
R. A. Harrington, D. H. Liang, E. A. Ashley, J. Y. Zou, "Video-based AI for beat-to-beat
assessment of cardiac function", Nature 580, 252-256 (2020), doi:10.1038/s41586-020-2145-8.
Licence: the Stanford University School of Medicine EchoNet-Dynamic Dataset Research Use
Agreement: personal, non-commercial research use only; no redistribution of the data (derived
files such as the masks written here included) and no attempt to identify patients.
Get it at https://echonet.github.io/dynamic/ (after accepting the agreement).

Layout (ROOT is the unpacked "EchoNet-Dynamic" folder):
    ROOT/FileList.csv        FileName, EF, ESV, EDV, FrameHeight, FrameWidth, FPS,
                             NumberOfFrames, Split (TRAIN / VAL / TEST)
    ROOT/VolumeTracings.csv  FileName, X1, Y1, X2, Y2, Frame
    ROOT/Videos/<FileName>.avi  112x112 grey videos stored as RGB
FileName has no ".avi" in FileList.csv of the public release and has it in VolumeTracings.csv;
both forms are accepted in both tables.

What the manifest gets, per video (one video per patient, so study_id = patient_id = FileName):
- split: the official Split column, lower-cased.
- echo: the video, view "A4C". The frame rate is the AVI's own (FileList's FPS is informational).
- measurements: lvef (%), lvedv (mL), lvesv (mL) from EF, EDV, ESV (MEASUREMENTS).
- labels: reduced_ef by the package's definition (`reduced_ef_labels`): 1 when EF < 40 %,
  0 when EF >= 52 %, absent for 40-51 % (the mildly reduced range, which findings.py leaves
  unlabelled because reports do not call it reduced). No lv_dilation: its thresholds depend on
  sex, which the dataset does not state. Nothing else is labelled.
- masks["echo:A4C"]: a (t, 1, 112, 112) label map aligned with the video, `Label.LV_CAVITY`
  on each traced frame (two per video, end-diastole and end-systole; ED is the one of larger
  area, as EchoNet's own code orders them) and 0 on every other frame, written as NIfTI under
  the manifest's files folder. A tracing's first row of a frame is the long axis (apex to the
  mitral annulus midpoint); the other rows are the disk chords, from (X1, Y1) on one wall to
  (X2, Y2) on the other. The cavity is the polygon of the chord ends, the X1/Y1 points then
  the X2/Y2 points in reverse, without the long axis, vertices rounded to the nearest pixel
  (EchoNet's echonet/datasets/echo.py does the same with skimage.draw.polygon; PIL draws the
  polygon here, its fill including the border pixels). Videos without a tracing get no mask.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from mmcardio.datasets.public import Recipe
from mmcardio.datasets.public.common import read_table, reduced_ef_labels
from mmcardio.datasets.readers.video import container_frame_count
from mmcardio.datasets.synthetic.findings import UNITS
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.errors import ManifestError
from mmcardio.records import Label, Measurement
from mmcardio.study import EchoClip, Study

FILE_LIST = "FileList.csv"
TRACINGS = "VolumeTracings.csv"
TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
#: manifest measurement -> FileList column (units from findings.UNITS: %, mL, mL).
MEASUREMENTS = {"lvef": "EF", "lvedv": "EDV", "lvesv": "ESV"}
#: FileList's Split -> manifest split.
SPLITS = {"TRAIN": "train", "VAL": "val", "TEST": "test"}

#: video name -> {frame index: tracing rows [n, 4] of X1, Y1, X2, Y2 in file order}
Tracings = dict[str, dict[int, np.ndarray]]


def build(root: Path, files_dir: Path, progress: bool = False, limit: int | None = None) -> list[Study]:
    files = read_table(root / FILE_LIST, ("FileName", *MEASUREMENTS.values(), "Split"), dtype={"FileName": str})
    if limit is not None:
        files = files.head(limit)
    tracings = read_tracings(root / TRACINGS)
    return [study_of(row, root, files_dir, tracings)
            for row in tqdm(files.to_dict("records"), desc="echonet-dynamic", unit="video", disable=not progress)]


def study_of(row: dict, root: Path, files_dir: Path, tracings: Tracings) -> Study:
    name = video_name(row["FileName"])
    video = root / "Videos" / f"{name}.avi"
    if not video.is_file():
        raise ManifestError(f"the video of FileName {name!r} is missing", video, "FileName")
    split = SPLITS.get(str(row["Split"]).strip().upper())
    if split is None:
        raise ManifestError(f"video {name}: expected one of {sorted(SPLITS)}, got {row['Split']!r}",
                            root / FILE_LIST, "Split")
    measurements = {key: Measurement(float(row[column]), UNITS[key])
                    for key, column in MEASUREMENTS.items() if not pd.isna(row[column])}
    masks = {"echo:A4C": draw_mask(name, video, tracings[name], files_dir, root / TRACINGS)} if name in tracings else {}
    return Study(study_id=name, patient_id=name, split=split, echo=[EchoClip(video, "A4C")], masks=masks,
                 labels=reduced_ef_labels(measurements["lvef"].value) if "lvef" in measurements else {},
                 measurements=measurements)


def video_name(file_name: object) -> str:
    """FileName without its ".avi" (the public FileList.csv omits it, VolumeTracings.csv has it)."""
    name = str(file_name).strip()
    return name[:-4] if name.lower().endswith(".avi") else name


def read_tracings(path: Path) -> Tracings:
    """VolumeTracings.csv grouped by video and frame, rows kept in file order (the first row of
    a frame is the long axis)."""
    table = read_table(path, TRACING_COLUMNS, dtype={"FileName": str})
    for column in TRACING_COLUMNS[1:]:
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any():
            bad = table.loc[values.isna(), column].iloc[0]
            raise ManifestError(f"expected numbers, got {bad!r}", path, column)
        table[column] = values
    table["FileName"] = table["FileName"].map(video_name)
    out: Tracings = {}
    for (name, frame), rows in table.groupby(["FileName", "Frame"], sort=False):
        out.setdefault(name, {})[int(frame)] = rows[["X1", "Y1", "X2", "Y2"]].to_numpy(dtype=np.float64)
    return out


def draw_mask(name: str, video: Path, traced: dict[int, np.ndarray], files_dir: Path, source: Path) -> Path:
    """The (t, 1, y, x) label map of a video: the LV cavity on its traced frames, 0 elsewhere."""
    frames, height, width = container_frame_count(video)  # decoded: exactly the frames the clip has
    labels = np.zeros((frames, 1, height, width), dtype=np.uint8)
    for frame, rows in traced.items():
        if not 0 <= frame < len(labels):
            raise ManifestError(f"video {name}: traced frame {frame} is outside its {len(labels)} frames",
                                source, "Frame")
        if len(rows) < 3:
            raise ManifestError(f"video {name}, frame {frame}: {len(rows)} rows; expected the long axis and "
                                "at least two chords", source, "X1")
        labels[frame, 0] = lv_cavity(rows, labels.shape[2:])
    files_dir.mkdir(parents=True, exist_ok=True)
    return write_nifti(labels, files_dir / f"{name}_lv.nii.gz")


def lv_cavity(rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The LV cavity of one frame's tracing: the polygon of the chord ends (the X1, Y1 points,
    then the X2, Y2 points reversed; the first row, the long axis, left out)."""
    chords = rows[1:]
    x = np.rint(np.concatenate([chords[:, 0], chords[::-1, 2]]))
    y = np.rint(np.concatenate([chords[:, 1], chords[::-1, 3]]))
    image = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(image).polygon(list(zip(x.tolist(), y.tolist())), fill=int(Label.LV_CAVITY),
                                  outline=int(Label.LV_CAVITY))
    return np.asarray(image)


RECIPE = Recipe(
    name="echonet-dynamic", title="EchoNet-Dynamic", modality="echo",
    fills="official splits; A4C videos; lvef, lvedv, lvesv; reduced_ef (EF < 40 %, none for 40-51 %); "
          "LV cavity masks on the two traced frames",
    citation="Ouyang D, He B, Ghorbani A, et al. Video-based AI for beat-to-beat assessment of cardiac "
             "function. Nature 580, 252-256 (2020). doi:10.1038/s41586-020-2145-8",
    licence="Stanford EchoNet-Dynamic Dataset Research Use Agreement: non-commercial research use only, "
            "no redistribution (derived masks included)",
    url="https://echonet.github.io/dynamic/",
    build=build,
)
