"""MIMIC-IV-ECG: about 800,000 diagnostic 12-lead ECGs (10 s, 500 Hz) of about 160,000
patients of the MIMIC-IV Clinical Database, with the ECG cart's report and measurements.

Dataset: Gow B, Pollard T, Nathanson LA, Johnson A, Moody B, Fernandes C, Greenbaum N, Waks JW,
Eslami P, Carbonati T, Chaudhari A, Herbst E, Moukheiber D, Berkowitz S, Mark R, Horng S.
"MIMIC-IV-ECG: Diagnostic Electrocardiogram Matched Subset" (version 1.0). PhysioNet (2023),
doi:10.13026/4nqg-sb35; with PhysioNet's own citation (Goldberger et al., Circulation
101(23):e215-e220, 2000). Licence: version 1.0 is open access on PhysioNet under the Open Data
Commons Open Database License v1.0 (ODbL 1.0), as far as we know; check the project page for
the version you downloaded. Get it from https://physionet.org/content/mimic-iv-ecg/.

Layout (ROOT is the unpacked release)::

    ROOT/record_list.csv           subject_id, study_id, file_name, ecg_time, path
                                   ("files/p1000/p10000032/s40689238/40689238")
    ROOT/machine_measurements.csv  subject_id, study_id, cart_id, ecg_time, report_0 ..
                                   report_17, bandwidth, filtering, rr_interval, p_onset,
                                   p_end, qrs_onset, qrs_end, t_end, p_axis, qrs_axis, t_axis
    ROOT/files/p1000/p10000032/s40689238/40689238.hea/.dat ...   WFDB records
    (waveform_note_links.csv is not read: the cardiologists' notes are in MIMIC-IV-Note)

What the manifest gets, one study per row of record_list.csv:

- ecg: `path` + ".hea". Building only checks that the header exists (decoding 800,035
  records is `mmcardio validate`'s work, which reads each with `read_ecg`).
- study_id: the plain `study_id`; patient_id: the plain `subject_id` (join keys of MIMIC-IV).
- split: MIMIC-IV-ECG has no official split: `common.patient_split(subject_id)`, so that
  every study of a subject lands in one split.
- report: the cart's statements, the non-empty `report_N` cells in column order, each trimmed
  and ended with a period unless it already ends in punctuation, joined by spaces ("Sinus
  rhythm. Borderline ECG."); report_lang "en". A study without a machine_measurements row
  (the table is optional per study) gets no report, no labels and no measurements.
- labels: the report read by the package's labeller (`label_report(text, "en")`, uncertain
  statements left out by `labels_for_manifest`), ECG findings only.
- measurements (`INTERVALS`, all in ms from the cart's global fiducial times): heart_rate =
  60000 / rr_interval (bpm, to 0.1), pr_interval = qrs_onset - p_onset, qrs_duration =
  qrs_end - qrs_onset, qt_interval = t_end - qrs_onset. MIMIC writes 29999 where the cart
  measured nothing (no P wave in atrial fibrillation): a time or RR interval outside
  0 to 10,000 ms (the recording's length) is missing, and so is an interval that is not
  positive. No age or sex (those are in MIMIC-IV's patients table, not in this dataset).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from mmcardio.datasets.public import Recipe
from mmcardio.datasets.public.common import patient_split, read_table
from mmcardio.datasets.synthetic.findings import ECG_LABELS, UNITS
from mmcardio.errors import ManifestError
from mmcardio.records import Measurement
from mmcardio.report.labeller import label_report, labels_for_manifest
from mmcardio.study import Study

RECORDS, MEASUREMENTS = "record_list.csv", "machine_measurements.csv"
IDS = ("subject_id", "study_id")
REPORT_COLUMN = re.compile(r"report_(\d+)")
#: Measurement -> (start, end) fiducial columns of machine_measurements.csv, times in ms.
INTERVALS = {"pr_interval": ("p_onset", "qrs_onset"), "qrs_duration": ("qrs_onset", "qrs_end"),
             "qt_interval": ("qrs_onset", "t_end")}
TIME_COLUMNS = ("rr_interval", "p_onset", "qrs_onset", "qrs_end", "t_end")
#: A 10-s recording holds no time or RR interval of 10,000 ms or more: such values (29999) mean
#: "not measured".
RECORDING_MS = 10_000.0


def read_ids(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """`table` with its subject_id and study_id as strings of whole numbers; each study once."""
    for column in IDS:
        numbers = pd.to_numeric(table[column], errors="coerce")
        bad = numbers.isna() | (numbers % 1 != 0)
        if bad.any():
            raise ManifestError(f"line {int(bad.idxmax()) + 2}: expected a whole number, got "
                                f"{table[column][bad].iloc[0]!r}", path, column)
        table[column] = numbers.astype("int64").astype(str)
    repeated = table["study_id"][table["study_id"].duplicated()]
    if len(repeated):
        raise ManifestError(f"study {repeated.iloc[0]} is listed twice; each study_id is one ECG", path, "study_id")
    return table


def read_measurements(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """machine_measurements.csv (the columns used) and its report columns in order."""
    path = root / MEASUREMENTS
    used = {"subject_id", "study_id", *TIME_COLUMNS}
    table = read_table(path, sorted(used), usecols=lambda c: c in used or REPORT_COLUMN.fullmatch(c))
    reports = sorted((c for c in table.columns if REPORT_COLUMN.fullmatch(c)),
                     key=lambda c: int(REPORT_COLUMN.fullmatch(c).group(1)))
    if not reports:
        raise ManifestError("missing the report columns report_0, report_1, ...", path, "report_0")
    for column in TIME_COLUMNS:
        try:
            table[column] = pd.to_numeric(table[column])
        except (ValueError, TypeError):
            raise ManifestError("expected numbers (ms)", path, column) from None
    return read_ids(table, path), reports


def report_text(lines: list[object]) -> str:
    """The cart's statements as one text (see the module docstring)."""
    statements = [line.strip() for line in lines if isinstance(line, str) and line.strip()]
    return " ".join(s if s[-1] in ".!?:;" else f"{s}." for s in statements)


def _time_ms(value: float) -> float | None:
    return float(value) if math.isfinite(value) and 0 <= value < RECORDING_MS else None


def measurements_of(row: dict) -> dict[str, Measurement]:
    """Heart rate and intervals from the cart's fiducial times (sentinels refused)."""
    out = {}
    rr = _time_ms(row["rr_interval"])
    if rr:
        out["heart_rate"] = Measurement(round(60_000.0 / rr, 1), UNITS["heart_rate"])
    for name, (start_column, end_column) in INTERVALS.items():
        start, end = _time_ms(row[start_column]), _time_ms(row[end_column])
        if start is not None and end is not None and end > start:
            out[name] = Measurement(end - start, UNITS[name])
    return out


def build(root: Path, files_dir: Path, progress: bool = False, limit: int | None = None) -> list[Study]:
    """One study per row of record_list.csv (the first `limit` rows when given)."""
    records_path = root / RECORDS
    records = read_ids(read_table(records_path, (*IDS, "path"))[[*IDS, "path"]], records_path)
    if limit is not None:
        records = records.head(limit)
    machine, report_columns = read_measurements(root)
    rows = records.merge(machine.drop(columns="subject_id"), on="study_id", how="left", indicator="measured")
    labels_of: dict[str, dict[str, int]] = {}  # the carts' reports repeat: each text is labelled once
    studies = []
    for record in tqdm(rows.itertuples(index=False), total=len(rows), desc="mimic-iv-ecg", disable=not progress):
        row = record._asdict()
        header = root / f"{str(row['path']).strip()}.hea"
        if not header.is_file():
            raise ManifestError(f"the WFDB header of study {row['study_id']} is missing; is the download "
                                "complete?", header)
        measured = row["measured"] == "both"
        report = report_text([row[c] for c in report_columns]) if measured else ""
        if report not in labels_of:
            found = labels_for_manifest(label_report(report, "en")) if report else {}
            labels_of[report] = {name: value for name, value in found.items() if name in ECG_LABELS}
        studies.append(Study(
            study_id=row["study_id"], patient_id=row["subject_id"], split=patient_split(row["subject_id"]),
            ecg=header, report=report, report_lang="en", labels=dict(labels_of[report]),
            measurements=measurements_of(row) if measured else {}))
    return studies


RECIPE = Recipe(
    name="mimic-iv-ecg", title="MIMIC-IV-ECG 1.0", modality="ecg",
    fills="ECG (WFDB header), patient-hashed splits (no official split), the cart's report (en), "
          "labels read from it, heart rate, PR, QRS and QT from the cart's measurements",
    citation="Gow B, Pollard T, Nathanson LA, Johnson A, Moody B, Fernandes C, Greenbaum N, Waks JW, Eslami P, "
             "Carbonati T, Chaudhari A, Herbst E, Moukheiber D, Berkowitz S, Mark R, Horng S. MIMIC-IV-ECG: "
             "Diagnostic Electrocardiogram Matched Subset (version 1.0). PhysioNet (2023). "
             "doi:10.13026/4nqg-sb35",
    licence="Open Data Commons Open Database License v1.0 (ODbL), PhysioNet open access (v1.0; check "
            "the project page for your version)",
    url="https://physionet.org/content/mimic-iv-ecg/",
    build=build,
)
