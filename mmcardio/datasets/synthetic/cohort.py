"""Write a phantom cohort: files in hospital formats, a manifest, the truth of every study.

Layout of `out/`:
  manifest.csv   one row per study (mmcardio.study format, paths relative to out/); the
                 report in the study's language, its twin in the other as `translations`
                 (as a bilingual hospital files them: written apart, not word for word)
  truth.jsonl    per study: findings, latent conditions, per-modality truth with units, ECG
                 truth, both reports (report_en, report_zh) and their exam sections by
                 modality (reports_en, reports_zh), and which file holds what
  ecg/ echo/ cmr/ ct/ masks/

Formats are mixed as in hospitals: ECGs mostly WFDB, some DICOM, GE MUSE XML and HL7 aECG;
echo A4C as DICOM multi-frame, A2C as DICOM or MP4; CMR as 4-D NIfTI or a DICOM series;
CT as NIfTI or a DICOM series; masks as NIfTI label maps. The whole folder is written under a
temporary name and renamed at the end, so an interrupted run leaves nothing half-made.
Same seed -> identical manifest and truth (studies are drawn from per-study seed sequences).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from pydicom.uid import generate_uid
from tqdm import tqdm

from mmcardio.datasets.synthetic.ecg import synth_ecg
from mmcardio.datasets.synthetic.findings import LABELS, PatientTruth, nominal_measurements
from mmcardio.datasets.synthetic.heart import make_cmr, make_ct, make_echo
from mmcardio.datasets.synthetic.patients import sample_cohort
from mmcardio.datasets.synthetic.reports import write_report_parts
from mmcardio.datasets.writers.dicom import write_dicom_series, write_dicom_video
from mmcardio.datasets.writers.ecg import write_ecg
from mmcardio.datasets.writers.nifti import write_nifti
from mmcardio.datasets.writers.video import write_video
from mmcardio.errors import MMCardioError
from mmcardio.io import atomic_path
from mmcardio.records import Label, Measurement, Volume
from mmcardio.study import LANGUAGES, EchoClip, Study, write_manifest

log = logging.getLogger(__name__)

#: (format, suffix, probability) choices, as a hospital's archive mixes them.
ECG_FORMATS = (
    ("wfdb", ".hea", 0.7),
    ("dicom", ".dcm", 0.1),
    ("muse", ".xml", 0.1),
    ("aecg", ".xml", 0.1),
)
A2C_MP4_PROBABILITY = 0.5
CMR_DICOM_PROBABILITY = 0.2
CT_DICOM_PROBABILITY = 0.4
#: Label values of every mask (`mmcardio.records.Label`), written into the truth file.
MASK_LABELS = MappingProxyType({str(int(label)): label.name.lower() for label in Label})


def _choose(
    rng: np.random.Generator, options: tuple[tuple[str, str, float], ...]
) -> tuple[str, str]:
    probabilities = np.array([p for *_, p in options])
    name, suffix, _ = options[int(rng.choice(len(options), p=probabilities / probabilities.sum()))]
    return name, suffix


def _measurements(truth: dict[str, Measurement]) -> dict[str, Measurement]:
    return {k: Measurement(float(m.value), m.unit) for k, m in truth.items()}


def _echo_mask_volume(mask: np.ndarray, video) -> Volume:
    """The [T, H, W] echo label map as a 2-D cine volume (t, 1, y, x) with the video's pixel
    spacing and frame times, so the file says what its axes are."""
    row, col = video.pixel_spacing_mm or (1.0, 1.0)
    frame_ms = 1000.0 / video.fps
    return Volume(
        array=mask.astype(np.uint8)[:, None],
        spacing_mm=(1.0, row, col),
        affine=np.diag([1.0, row, col, 1.0]),
        units="label",
        frame_times_ms=[i * frame_ms for i in range(len(mask))],
        modality="echo",
        source=video.source,
    )


def _stored_as_int16(volume: Volume) -> Volume:
    """Integer voxels as scanners store them (CT HU are integers already; MR a.u. are rounded),
    half the bytes of float32 and far quicker to gzip."""
    return dataclasses.replace(volume, array=np.round(volume.array).astype(np.int16))


class _StudyWriter:
    """Writes one study's files under `root` and fills in its measured truth."""

    def __init__(
        self, truth: PatientTruth, seed: np.random.SeedSequence, root: Path, cohort_seed: int
    ):
        self.truth, self.root = truth, root
        self.rng = np.random.default_rng(seed)
        self.uid = generate_uid(entropy_srcs=[str(cohort_seed), truth.study_id])
        self.files: dict[str, dict[str, Any]] = {}
        self.masks: dict[str, dict[str, Any]] = {}

    def rel(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, key: str, path: Path, fmt: str, mask: bool = False) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": str(path.relative_to(self.root)), "format": fmt}
        (self.masks if mask else self.files)[key] = entry
        return entry

    def write(self) -> dict[str, Any]:
        t, sid = self.truth, self.truth.study_id
        measured = nominal_measurements(t)
        if "ecg" in t.modalities:
            measured["ecg"] = {**measured["ecg"], **_measurements(self.write_ecg(sid))}
        if "echo" in t.modalities:
            measured["echo"] = {**measured["echo"], **self.write_echo(sid)}
        if "cmr" in t.modalities:
            measured["cmr"] = {**measured["cmr"], **self.write_volume(sid, "cmr")}
        if "ct" in t.modalities:
            measured["ct"] = {**measured["ct"], **self.write_volume(sid, "ct")}
        t.measurements = measured
        t.update_findings()
        reports = {lang: write_report_parts(t, lang, self.rng) for lang in LANGUAGES}
        return _truth_record(t, reports, self.files, self.masks)

    def write_ecg(self, sid: str) -> dict[str, Measurement]:
        ecg = synth_ecg(self.truth.ecg, self.rng)
        fmt, suffix = _choose(self.rng, ECG_FORMATS)
        path = write_ecg(ecg, self.rel("ecg", f"{sid}{suffix}"), format=fmt)
        self.record("ecg", path, fmt)
        return ecg.truth

    def write_echo(self, sid: str) -> dict[str, Measurement]:
        truth: dict[str, Measurement] = {}
        for view in self.truth.echo_views:
            phantom = make_echo(self.truth.heart, view, self.rng)
            phantom.video.view = view
            as_mp4 = view != "A4C" and self.rng.random() < A2C_MP4_PROBABILITY
            if as_mp4:
                path = write_video(phantom.video, self.rel("echo", f"{sid}_{view}.mp4"))
            else:
                path = write_dicom_video(
                    phantom.video,
                    self.rel("echo", f"{sid}_{view}.dcm"),
                    patient_id=self.truth.patient_id,
                    study_uid=self.uid,
                )
            self.record(f"echo:{view}", path, "mp4" if as_mp4 else "dicom")
            mask = write_nifti(
                _echo_mask_volume(phantom.mask, phantom.video),
                self.rel("masks", f"{sid}_echo_{view}.nii.gz"),
            )
            entry = self.record(f"echo:{view}", mask, "nifti", mask=True)
            entry.update(ed_frame=int(phantom.ed_frame), es_frame=int(phantom.es_frame))
            # Both views image one heart, so the first (A4C) view's truth is the echo truth.
            truth = truth or _measurements(phantom.truth)
        return truth

    def write_volume(self, sid: str, modality: str) -> dict[str, Measurement]:
        phantom = (make_cmr if modality == "cmr" else make_ct)(self.truth.heart, self.rng)
        as_dicom = self.rng.random() < (
            CMR_DICOM_PROBABILITY if modality == "cmr" else CT_DICOM_PROBABILITY
        )
        if as_dicom:
            path = write_dicom_series(
                phantom.volume,
                self.rel(modality, sid),
                modality="MR" if modality == "cmr" else "CT",
                patient_id=self.truth.patient_id,
                study_uid=self.uid,
            )
        else:
            path = write_nifti(
                _stored_as_int16(phantom.volume), self.rel(modality, f"{sid}.nii.gz")
            )
        self.record(modality, path, "dicom" if as_dicom else "nifti")
        mask = write_nifti(phantom.mask, self.rel("masks", f"{sid}_{modality}.nii.gz"))
        entry = self.record(modality, mask, "nifti", mask=True)
        if phantom.ed_phase is not None:
            entry.update(ed_phase=int(phantom.ed_phase), es_phase=int(phantom.es_phase))
        return _measurements(phantom.truth)


def _plain(obj: Any) -> Any:
    """Dataclasses, Measurements and numpy scalars as JSON-ready values."""
    if isinstance(obj, Measurement):
        return {"value": float(obj.value), "unit": obj.unit}
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _truth_record(
    t: PatientTruth, reports: dict[str, tuple[str, dict[str, str]]], files: dict, masks: dict
) -> dict[str, Any]:
    return {
        "study_id": t.study_id,
        "patient_id": t.patient_id,
        "split": t.split,
        "age": t.age,
        "sex": t.sex,
        "modalities": list(t.modalities),
        "echo_views": list(t.echo_views),
        "findings": t.labels(),
        "findings_all": dict(t.findings),
        "conditions": dict(t.conditions),
        "reported": _plain(t.reported()),
        "measurements": _plain(t.measurements),
        "ecg": {"rhythm": t.ecg.rhythm, "params": _plain(t.ecg)} if "ecg" in t.modalities else None,
        "heart_params": _plain(t.heart),
        "report_lang": t.report_lang,
        "report": reports[t.report_lang][0],
        "reports": reports[t.report_lang][1],
        "report_en": reports["en"][0],
        "report_zh": reports["zh"][0],
        "reports_en": reports["en"][1],
        "reports_zh": reports["zh"][1],
        "files": files,
        "masks": masks,
        "mask_labels": dict(MASK_LABELS) if masks else {},
    }


def _write_one(job: tuple[PatientTruth, np.random.SeedSequence, str, int]) -> dict[str, Any]:
    truth, seed, root, cohort_seed = job
    return _StudyWriter(truth, seed, Path(root), cohort_seed).write()


def _study_row(record: dict[str, Any], root: Path) -> Study:
    files, masks = record["files"], record["masks"]

    def path(entry: dict | None) -> Path | None:
        return root / entry["path"] if entry else None

    return Study(
        study_id=record["study_id"],
        patient_id=record["patient_id"],
        split=record["split"],
        ecg=path(files.get("ecg")),
        echo=[EchoClip(root / files[f"echo:{v}"]["path"], v) for v in record["echo_views"]],
        cmr=path(files.get("cmr")),
        ct=path(files.get("ct")),
        masks={k: root / m["path"] for k, m in masks.items()},
        report=record["report"],
        reports=dict(record["reports"]),
        report_lang=record["report_lang"],
        translations={lang: {"report": record[f"report_{lang}"], **record[f"reports_{lang}"]}
                      for lang in LANGUAGES if lang != record["report_lang"]},
        age=record["age"],
        sex=record["sex"],
        labels=dict(record["findings"]),
        measurements={k: Measurement(v["value"], v["unit"]) for k, v in record["reported"].items()},
    )


def _records(jobs: list, workers: int, progress: bool) -> Iterator[dict[str, Any]]:
    bar = tqdm(total=len(jobs), desc="synth", unit="study", disable=not progress)
    with bar:
        if workers <= 1:
            for job in jobs:
                yield _write_one(job)
                bar.update()
            return
        # One study per task: with chunks of a sixteenth of the cohort, one worker sat idle while
        # the other finished its last chunk; a task's overhead is tiny next to a study's ~0.6 s.
        # spawned, not forked: a fork copies locks other threads of the caller hold
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for record in pool.map(_write_one, jobs):
                yield record
                bar.update()


def cohort_truths(n_studies: int, seed: int = 0) -> list[PatientTruth]:
    """The studies `generate_cohort(out, n_studies, seed)` writes, before any file (nominal truth)."""
    return sample_cohort(n_studies, np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0]))


def generate_cohort(
    out: str | Path,
    n_studies: int,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `n_studies` phantom studies to `out` and return a summary (counts, time).

    workers: processes (default: all CPUs); 1 writes in this process. An existing non-empty
    `out` is refused unless `overwrite`, then replaced as a whole at the end.
    """
    out = Path(out)
    if n_studies < 1:
        raise MMCardioError(f"need at least 1 study, got {n_studies}", field="n_studies")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise MMCardioError(
            "output folder exists and is not empty (pass overwrite=True / --overwrite)", out
        )
    start = time.perf_counter()
    truths = cohort_truths(n_studies, seed)
    files_seq = np.random.SeedSequence(seed).spawn(2)[1]
    workers = min(workers or os.cpu_count() or 1, n_studies)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        jobs = [(t, s, str(tmp), seed) for t, s in zip(truths, files_seq.spawn(n_studies))]
        records = list(_records(jobs, workers, progress))
        write_manifest([_study_row(r, tmp) for r in records], tmp / "manifest.csv")
        (tmp / "truth.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
    summary = summarize(records)
    summary.update(
        out=str(out), seed=seed, workers=workers, seconds=round(time.perf_counter() - start, 2)
    )
    log.info("wrote %d studies to %s in %.1f s", n_studies, out, summary["seconds"])
    return summary


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per modality, per finding (positives among studies that can show it), per split."""
    findings = {
        name: {
            "positive": sum(r["findings"].get(name, 0) for r in records),
            "labelled": sum(name in r["findings"] for r in records),
        }
        for name in LABELS
    }
    formats = Counter(
        f"{key.split(':')[0]}:{entry['format']}"
        for r in records
        for key, entry in r["files"].items()
    )
    return {
        "studies": len(records),
        "patients": len({r["patient_id"] for r in records}),
        "modalities": {
            m: sum(m in r["modalities"] for r in records) for m in ("ecg", "echo", "cmr", "ct")
        },
        "echo_views": dict(Counter(v for r in records for v in r["echo_views"])),
        "findings": findings,
        "splits": dict(Counter(r["split"] for r in records)),
        "report_langs": dict(Counter(r["report_lang"] for r in records)),
        "formats": dict(sorted(formats.items())),
    }
