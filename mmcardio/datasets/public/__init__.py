"""Manifests from public cardiology datasets, read in the layout their publishers distribute.

One module per dataset defines `RECIPE` (a `Recipe`): what it reads, what it fills in the
manifest, the dataset's citation and licence, and `build(root, files_dir, progress, **options)`
returning the studies. `build_manifest` runs a recipe and writes the manifest atomically;
files a recipe derives (label maps renumbered into `records.Label`, EchoNet tracings drawn as
masks) go to `files_dir` beside the manifest. Nothing is downloaded: ROOT is the dataset as
the user downloaded it (its licence and data-use agreement are theirs to keep).
"""
from __future__ import annotations

import importlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mmcardio.errors import ManifestError
from mmcardio.study import Study, write_manifest

#: FORMAT name -> module of `mmcardio.datasets.public` defining its `RECIPE`.
RECIPE_MODULES = {
    "ptbxl": "ptbxl", "mimic-iv-ecg": "mimic_ecg", "physionet-challenge": "challenge_wfdb",
    "mitbih": "mitbih", "echonet-dynamic": "echonet", "camus": "camus", "acdc": "acdc",
    "mnms": "mnms",
}


@dataclass(frozen=True)
class Recipe:
    """How to turn one public dataset's folder into a manifest."""

    name: str            # the FORMAT of `mmcardio manifest FORMAT ROOT`
    title: str           # e.g. "PTB-XL 1.0.3"
    modality: str        # "ecg", "echo" or "cmr"
    fills: str           # what the manifest gets: splits, labels, reports, measurements, masks
    citation: str
    licence: str
    url: str
    build: Callable[..., list[Study]]
    options: dict[str, str] = field(default_factory=dict)  # option -> help (with its default)


def recipe(name: str) -> Recipe:
    """The recipe of FORMAT `name`."""
    if name not in RECIPE_MODULES:
        raise ManifestError(f"unknown dataset format {name!r}; expected one of {sorted(RECIPE_MODULES)}",
                            field="FORMAT")
    return importlib.import_module(f"{__name__}.{RECIPE_MODULES[name]}").RECIPE


def build_manifest(name: str, root: str | Path, out: str | Path, options: dict[str, str] | None = None,
                   limit: int | None = None, progress: bool = False) -> dict:
    """Build the manifest of dataset `name` found at `root` and write it to `out` (.csv,
    .parquet or .jsonl); returns a summary (studies and patients per split, label positives)."""
    chosen, root, out = recipe(name), Path(root), Path(out)
    if not root.is_dir():
        raise ManifestError("the dataset folder does not exist", root, "ROOT")
    unknown = sorted(set(options or {}) - set(chosen.options))
    if unknown:
        takes = "; ".join(f"{key}: {text}" for key, text in chosen.options.items()) or "no options"
        raise ManifestError(f"unknown option(s) {unknown}; {name} takes {takes}", field="--option")
    started = time.perf_counter()
    files_dir = out.parent / f"{out.stem}_files"
    studies = chosen.build(root, files_dir, progress=progress, limit=limit, **(options or {}))
    if not studies:
        raise ManifestError(f"no {chosen.title} study found under this folder", root, "ROOT")
    check_patient_disjoint(studies, root)
    write_manifest(studies, out)
    return summarize(chosen, studies, out, time.perf_counter() - started)


def check_patient_disjoint(studies: list[Study], root: Path) -> None:
    """A patient in two splits would leak between training and test: refuse the manifest."""
    split_of: dict[str, str] = {}
    for study in studies:
        first = split_of.setdefault(study.patient_id, study.split)
        if first != study.split:
            raise ManifestError(f"patient {study.patient_id!r} is in both {first!r} and {study.split!r} "
                                f"(study {study.study_id!r}); splits must be patient-disjoint", root, "split")


def summarize(chosen: Recipe, studies: list[Study], out: Path, seconds: float) -> dict:
    """Counts a user checks a new manifest by: studies and patients per split, labels."""
    splits = Counter(s.split for s in studies)
    patients = {split: len({s.patient_id for s in studies if s.split == split}) for split in splits}
    positives = Counter(name for s in studies for name, value in s.labels.items() if value == 1)
    labelled = Counter(name for s in studies for name in s.labels)
    return {
        "format": chosen.name, "dataset": chosen.title, "manifest": str(out), "studies": len(studies),
        "patients": len({s.patient_id for s in studies}), "splits": dict(splits),
        "patients_per_split": patients,
        "labels": {name: {"positive": positives[name], "labelled": labelled[name]} for name in sorted(labelled)},
        "with_report": sum(bool(s.report) for s in studies),
        "with_masks": sum(bool(s.masks) for s in studies),
        "with_measurements": sum(bool(s.measurements) for s in studies),
        "citation": chosen.citation, "licence": chosen.licence, "seconds": round(seconds, 2),
    }
