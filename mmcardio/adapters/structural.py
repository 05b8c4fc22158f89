"""A study's label masks -> structural measurements that cite their evidence, the masks as
NIfTI for a physician to overlay, and a PNG of the ED and ES frames with the LV contours.

Masks are keyed as in the manifest's `masks` column: "echo:A4C" / "echo:A2C" (a (t, 1, y, x)
label cine), "cmr" (t, z, y, x) and "ct" (z, y, x); values are `mmcardio.records.Label`.
They come from the manifest (reference or earlier predictions) or from a segmenter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mmcardio.adapters.calcium import measure_ct
from mmcardio.adapters.measure import measure_cmr, measure_echo
from mmcardio.adapters.sam_preprocess import grey_frames
from mmcardio.datasets.readers import read_for_column, read_volume
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.errors import MMCardioError
from mmcardio.io import atomic_path
from mmcardio.records import Label, StructuralMeasurement, Volume
from mmcardio.study import Study

#: Contour colours of the overlay, by label (the cavity drawn last, over the shared edge).
CONTOURS = {Label.LV_MYOCARDIUM: "tab:cyan", Label.LV_CAVITY: "tab:red"}


@dataclass
class StructuralResult:
    """One study's measurements (modality -> name -> measurement) and the masks they used."""

    study_id: str
    measurements: dict[str, dict[str, StructuralMeasurement]]
    masks: dict[str, Volume]

    def to_json(self) -> dict:
        return {
            "study_id": self.study_id,
            "measurements": {
                modality: {name: m.evidence() for name, m in found.items()}
                for modality, found in self.measurements.items()
            },
            "masks": sorted(self.masks),
        }


def study_masks(study: Study) -> dict[str, Volume]:
    """The label masks the study's manifest row lists (column `masks`)."""
    if not study.masks:
        raise MMCardioError(
            f"study {study.study_id!r} has no masks; give masks or a segmenter", field="masks"
        )
    return {key: read_volume(path) for key, path in study.masks.items()}


def _echo_views(masks: Mapping[str, Volume]) -> dict[str, tuple[np.ndarray, tuple]]:
    views = {}
    for key, volume in masks.items():
        if key.startswith("echo:"):
            if volume.array.ndim != 4 or volume.array.shape[1] != 1:
                raise MMCardioError(
                    f"expected a (t, 1, y, x) echo label cine, got shape {volume.array.shape}",
                    volume.source,
                    f"masks.{key}",
                )
            views[key.split(":", 1)[1]] = (volume.array[:, 0], tuple(volume.spacing_mm[1:]))
    return views


def _ct_image(study: Study) -> Volume:
    if study.ct is None:
        raise MMCardioError(
            f"study {study.study_id!r} has a CT mask but no CT image (Agatston needs HU)",
            field="ct",
        )
    return read_volume(study.ct, modality="ct")


def measure_study(study: Study, masks: Mapping[str, Volume] | None = None) -> StructuralResult:
    """Measure every modality that has a mask: echo (LV volumes, EF, wall thickness, LA volume),
    CMR (LV volumes, EF, mass, wall thickness, RVEDV) and CT (Agatston, calcium volume, which
    also reads the study's CT image). `masks` default: the manifest's `masks` column."""
    masks = dict(masks) if masks is not None else study_masks(study)
    found: dict[str, dict[str, StructuralMeasurement]] = {}
    views = _echo_views(masks)
    if views:
        found["echo"] = measure_echo(views)
    if "cmr" in masks:
        found["cmr"] = measure_cmr(masks["cmr"])
    if "ct" in masks:
        found["ct"] = measure_ct(_ct_image(study), masks["ct"])
    if not found:
        raise MMCardioError(
            f"study {study.study_id!r}: no echo:VIEW, cmr or ct mask among {sorted(masks)}",
            field="masks",
        )
    return StructuralResult(study.study_id, found, masks)


def _file_stem(result: StructuralResult, key: str) -> str:
    return f"{result.study_id}_{key.replace(':', '_')}"


def write_masks(result: StructuralResult, out_dir: str | Path) -> dict[str, Path]:
    """Write each mask as a NIfTI label map (atomic) `out_dir/<study>_<key>.nii.gz`."""
    return {
        key: write_nifti(
            dataclasses.replace(volume, units="label"),
            Path(out_dir) / f"{_file_stem(result, key)}.nii.gz",
        )
        for key, volume in result.masks.items()
    }


def _panels(result: StructuralResult, study: Study | None) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(title, 2-D label map, the image frame under it or None) of the ED and ES frames of each
    echo view and of the CMR mid-ventricular slice, at the frames the EF was measured on."""
    panels = []
    for modality in ("echo", "cmr"):
        ef = result.measurements.get(modality, {}).get("lvef")
        for series, (ed, es) in (ef.frames if ef else {}).items():
            key = f"echo:{series}" if modality == "echo" else "cmr"
            labels = np.asarray(result.masks[key].array)
            z = ef.slices[len(ef.slices) // 2] if modality == "cmr" else 0
            images = _series_image(study, key) if study is not None else None
            panels += [(f"{key} {name} (frame {t})", labels[t, z], None if images is None else images[t, z])
                       for name, t in (("ED", ed), ("ES", es))]
    return panels


def _series_image(study: Study, key: str) -> np.ndarray | None:
    """The study's image of a masks key as (t, z, y, x), or None when it has none."""
    if key == "cmr":
        return read_volume(study.cmr, modality="cmr").array if study.cmr is not None else None
    clip = next((c for c in study.echo if f"echo:{c.view}" == key), None)
    return None if clip is None else grey_frames(read_for_column("echo", clip.path).frames)[:, None]


def write_overlays(result: StructuralResult, out_dir: str | Path, study: Study | None = None) -> Path | None:
    """A PNG `out_dir/<study>_overlay.png`: ED and ES frames of each echo view and the CMR
    mid slice, LV cavity (red) and myocardium (cyan) contours over the study's images (given
    `study`; over the label map otherwise); None without echo or CMR."""
    panels = _panels(result, study)
    if not panels:
        return None
    rows = len(panels) // 2
    fig = Figure(figsize=(6, 3 * rows))
    for i, (title, labels, image) in enumerate(panels):
        ax = fig.add_subplot(rows, 2, i + 1)
        if image is not None and image.shape == labels.shape:
            ax.imshow(image, cmap="gray", interpolation="nearest")
        else:
            ax.imshow(labels, cmap="gray", vmin=0, vmax=max(Label), interpolation="nearest")
        for label, colour in CONTOURS.items():
            if np.any(labels == label):
                ax.contour(labels == label, levels=[0.5], colors=colour, linewidths=1.0)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    path = Path(out_dir) / f"{result.study_id}_overlay.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path
