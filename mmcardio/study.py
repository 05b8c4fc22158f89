"""The Study record and the manifest (one row per study) in CSV, Parquet or JSONL.

Columns: study_id, patient_id, split, ecg, echo, cmr, ct, masks, report, reports, report_lang,
translations, age, sex, labels, measurements. Paths are relative to the manifest's folder (or absolute).
Structured cells in CSV are JSON (`echo`: [{"path": ..., "view": "A4C"}], `masks`:
{"echo:A4C": path, "cmr": path}, `reports`: {"ecg": "Sinus rhythm...", "echo": "..."},
`translations`: {"zh": {"report": "...", "ecg": "..."}}, `labels`: {"afib": 1}, `measurements`: {"lvef": {"value": 55.0, "unit": "%"}}); `echo` also
accepts the short form "A4C=a4c.dcm;A2C=a2c.mp4".

`report` is the study's whole report; `reports` (optional) holds each exam's own report by
modality, as hospitals file them (the ECG read, the echo report, ...). Training aligns each
modality with its own exam report when there is one, else with the whole report.
`translations` (optional) holds the same reports in other languages (a hospital's bilingual
reports, or machine translations), keyed by language: "report" for the whole report and a
modality for an exam report; training can draw a study's report language from them.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from mmcardio.errors import ManifestError
from mmcardio.io import atomic_path
from mmcardio.modality import STUDY_MODALITIES, Modality

COLUMNS = ("study_id", "patient_id", "split", "ecg", "echo", "cmr", "ct", "masks", "report",
           "reports", "report_lang", "translations", "age", "sex", "labels", "measurements")
REQUIRED = ("study_id", "patient_id")
STRUCTURED = ("echo", "masks", "reports", "translations", "labels", "measurements")  # JSON cells in CSV
SPLITS = ("train", "val", "test")
LANGS = ("en", "zh")
SEXES = ("F", "M")


@dataclass
class EchoClip:
    path: Path
    view: str = "OTHER"


@dataclass
class Measurement:
    value: float
    unit: str


@dataclass
class Study:
    study_id: str
    patient_id: str
    split: str = "train"
    ecg: Path | None = None
    echo: list[EchoClip] = field(default_factory=list)
    cmr: Path | None = None
    ct: Path | None = None
    masks: dict[str, Path] = field(default_factory=dict)
    report: str = ""
    reports: dict[str, str] = field(default_factory=dict)
    report_lang: str = "en"
    translations: dict[str, dict[str, str]] = field(default_factory=dict)
    age: float | None = None
    sex: str | None = None
    labels: dict[str, int] = field(default_factory=dict)
    measurements: dict[str, Measurement] = field(default_factory=dict)

    def modalities(self) -> list[Modality]:
        """The study modalities this study holds, in the canonical order."""
        have = {Modality.ECG: self.ecg, Modality.ECHO: self.echo, Modality.CMR: self.cmr,
                Modality.CT: self.ct}
        return [m for m in STUDY_MODALITIES if have[m]]

    def report_for(self, modality: str) -> str:
        """The exam report of `modality` when the manifest has one, else the whole report."""
        return self.reports.get(str(modality)) or self.report

    def languages(self) -> list[str]:
        """The report's language, then those of its translations."""
        return [self.report_lang, *(lang for lang in self.translations if lang != self.report_lang)]

    def in_language(self, lang: str) -> Study:
        """This study with its report (whole and exam reports) in `lang`, from `translations`
        (exam reports the translation lacks fall back to its whole report)."""
        if lang == self.report_lang:
            return self
        if lang not in self.translations:
            raise ManifestError(f"study {self.study_id} has no {lang!r} translation; has "
                                f"{self.languages()}", field="translations")
        texts = self.translations[lang]
        return replace(self, report=texts.get("report", ""), report_lang=lang,
                       reports={k: v for k, v in texts.items() if k != "report"})

    def files(self) -> list[tuple[str, Path]]:
        """(column, path) for every file the row points to."""
        out: list[tuple[str, Path]] = []
        for col in ("ecg", "cmr", "ct"):
            if getattr(self, col):
                out.append((col, getattr(self, col)))
        out += [("echo", clip.path) for clip in self.echo]
        out += [(f"masks.{k}", p) for k, p in self.masks.items()]
        return out

    def to_row(self, root: Path | None = None) -> dict[str, Any]:
        rel = (lambda p: _relative(p, root)) if root else str
        return {
            "study_id": self.study_id, "patient_id": self.patient_id, "split": self.split,
            "ecg": rel(self.ecg) if self.ecg else None,
            "echo": [{"path": rel(c.path), "view": c.view} for c in self.echo],
            "cmr": rel(self.cmr) if self.cmr else None, "ct": rel(self.ct) if self.ct else None,
            "masks": {k: rel(p) for k, p in self.masks.items()},
            "report": self.report, "reports": dict(self.reports), "report_lang": self.report_lang,
            "translations": {lang: dict(t) for lang, t in self.translations.items()}, "age": self.age,
            "sex": self.sex, "labels": dict(self.labels),
            "measurements": {k: {"value": m.value, "unit": m.unit}
                             for k, m in self.measurements.items()},
        }


@dataclass
class Problem:
    """One thing wrong with a manifest: where it is and what was expected."""

    row: int | None
    column: str | None
    file: str | None
    message: str

    def __str__(self) -> str:
        where = [f"row {self.row}" if self.row is not None else None,
                 f"column {self.column!r}" if self.column else None, self.file]
        return f"{', '.join(w for w in where if w)}: {self.message}"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _structured(value: Any, column: str) -> Any:
    """Parse a JSON cell (CSV) or pass through a native value (JSONL/Parquet)."""
    if _empty(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if column == "echo" and not text.startswith("["):
            return [_short_echo(part) for part in text.split(";") if part.strip()]
        return json.loads(text)
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value


def _short_echo(part: str) -> dict:
    view, sep, path = part.partition("=")
    return {"path": path.strip(), "view": view.strip().upper()} if sep else {"path": view.strip()}


def study_from_row(row: dict[str, Any], root: Path, index: int, source: str) -> Study:
    """Parse one manifest row; raises ManifestError naming the row and column."""
    def path_of(value: Any) -> Path:
        p = Path(str(value))
        return p if p.is_absolute() else root / p

    def fail(column: str, message: str) -> ManifestError:
        return ManifestError(f"row {index}: {message}", source, column)

    for col in REQUIRED:
        if _empty(row.get(col)):
            raise fail(col, "is required and empty")
    parsed: dict[str, Any] = {}
    for col in STRUCTURED:
        try:
            parsed[col] = _structured(row.get(col), col)
        except json.JSONDecodeError as err:
            raise fail(col, f"expected JSON, got {row.get(col)!r} ({err.msg})") from None
    try:
        echo = [EchoClip(path_of(c["path"]), str(c.get("view") or "OTHER").upper())
                for c in parsed["echo"] or []]
        measurements = {k: Measurement(float(v["value"]), str(v["unit"]))
                        for k, v in (parsed["measurements"] or {}).items()}
        labels = {k: int(v) for k, v in (parsed["labels"] or {}).items()}
    except (KeyError, TypeError, ValueError) as err:
        raise fail("echo/labels/measurements", f"malformed structured cell: {err}") from None
    if not isinstance(parsed["reports"] or {}, dict):
        raise fail("reports", f"expected a JSON object {{modality: report text}}, got {row.get('reports')!r}")
    translations = parsed["translations"] or {}
    if not isinstance(translations, dict) or not all(isinstance(t, dict) for t in translations.values()):
        raise fail("translations", "expected a JSON object {language: {\"report\": text, modality: "
                   f"exam report}}}}, got {row.get('translations')!r}")
    age = row.get("age")
    return Study(
        study_id=str(row["study_id"]), patient_id=str(row["patient_id"]),
        split=str(row.get("split") or "train"),
        ecg=None if _empty(row.get("ecg")) else path_of(row["ecg"]), echo=echo,
        cmr=None if _empty(row.get("cmr")) else path_of(row["cmr"]),
        ct=None if _empty(row.get("ct")) else path_of(row["ct"]),
        masks={k: path_of(v) for k, v in (parsed["masks"] or {}).items()},
        report="" if _empty(row.get("report")) else str(row["report"]),
        reports={str(k): str(v) for k, v in (parsed["reports"] or {}).items() if not _empty(v)},
        report_lang=str(row.get("report_lang") or "en"),
        translations={str(lang): {str(k): str(v) for k, v in t.items() if not _empty(v)}
                      for lang, t in translations.items()},
        age=None if _empty(age) else float(age),
        sex=None if _empty(row.get("sex")) else str(row["sex"]).upper()[:1],
        labels=labels, measurements=measurements,
    )


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Raw manifest rows as dicts, by file suffix (.csv, .parquet, .jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError("manifest file does not exist", path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype={"study_id": str, "patient_id": str}, keep_default_na=False)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype={"study_id": str, "patient_id": str})
        else:
            raise ManifestError(f"unknown manifest format {suffix!r}; expected .csv, .parquet or .jsonl", path)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise ManifestError(f"cannot parse manifest: {err}", path) from None
    return frame.to_dict(orient="records")


def read_manifest(path: str | Path) -> list[Study]:
    """Read and parse every row; raises at the first malformed row (use `validate` to list all)."""
    path = Path(path)
    root = path.resolve().parent
    studies = [study_from_row(r, root, i, str(path)) for i, r in enumerate(read_rows(path))]
    seen: dict[str, int] = {}
    for i, s in enumerate(studies):
        if s.study_id in seen:
            raise ManifestError(f"row {i}: duplicate study_id {s.study_id!r} (first at row {seen[s.study_id]})",
                                path, "study_id")
        seen[s.study_id] = i
    return studies


def write_manifest(studies: Iterable[Study], path: str | Path) -> Path:
    """Write studies atomically; the format follows the suffix; paths are made relative."""
    path = Path(path)
    root = path.resolve().parent
    rows = [s.to_row(root) for s in studies]
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            frame = pd.DataFrame(rows, columns=list(COLUMNS))
            for col in STRUCTURED:
                frame[col] = [json.dumps(v, ensure_ascii=False) for v in frame[col]]
            frame.to_csv(tmp, index=False)
        elif suffix in (".parquet", ".pq"):
            frame = pd.DataFrame(rows, columns=list(COLUMNS))
            for col in STRUCTURED:  # nested maps vary by row
                frame[col] = [json.dumps(v, ensure_ascii=False) for v in frame[col]]
            frame.to_parquet(tmp, index=False)
        elif suffix in (".jsonl", ".ndjson"):
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        else:
            raise ManifestError(f"unknown manifest format {suffix!r}; expected .csv, .parquet or .jsonl", path)
    return path


def validate_manifest(path: str | Path, read_files: bool = True, progress: bool = False,
                      workers: int | None = None) -> list[Problem]:
    """Every problem of every row and file, without stopping at the first (by row). Files are
    decoded by `workers` processes (default: one per CPU)."""
    path = Path(path)
    try:
        rows = read_rows(path)
    except ManifestError as err:
        return [Problem(None, None, str(path), err.problem)]
    root = path.resolve().parent
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    to_read: list[tuple[int, str, Path]] = []
    for i, row in enumerate(rows):
        try:
            study = study_from_row(row, root, i, str(path))
        except ManifestError as err:
            problems.append(Problem(i, err.field, None, err.problem.removeprefix(f"row {i}: ")))
            continue
        problems += _row_problems(study, i, seen)
        for column, file in study.files():
            if not file.exists():
                problems.append(Problem(i, column, str(file), "file does not exist"))
            elif read_files:
                to_read.append((i, column, file))
    problems += _unreadable(to_read, workers, progress)
    return sorted(problems, key=lambda p: -1 if p.row is None else p.row)


def _unreadable(files: list[tuple[int, str, Path]], workers: int | None, progress: bool) -> list[Problem]:
    """A problem for each (row, column, file) its reader refuses."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    workers = min(workers or os.cpu_count() or 1, max(len(files), 1))
    jobs = [(column, file) for _, column, file in files]
    bar = {"total": len(files), "desc": "validate", "unit": "file", "disable": not progress}
    if workers <= 1:
        errors = list(tqdm(map(_read_error, jobs), **bar))
    else:
        with ProcessPoolExecutor(workers) as pool:
            errors = list(tqdm(pool.map(_read_error, jobs, chunksize=4), **bar))
    return [Problem(i, column, str(file), error) for (i, column, file), error in zip(files, errors) if error]


def _read_error(job: tuple[str, Path]) -> str | None:
    """None if the file decodes, else why not (every reader failure is a problem to list)."""
    from mmcardio.datasets.readers import read_for_column  # readers import numpy-heavy libs

    column, file = job
    try:
        read_for_column(column, file)
    except Exception as err:  # noqa: BLE001 - listed, not raised
        return getattr(err, "problem", str(err))
    return None


def _row_problems(study: Study, i: int, seen: dict[str, int]) -> list[Problem]:
    out = []
    if study.study_id in seen:
        out.append(Problem(i, "study_id", None, f"duplicate study_id {study.study_id!r} (first at row {seen[study.study_id]})"))
    else:
        seen[study.study_id] = i
    if study.split not in SPLITS:
        out.append(Problem(i, "split", None, f"expected one of {SPLITS}, got {study.split!r}"))
    if study.report_lang not in LANGS:
        out.append(Problem(i, "report_lang", None, f"expected one of {LANGS}, got {study.report_lang!r}"))
    if study.sex is not None and study.sex not in SEXES:
        out.append(Problem(i, "sex", None, f"expected F or M, got {study.sex!r}"))
    if study.age is not None and not 0 <= study.age <= 120:
        out.append(Problem(i, "age", None, f"expected years in [0, 120], got {study.age}"))
    for name, value in study.labels.items():
        if value not in (0, 1):
            out.append(Problem(i, "labels", None, f"label {name!r} must be 0 or 1, got {value}"))
    if not study.modalities():
        out.append(Problem(i, None, None, "study has no ecg, echo, cmr or ct file"))
    known = [str(m) for m in STUDY_MODALITIES]
    for key in study.reports:
        if key not in known:
            out.append(Problem(i, "reports", None, f"key {key!r}: expected a modality, one of {known}"))
    for lang, texts in study.translations.items():
        if lang not in LANGS or lang == study.report_lang:
            out.append(Problem(i, "translations", None, f"language {lang!r}: expected one of {LANGS} "
                               f"other than the report's ({study.report_lang!r})"))
        for key in sorted(set(texts) - {"report", *known}):
            out.append(Problem(i, "translations", None, f"{lang}: key {key!r}: expected \"report\" or a "
                               f"modality, one of {known}"))
    return out
