"""The expert segmentations of the public CMR datasets (ACDC, M&Ms): their ED and ES label maps
put into one (t, z, y, x) map aligned with the cine, and the measurements read off them.

Measurements are those of the datasets' own evaluations: a structure's volume is its voxel
count x voxel volume (slice spacing x pixel area; disk summation), at the ED and ES phases the
dataset names; LV mass is the ED myocardial volume x 1.05 g/mL. `adapters.measure.measure_cmr`
counts voxels the same way but chooses ED and ES itself (the phases of largest and smallest LV
volume) and takes RVEDV at the RV's largest phase; here every volume is at the experts' phases,
so its EF formula and myocardial density are reused and its phase choice is not. Its wall
thickness (a mean over the mid-ventricular third) is left out: the datasets' thick-wall groups
(HCM) go by the thickest segment, and a mean could contradict their labels.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mmcardio.adapters.measure import MYOCARDIAL_DENSITY_G_PER_ML, ejection_fraction
from mmcardio.datasets.synthetic.findings import UNITS
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.errors import ManifestError
from mmcardio.records import Label, Measurement, Volume

#: Decimals the manifest keeps: 0.1 mL, 0.1 %, 0.1 g (finer than a voxel's volume says little).
DECIMALS = 1


def check_aligned(cine: Volume, labels: Volume, path: Path) -> None:
    """A label map (one phase, or all) must lie on the cine's voxel grid: shape and spacing."""
    expected = cine.array.shape[1:] if labels.array.ndim == 3 else cine.array.shape
    if labels.array.shape != expected:
        raise ManifestError(f"label map of shape {labels.array.shape} does not match the cine's "
                            f"{expected} ((t,) z, y, x)", path, "dim")
    if not np.allclose(labels.spacing_mm, cine.spacing_mm, rtol=1e-3):
        raise ManifestError(f"voxel spacing {labels.spacing_mm} mm (z, y, x) differs from the cine's "
                            f"{cine.spacing_mm}", path, "pixdim")


def write_label_map(cine: Volume, labels: np.ndarray, path: Path) -> Path:
    """Write a (t, z, y, x) map of `records.Label` values with the cine's affine and frame times."""
    path.parent.mkdir(parents=True, exist_ok=True)
    volume = Volume(labels.astype(np.uint8), cine.spacing_mm, cine.affine, units="label",
                    frame_times_ms=cine.frame_times_ms, modality="cmr", source=cine.source)
    return write_nifti(volume, path)


def measure_phases(labels: np.ndarray, ed: int, es: int, spacing_mm: tuple[float, float, float],
                   sources: Mapping[str, Path]) -> dict[str, Measurement]:
    """LVEDV, LVESV, LVEF, LV mass and RVEDV from a (t, z, y, x) map of `records.Label` values at
    the ED and ES phase indices (0-based); LV mass and RVEDV only where the experts drew them.
    sources: the segmentation file of "ED" and of "ES" (named by errors)."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0

    def volume_ml(phase: int, label: Label) -> float:
        return np.count_nonzero(labels[phase] == label) * voxel_ml

    values = {"lvedv": volume_ml(ed, Label.LV_CAVITY), "lvesv": volume_ml(es, Label.LV_CAVITY)}
    for name, phase, which in (("lvedv", ed, "ED"), ("lvesv", es, "ES")):
        if not values[name] > 0:
            raise ManifestError(f"no LV cavity is drawn at the {which} phase (index {phase}, 0-based)",
                                sources[which], which)
    values["lvef"] = ejection_fraction(values["lvedv"], values["lvesv"]).value
    values["lv_mass"] = volume_ml(ed, Label.LV_MYOCARDIUM) * MYOCARDIAL_DENSITY_G_PER_ML
    values["rvedv"] = volume_ml(ed, Label.RV_CAVITY)
    return {name: Measurement(round(value, DECIMALS), UNITS[name])
            for name, value in values.items() if value > 0 or name == "lvef"}
