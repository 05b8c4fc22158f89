"""The Study record and the manifest (one row per study) in CSV, Parquet or JSONL.

Columns: study_id, patient_id, split, ecg, echo, cmr, ct, masks, report, reports, report_lang,
translations, age, sex, labels, measurements, ecg_lead_map. Paths are relative to the manifest's folder (or absolute).
Structured cells in CSV are JSON (`echo`: [{"path": ..., "view": "A4C"}], `masks`:
{"echo:A4C": path, "cmr": path}, `reports`: {"ecg": "Sinus rhythm...", "echo": "..."},
`translations`: {"zh": {"report": "...", "ecg": "..."}}, `labels`: {"afib": 1}, `measurements`:
{"lvef": {"value": 55.0, "unit": "%"}}, `ecg_lead_map`: {"ECG1": "II"}, the standard lead of each
ECG channel whose label names none); `echo` also accepts the short form
"A4C=a4c.dcm;A2C=a2c.mp4". Every reader of a manifest applies the same row checks
(`read_manifest` stops at the first bad row, `validate_manifest` lists them all).

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
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from mmcardio.errors import ManifestError
from mmcardio.io import atomic_path
from mmcardio.modality import STUDY_MODALITIES, Modality
from mmcardio.records import STANDARD_LEADS, Measurement

COLUMNS = ("study_id", "patient_id", "split", "ecg", "echo", "cmr", "ct", "masks", "report",
           "reports", "report_lang", "translations", "age", "sex", "labels", "measurements", "ecg_lead_map")
REQUIRED = ("study_id", "patient_id")
SPLITS = ("train", "val", "test")
#: Languages the package writes and reads reports in (prompts, labeller, phantom reports,
#: report head, bench). A manifest's reports may be in any language (`is_language_code`):
#: PTB-XL's are mostly German; the text tower aligns them, the labeller and prompts do not.
LANGUAGES = ("en", "zh")
SEXES = ("F", "M")
#: Environment variable naming a folder that every manifest's files must lie in.
DATA_ROOT_ENV = "MMCARDIO_DATA_ROOT"


@dataclass
class EchoClip:
    path: Path
    view: str = "OTHER"


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
    ecg_lead_map: dict[str, str] = field(default_factory=dict)

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
            "ecg_lead_map": dict(self.ecg_lead_map),
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


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or _empty(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_map(value: Any, item_ok: Callable[[Any], bool]) -> bool:
    return isinstance(value, dict) and all(item_ok(v) for v in value.values())


#: The JSON cells (in CSV; native values in JSONL/Parquet): the shape each holds, as errors
#: state it, and its check.
STRUCTURED: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "echo": ('a list [{"path": file, "view": "A4C"}, ...] or the short form "A4C=a4c.dcm;A2C=a2c.mp4"',
             lambda v: isinstance(v, list) and all(
                 isinstance(c, dict) and isinstance(c.get("path"), str) and c["path"] != ""
                 and _is_text(c.get("view")) for c in v)),
    "masks": ('an object {"echo:A4C": file, "cmr": file}',
              lambda v: _is_map(v, lambda p: isinstance(p, str) and p != "")),
    "reports": ("an object {modality: report text}", lambda v: _is_map(v, _is_text)),
    "translations": ('an object {language: {"report": text, modality: exam report}}',
                     lambda v: _is_map(v, lambda t: _is_map(t, _is_text))),
    "labels": ("an object {finding: 0 or 1}",
               lambda v: _is_map(v, lambda x: _is_number(x) and float(x).is_integer())),
    "measurements": ('an object {name: {"value": number, "unit": text}}',
                     lambda v: _is_map(v, lambda m: isinstance(m, dict) and _is_number(m.get("value"))
                                       and isinstance(m.get("unit"), str))),
    "ecg_lead_map": ('an object {ECG channel label: standard lead}, e.g. {"ECG1": "II"}, leads among '
                     + ", ".join(STANDARD_LEADS),
                     lambda v: _is_map(v, lambda lead: lead in STANDARD_LEADS)),
}


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _structured(value: Any, column: str) -> Any:
    """Parse a JSON cell (CSV) or pass through a native value (JSONL/Parquet)."""
    if _empty(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if column == "echo" and not text.startswith(("[", "{")):  # the short form
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
    def fail(column: str, message: str) -> ManifestError:
        return ManifestError(f"row {index}: {message}", source, column)

    def path_of(value: Any, column: str) -> Path:
        if "\x00" in str(value):  # no file system takes it; os calls raise ValueError on it
            raise fail(column, f"expected a file path, got {_shown(value)} (holds a NUL character)")
        p = Path(str(value))
        return p if p.is_absolute() else root / p

    def text(column: str, default: str | None = None) -> str | None:
        return default if _empty(row.get(column)) else str(row[column])

    for col in REQUIRED:
        if _empty(row.get(col)):
            raise fail(col, "is required and empty")
    parsed: dict[str, Any] = {}
    for col, (expected, well_shaped) in STRUCTURED.items():
        try:
            value = _structured(row.get(col), col)
        except json.JSONDecodeError as err:
            raise fail(col, f"expected JSON, {expected}; got {_shown(row.get(col))} ({err.msg})") from None
        except RecursionError:  # json's decoder gives up on nesting deeper than the stack
            raise fail(col, f"expected JSON, {expected}; got {_shown(row.get(col))} (nested too deeply)") from None
        if value is not None and not well_shaped(value):
            raise fail(col, f"expected {expected}; got {_shown(row.get(col))}")
        parsed[col] = value if value is not None else ([] if col == "echo" else {})
    age = row.get("age")
    try:
        age = None if _empty(age) else float(age)
    except (TypeError, ValueError):
        raise fail("age", f"expected years as a number, got {_shown(age)}") from None
    return Study(
        study_id=text("study_id"), patient_id=text("patient_id"), split=text("split", "train"),
        ecg=None if _empty(row.get("ecg")) else path_of(row["ecg"], "ecg"),
        echo=[EchoClip(path_of(c["path"], "echo"), str(c.get("view") or "OTHER").upper()) for c in parsed["echo"]],
        cmr=None if _empty(row.get("cmr")) else path_of(row["cmr"], "cmr"),
        ct=None if _empty(row.get("ct")) else path_of(row["ct"], "ct"),
        masks={str(k): path_of(v, "masks") for k, v in parsed["masks"].items()},
        report=text("report", ""), reports={str(k): v for k, v in parsed["reports"].items() if not _empty(v)},
        report_lang=text("report_lang", "en"),
        translations={str(lang): {str(k): v for k, v in t.items() if not _empty(v)}
                      for lang, t in parsed["translations"].items()},
        age=age, sex=None if _empty(row.get("sex")) else str(row["sex"]).upper()[:1],
        labels={str(k): int(v) for k, v in parsed["labels"].items()},
        measurements={str(k): Measurement(float(m["value"]), m["unit"])
                      for k, m in parsed["measurements"].items()},
        ecg_lead_map={str(k): v for k, v in parsed["ecg_lead_map"].items()},
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


def read_manifest(path: str | Path, data_root: str | Path | None = None) -> list[Study]:
    """Read, parse and check every row (the checks `validate_manifest` lists); raises a
    ManifestError naming the row, the column and what was expected at the first bad row.

    data_root: a folder every file of the manifest must lie in, symlinks resolved (default:
    `MMCARDIO_DATA_ROOT` when set, else anywhere)."""
    path = Path(path)
    studies = []
    for i, study, problems in checked_rows(read_rows(path), path, data_root):
        if problems:
            raise ManifestError(f"row {i}: {problems[0].message}", path, problems[0].column)
        studies.append(study)
    return studies


def checked_rows(rows: list[dict[str, Any]], path: Path, data_root: str | Path | None = None,
                 ) -> Iterator[tuple[int, Study | None, list[Problem]]]:
    """(row, parsed study or None, its problems) for every row: the rules of a manifest row,
    shared by `read_manifest` (stops at the first problem) and `validate_manifest` (lists all)."""
    root = path.resolve().parent
    confined_to = _data_root(data_root)
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        try:
            study = study_from_row(row, root, i, str(path))
        except ManifestError as err:
            yield i, None, [Problem(i, err.field, None, err.problem.removeprefix(f"row {i}: "))]
            continue
        yield i, study, _row_problems(study, i, seen) + _escaping_files(study, i, confined_to)


def _data_root(given: str | Path | None) -> Path | None:
    value = given if given is not None else os.environ.get(DATA_ROOT_ENV)
    if not value:
        return None
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise ManifestError("the data root is not a folder", root, DATA_ROOT_ENV if given is None else "data_root")
    return root


def _escaping_files(study: Study, i: int, root: Path | None) -> list[Problem]:
    """A problem for each file that resolves (through .. and symlinks) outside `root`."""
    if root is None:
        return []
    return [Problem(i, column, str(file), f"outside the data root {root}")
            for column, file in study.files() if not file.resolve().is_relative_to(root)]


def write_manifest(studies: Iterable[Study], path: str | Path) -> Path:
    """Write studies atomically; the format follows the suffix; paths are made relative."""
    path = Path(path)
    root = path.resolve().parent
    rows = [s.to_row(root) for s in studies]
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix in (".csv", ".parquet", ".pq"):
            frame = pd.DataFrame(rows, columns=list(COLUMNS))
            for col in STRUCTURED:  # JSON text (in Parquet too: nested maps vary by row)
                frame[col] = [json.dumps(v, ensure_ascii=False) for v in frame[col]]
            if suffix == ".csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
        elif suffix in (".jsonl", ".ndjson"):
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        else:
            raise ManifestError(f"unknown manifest format {suffix!r}; expected .csv, .parquet or .jsonl", path)
    return path


def is_language_code(lang: str) -> bool:
    """An ISO 639-1 language code as manifests write it ("en", "zh", "de")."""
    return re.fullmatch(r"[a-z]{2}", lang) is not None


def _row_problems(study: Study, i: int, seen: dict[str, int]) -> list[Problem]:
    """The checks of parsed row `i` (`seen`: study_id -> first row, extended here)."""
    out = []
    if study.study_id in seen:
        out.append(Problem(i, "study_id", None, f"duplicate study_id {study.study_id!r} (first at row {seen[study.study_id]})"))
    else:
        seen[study.study_id] = i
    if study.split not in SPLITS:
        out.append(Problem(i, "split", None, f"expected one of {SPLITS}, got {study.split!r}"))
    if not is_language_code(study.report_lang):
        out.append(Problem(i, "report_lang", None, f"expected an ISO 639-1 code (lower case, e.g. "
                           f"{', '.join(LANGUAGES)}, de), got {study.report_lang!r}"))
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
        if not is_language_code(lang) or lang == study.report_lang:
            out.append(Problem(i, "translations", None, f"language {lang!r}: expected an ISO 639-1 code "
                               f"other than the report's ({study.report_lang!r})"))
        for key in sorted(set(texts) - {"report", *known}):
            out.append(Problem(i, "translations", None, f"{lang}: key {key!r}: expected \"report\" or a "
                               f"modality, one of {known}"))
    return out
