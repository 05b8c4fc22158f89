"""PTB-XL: 21,799 clinical 12-lead ECGs (10 s) of 18,869 patients with cardiologists' SCP-ECG
statements and reports.

Dataset: Wagner P, Strodthoff N, Bousseljot R-D, Kreiseler D, Lunze FI, Samek W, Schaeffter T.
"PTB-XL, a large publicly available electrocardiography dataset." Scientific Data 7:154 (2020),
doi:10.1038/s41597-020-0495-6; and the release: Wagner P, Strodthoff N, Bousseljot R, Samek W,
Schaeffter T. PTB-XL (version 1.0.3), PhysioNet (2022), doi:10.13026/kfzx-aw45. Licence:
Creative Commons Attribution 4.0 International (CC BY 4.0). Get it from
https://physionet.org/content/ptb-xl/ (releases 1.0.1 with 21,837 records, 1.0.2 with 21,801
and 1.0.3 with 21,799 share this layout and are all read).

Layout (ROOT is the unpacked release)::

    ROOT/ptbxl_database.csv   ecg_id, patient_id, age, sex, report, scp_codes, strat_fold,
                              filename_lr, filename_hr (other columns are not read)
    ROOT/scp_statements.csv   the 71 SCP codes (first column) with the 0/1 columns diagnostic,
                              form and rhythm
    ROOT/records100/00000/00001_lr.hea/.dat ...   WFDB records at 100 Hz
    ROOT/records500/00000/00001_hr.hea/.dat ...   WFDB records at 500 Hz (12 leads, mV)

What the manifest gets:

- ecg: the record's WFDB header at the `rate` option (500, default: `filename_hr`; 100:
  `filename_lr`). Building only checks that the header exists (decoding 21,799 records is
  `mmcardio validate`'s work, which reads each with `read_ecg`).
- study_id: the plain `ecg_id` ("1", "21837"), so that rows join back to ptbxl_database.csv and
  to PTB-XL+ by the dataset's own key; patient_id: `patient_id` without its ".0" ("15709").
  Manifests of several datasets merged into one need a prefix on both ids (patients too), which
  is the merge's job, not this recipe's.
- split: the dataset's recommendation, patient-disjoint by construction: `strat_fold` 1-8
  train, 9 val, 10 test (folds 9 and 10 hold only human-validated reports).
- age in years, except PTB-XL's 300, which stands for "older than 89" (HIPAA): written as 90.
  sex: 0 -> "M", 1 -> "F".
- report: the `report` text verbatim (blank reports become empty); report_lang: `report_language`
  (PTB-XL's reports are mostly German, some English, a few Swedish).
- labels: from `scp_codes` by `SCP_FINDINGS` below, every code checked against
  scp_statements.csv. No measurements (PTB-XL has none; PTB-XL+ is a separate dataset).

SCP statements and findings (the dataset's `scp_codes` is {code: likelihood}; a likelihood of 0
means "not stated", which every form and rhythm statement has). A finding is 1 when a code that
states it is present; else it is left out when a code leaves it unsettled; else 0 when the
record has a statement of the kind that would have named it ("0 needs": a record coded with
a rhythm other than AFIB has no atrial fibrillation; a record without any rhythm statement
says nothing about its rhythm), else it is left out:

==================  ===================  ===============  ==========  ===============================
finding             1 when               left out when    0 needs     why
==================  ===================  ===============  ==========  ===============================
normal_ecg          NORM                 -                diagnostic  NORM is "normal ECG"; also 0 when
                                                                      any finding below is 1 (the
                                                                      package's normal ECG has none)
sinus_bradycardia   SBRAD                -                rhythm      same definition
sinus_tachycardia   STACH                -                rhythm      same definition
afib                AFIB                 -                rhythm      same; flutter (AFLT) is a 0
lbbb                CLBBB                -                diagnostic  complete LBBB; incomplete
                                                                      (ILBBB) is not complete: a 0
lvh                 LVH, VCLVH           HVOLT, SEHYP     diagnostic  the ECG's LVH is a voltage finding
                                                                      (VCLVH: voltage criteria for LVH);
                                                                      high voltage alone or septal
                                                                      hypertrophy settle neither way
av_block_1          1AVB, LPR            2AVB, 3AVB       diagnostic  PR > 200 ms (LPR: prolonged PR);
                                                                      higher-degree blocks have no
                                                                      single prolonged PR
stemi_anterior,     never                always           -           PTB-XL's MI statements (IMI, ASMI,
stemi_inferior                                                        AMI, ...) are infarcts of any age,
                                                                      mostly old; its injury statements
                                                                      (INJAS, INJIN, ...) are
                                                                      subendocardial injury, not ST
                                                                      elevation; STE_ names no territory
==================  ===================  ===============  ==========  ===============================

Option `min_likelihood` (default 0, every statement counts, as in the dataset's benchmark,
Strodthoff et al., IEEE JBHI 2021): diagnostic statements with a likelihood above 0 and below it
are uncertain, which leaves their finding out (the labeller's CheXpert U-Ignore rule).
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from mmcardio.datasets.public import Recipe
from mmcardio.datasets.public.common import read_table
from mmcardio.errors import ManifestError
from mmcardio.study import Study

DATABASE, STATEMENTS = "ptbxl_database.csv", "scp_statements.csv"
#: `rate` option -> the column naming each record at that sampling rate.
RATE_COLUMNS = {"500": "filename_hr", "100": "filename_lr"}
SPLIT_OF_FOLD = {**{fold: "train" for fold in range(1, 9)}, 9: "val", 10: "test"}
#: PTB-XL writes 300 for every age above 89 (HIPAA); the manifest gets the lowest such age.
HIPAA_AGE, OVER_89 = 300, 90.0
SEX_OF_CODE = {0: "M", 1: "F"}
STATEMENT_KINDS = ("diagnostic", "form", "rhythm")


@dataclass(frozen=True)
class FindingCodes:
    """How SCP codes decide one finding (see the module's table)."""

    stated_by: tuple[str, ...]
    unsettled_by: tuple[str, ...]
    zero_needs: str  # a statement kind: the record was read for the finding when it has one


SCP_FINDINGS = {
    "normal_ecg": FindingCodes(("NORM",), (), "diagnostic"),
    "sinus_bradycardia": FindingCodes(("SBRAD",), (), "rhythm"),
    "sinus_tachycardia": FindingCodes(("STACH",), (), "rhythm"),
    "afib": FindingCodes(("AFIB",), (), "rhythm"),
    "lbbb": FindingCodes(("CLBBB",), (), "diagnostic"),
    "lvh": FindingCodes(("LVH", "VCLVH"), ("HVOLT", "SEHYP"), "diagnostic"),
    "av_block_1": FindingCodes(("1AVB", "LPR"), ("2AVB", "3AVB"), "diagnostic"),
}

#: Words only one of PTB-XL's report languages uses (lower case; German reports spell umlauts
#: both as "ä" and "ae"). Chosen from the dataset's report vocabulary: rhythm, axis and
#: conclusion words, and function words.
LANGUAGE_WORDS = {
    "de": {"sinusrhythmus", "sinusbradykardie", "sinustachykardie", "sinusarrhythmie", "arrhythmie",
           "vorhofflimmern", "lagetyp", "linkstyp", "rechtstyp", "steiltyp", "überdrehter",
           "ueberdrehter", "normales", "sonst", "abnorm", "abnormales", "pathologisch",
           "pathologisches", "unspezifisches", "linksschenkelblock", "rechtsschenkelblock",
           "unvollständiger", "vollständiger", "vollstaendiger", "ableitungen", "möglich",
           "wahrscheinlich", "verdacht", "und", "oder", "mit", "nicht", "bericht", "unbestätigter"},
    "en": {"rhythm", "the", "and", "with", "of", "are", "is", "left", "right", "axis", "deviation",
           "possible", "probable", "consistent", "waves", "bundle", "branch", "trace", "only"},
    "sv": {"sinusrytm", "förmaksflimmer", "vänster", "vänsterställd", "höger", "högerställd",
           "kammarhypertrofi", "och", "med", "inte", "ej", "avvikande", "normalt", "sannolikt", "möjlig"},
}
#: The language of most PTB-XL reports: what a report without any of the words above is taken for.
MAIN_LANGUAGE = "de"


def report_language(text: str) -> str:
    """The ISO 639-1 code of a PTB-XL report: the language with the most of its own words in
    `text` (`LANGUAGE_WORDS`), German on a tie or when none occurs. By hand because no
    dependency of the package identifies languages, and three known ones need only this."""
    words = re.findall(r"[^\W\d_]+", text.lower())
    counts = {lang: sum(word in vocabulary for word in words) for lang, vocabulary in LANGUAGE_WORDS.items()}
    best = max(counts.values())
    return MAIN_LANGUAGE if best == 0 or counts[MAIN_LANGUAGE] == best else max(counts, key=counts.get)


def read_statement_kinds(root: Path) -> dict[str, set[str]]:
    """SCP code -> its kinds ("diagnostic", "form", "rhythm") from scp_statements.csv; every code
    `SCP_FINDINGS` names must be there."""
    path = root / STATEMENTS
    table = read_table(path, STATEMENT_KINDS, index_col=0)
    kinds = {str(code): {kind for kind in STATEMENT_KINDS if table.at[code, kind] == 1} for code in table.index}
    for finding, codes in SCP_FINDINGS.items():
        for code in codes.stated_by + codes.unsettled_by:
            if code not in kinds:
                raise ManifestError(f"SCP code {code} (read for {finding}) is not in the table; is this "
                                    "PTB-XL's scp_statements.csv?", path, code)
    return kinds


def parse_scp_codes(cell: object, ecg_id: int, path: Path, kinds: dict[str, set[str]]) -> dict[str, float]:
    """A record's {code: likelihood}, every code known to scp_statements.csv."""
    try:
        codes = ast.literal_eval(cell) if isinstance(cell, str) else None
    except (ValueError, SyntaxError):
        codes = None
    if not isinstance(codes, dict):
        raise ManifestError(f"ecg_id {ecg_id}: expected a dict of SCP codes like {{'NORM': 100.0}}, got "
                            f"{cell!r}", path, "scp_codes")
    unknown = sorted(set(codes) - set(kinds))
    if unknown:
        raise ManifestError(f"ecg_id {ecg_id}: SCP codes {unknown} are not in {STATEMENTS}", path, "scp_codes")
    return {str(code): float(likelihood) for code, likelihood in codes.items()}


def scp_labels(codes: dict[str, float], kinds: dict[str, set[str]], min_likelihood: float = 0.0) -> dict[str, int]:
    """Findings a record's SCP codes decide, by `SCP_FINDINGS` (see the module's table)."""
    uncertain = {c for c, p in codes.items() if "diagnostic" in kinds[c] and 0 < p < min_likelihood}
    stated = set(codes) - uncertain
    present_kinds = {kind for code in codes for kind in kinds[code]}
    labels = {}
    for finding, rule in SCP_FINDINGS.items():
        if stated & set(rule.stated_by):
            labels[finding] = 1
        elif not (uncertain & set(rule.stated_by) or set(codes) & set(rule.unsettled_by)) \
                and rule.zero_needs in present_kinds:
            labels[finding] = 0
    if any(value == 1 for finding, value in labels.items() if finding != "normal_ecg"):
        labels["normal_ecg"] = 0
    return labels


def _patient_id(value: object, ecg_id: int, path: Path) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer():
        raise ManifestError(f"ecg_id {ecg_id}: expected a patient number, got {value!r}", path, "patient_id")
    return str(int(number))


def _age(value: object, ecg_id: int, path: Path) -> float | None:
    if pd.isna(value):
        return None
    age = OVER_89 if float(value) == HIPAA_AGE else float(value)
    if not 0 <= age <= 120:
        raise ManifestError(f"ecg_id {ecg_id}: expected years (or {HIPAA_AGE} for over 89), got {value!r}",
                            path, "age")
    return age


def _sex(value: object, ecg_id: int, path: Path) -> str | None:
    if pd.isna(value):
        return None
    if value not in SEX_OF_CODE:
        raise ManifestError(f"ecg_id {ecg_id}: expected 0 (male) or 1 (female), got {value!r}", path, "sex")
    return SEX_OF_CODE[value]


def _split(value: object, ecg_id: int, path: Path) -> str:
    if value not in SPLIT_OF_FOLD:
        raise ManifestError(f"ecg_id {ecg_id}: expected a fold 1-10, got {value!r}", path, "strat_fold")
    return SPLIT_OF_FOLD[value]


def _header(root: Path, record: object, ecg_id: int, column: str, path: Path) -> Path:
    if not isinstance(record, str) or not record.strip():
        raise ManifestError(f"ecg_id {ecg_id}: expected a record path like records500/00000/00001_hr, "
                            f"got {record!r}", path, column)
    header = root / f"{record.strip()}.hea"
    if not header.is_file():
        raise ManifestError(f"the WFDB header of ecg_id {ecg_id} ({column}) is missing; is the "
                            f"download complete?", header)
    return header


def _options(rate: str, min_likelihood: str) -> tuple[str, float]:
    if rate not in RATE_COLUMNS:
        raise ManifestError(f"expected one of {sorted(RATE_COLUMNS)} (Hz), got {rate!r}", field="rate")
    try:
        threshold = float(min_likelihood)
    except ValueError:
        threshold = math.nan
    if not 0 <= threshold <= 100:
        raise ManifestError(f"expected a likelihood 0-100, got {min_likelihood!r}", field="min_likelihood")
    return RATE_COLUMNS[rate], threshold


def build(root: Path, files_dir: Path, progress: bool = False, limit: int | None = None,
          rate: str = "500", min_likelihood: str = "0") -> list[Study]:
    """One study per row of ptbxl_database.csv (the first `limit` rows when given)."""
    column, threshold = _options(str(rate), str(min_likelihood))
    kinds = read_statement_kinds(root)
    path = root / DATABASE
    table = read_table(path, ("ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold", column))
    if limit is not None:
        table = table.head(limit)
    studies = []
    for row in tqdm(table.itertuples(index=False), total=len(table), desc="ptbxl", disable=not progress):
        ecg_id = int(row.ecg_id)
        report = row.report if isinstance(row.report, str) and row.report.strip() else ""
        codes = parse_scp_codes(row.scp_codes, ecg_id, path, kinds)
        studies.append(Study(
            study_id=str(ecg_id), patient_id=_patient_id(row.patient_id, ecg_id, path),
            split=_split(row.strat_fold, ecg_id, path), ecg=_header(root, getattr(row, column), ecg_id, column, path),
            report=report, report_lang=report_language(report), age=_age(row.age, ecg_id, path),
            sex=_sex(row.sex, ecg_id, path), labels=scp_labels(codes, kinds, threshold)))
    return studies


RECIPE = Recipe(
    name="ptbxl", title="PTB-XL", modality="ecg",
    fills="ECG (WFDB header), official splits (strat_fold 1-8/9/10), age, sex, report (German, "
          "English or Swedish, detected), labels from the SCP codes (7 ECG findings; no STEMI labels)",
    citation="Wagner P, Strodthoff N, Bousseljot R-D, Kreiseler D, Lunze FI, Samek W, Schaeffter T. PTB-XL, "
             "a large publicly available electrocardiography dataset. Scientific Data 7:154 (2020). "
             "doi:10.1038/s41597-020-0495-6",
    licence="CC BY 4.0", url="https://physionet.org/content/ptb-xl/",
    build=build,
    options={"rate": "sampling rate of the records named: 500 (filename_hr, default) or 100 (filename_lr)",
             "min_likelihood": "diagnostic statements with a likelihood above 0 and below this are uncertain "
                               "and leave their finding out (default 0: every statement counts)"},
)
