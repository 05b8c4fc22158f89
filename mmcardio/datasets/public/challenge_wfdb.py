"""PhysioNet/Computing in Cardiology Challenge 2020/2021: 12-lead ECGs of eight source databases,
redistributed as WFDB records whose headers carry age, sex and SNOMED CT diagnoses.

Dataset: Perez Alday EA, Gu A, Shah AJ, Robichaux C, Wong AI, Liu C, Liu F, Rad AB, Elola A,
Seyedi S, Li Q, Sharma A, Clifford GD, Reyna MA. "Classification of 12-lead ECGs: the
PhysioNet/Computing in Cardiology Challenge 2020." Physiological Measurement 41(12):124003
(2020), doi:10.1088/1361-6579/abc960; Reyna MA, Sadr N, Perez Alday EA, Gu A, Shah AJ, Robichaux
C, Rad AB, Elola A, Seyedi S, Ansari S, Ghanbari H, Li Q, Sharma A, Clifford GD. "Will two do?
Varying dimensions in electrocardiography: the PhysioNet/Computing in Cardiology Challenge 2021."
Computing in Cardiology 48 (2021), doi:10.23919/CinC53138.2021.9662687. Get it from
https://physionet.org/content/challenge-2021/ (1.0.3; the 2020 release's Training_WFDB,
Training_2, Training_StPetersburg, Training_PTB, WFDB and Training_E folders have the same record
format and are read too). The Challenge's data are CC BY 4.0; the source databases' own licences
are in `SOURCES` (CPSC 2018 states none).

Layout: any folder tree under ROOT; every ``*.hea`` is one record, e.g. (2021)::

    ROOT/training/cpsc_2018/g1/A0001.hea + A0001.mat
    ROOT/training/chapman_shaoxing/g1/JS00001.hea + JS00001.mat   (or a flat folder of them)

The header is WFDB with MATLAB v4 signal files ("A0001.mat 16+24 1000/mV ...": format 16 after
the .mat file's 24-byte header, which wfdb reads as a byte offset; the ECG reader decodes them)
and comment lines ``#Age: 74``, ``#Sex: Male`` (Female; "Unknown"), ``#Dx: 59118001,164884008``
(SNOMED CT codes), ``#Rx``, ``#Hx``, ``#Sx`` (always "Unknown"; not read). The PhysioNet release
"A large scale 12-lead ECG database for arrhythmia study" (Zheng J et al., 2022, JS00001-JS45551,
the Chapman-Shaoxing and Ningbo records) has the same headers and is read too.

What the manifest gets:

- ecg: the record's .hea; study_id: the record name (names are unique across the sources; a name
  found twice under ROOT is an error: two releases unpacked into one folder).
- age from ``#Age`` ("NaN", "Unknown" and values outside 0-120 are unknown); sex from ``#Sex``.
- patient_id and split: no official split is public (the Challenge's validation and test sets are
  hidden), so `common.patient_split`. The Challenge's headers carry no subject id: a record is its
  own patient where its source has one ECG per patient (Chapman-Shaoxing, Ningbo) or identifies
  no subjects (CPSC 2018, Georgia: taken as one per patient). PTB (549 records of 290 subjects),
  INCART (75 records of 32 subjects) and PTB-XL (21,837 records of 18,885 patients) do have
  repeats that the renamed records no longer show: each of these sources is one patient group
  (patient_id "<database>:unidentified"), so all its records share a split and none leaks. For
  PTB-XL's own patient-wise folds use the `ptbxl` recipe on the PTB-XL release.
- no report (the Challenge has none), no measurements.
- labels from ``#Dx`` (the source is the record name's prefix, `SOURCES`):

  * 1 when a code of `FINDING_CODES` for the finding is listed.
  * else left out when a code of `UNSETTLED_CODES` for it is listed (the code may or may not
    mean the finding: "bradycardia" without "sinus", "bundle branch block" without a side, ...).
  * else 0 when the source's labelling names the finding (`Source.rules_out`): its Dx list is
    the read of this ECG in a vocabulary that has the finding, so its absence is a negative. The
    Challenge's dx_mapping tables (counts per source) show which sources use which codes: CPSC
    2018 coded only its nine classes (normal, AF, I-AVB, LBBB, RBBB, PAC, PVC, STD, STE), so it
    rules out only normal_ecg, afib, av_block_1 and lbbb. CPSC 2018 Extra's lists are
    heterogeneous hospital statements (sinus rhythm on 4 of 3,453 records): absence rules out
    nothing. PTB's and INCART's codes are the subjects' clinical diagnoses (reason for
    admission, Holter patients' diagnoses), not reads of the record: they get no labels at all.
    PTB-XL, Georgia, Chapman-Shaoxing and Ningbo were read in full vocabularies: every finding
    below is ruled out by its absence. A source not in `SOURCES` rules out nothing.
  * normal_ecg is 1 when the list is sinus rhythm (426783006) alone and the source rules it out
    (CPSC 2018's "Normal" class and PTB-XL's, Georgia's, Chapman's and Ningbo's reads with no other
    statement); it is 0 when any other code is listed, except `NORMAL_VARIANT_CODES` (sinus
    arrhythmia, early repolarization, rotation), which leave it out. The code itself names a
    rhythm, not a normal ECG (PTB-XL, Georgia and Ningbo list it beside abnormalities): only a
    list with nothing else in it is a normal read.
  * stemi_anterior and stemi_inferior are never labelled: the Challenge's codes for infarction
    ("anterior myocardial infarction" 54329005, "acute myocardial infarction" 57054005) and for
    "st elevation" 164931005 state no acute ST elevation in a named territory.

The Challenge scores 733534002/164909002 (complete LBBB / LBBB) as one diagnosis; both are lbbb.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import wfdb
from tqdm import tqdm

from mmcardio.datasets.public import Recipe
from mmcardio.datasets.public.common import patient_split
from mmcardio.datasets.readers.ecg_wfdb import WFDB_ERRORS
from mmcardio.errors import ManifestError
from mmcardio.study import Study

SINUS_RHYTHM = "426783006"

#: SNOMED CT code -> (finding, the Challenge's name of the code): listed, the ECG has the finding.
FINDING_CODES = {
    "426177001": ("sinus_bradycardia", "sinus bradycardia"),
    "427084000": ("sinus_tachycardia", "sinus tachycardia"),
    "164889003": ("afib", "atrial fibrillation"),
    "426749004": ("afib", "chronic atrial fibrillation"),
    "314208002": ("afib", "rapid atrial fibrillation"),  # AF with a fast ventricular rate
    "164909002": ("lbbb", "left bundle branch block"),
    "733534002": ("lbbb", "complete left bundle branch block"),  # scored as 164909002
    "164873001": ("lvh", "left ventricular hypertrophy"),
    # Chapman's and Ningbo's LVHV: QRS voltage criteria of LVH met, the package's (voltage) lvh
    "55827005": ("lvh", "left ventricular high voltage"),
    "270492004": ("av_block_1", "1st degree av block"),
    "164947007": ("av_block_1", "prolonged pr interval"),  # PR > 200 ms, as the ptbxl recipe's LPR
}

#: SNOMED CT code -> (finding, name): listed, the finding may be there without its own code.
UNSETTLED_CODES = {
    "426627000": ("sinus_bradycardia", "bradycardia"),  # the rhythm is not said to be sinus
    "195080001": ("afib", "atrial fibrillation and flutter"),
    "282825002": ("afib", "paroxysmal atrial fibrillation"),  # a diagnosis: this ECG may be sinus
    "6374002": ("lbbb", "bundle branch block"),  # no side
    "266249003": ("lvh", "ventricular hypertrophy"),  # no side
    "370365005": ("lvh", "left ventricular strain"),  # the repolarisation pattern of LVH
    "233917008": ("av_block_1", "av block"),  # no degree
    "195042002": ("av_block_1", "2nd degree av block"),  # no single PR interval to call prolonged
    "54016002": ("av_block_1", "mobitz type i wenckebach atrioventricular block"),
    "426183003": ("av_block_1", "mobitz type II atrioventricular block"),
    "27885002": ("av_block_1", "complete heart block"),
}

#: Codes of normal variants: sinus rhythm with them is neither called a normal ECG nor an abnormal one.
NORMAL_VARIANT_CODES = {
    "427393009": "sinus arrhythmia",
    "428417006": "early repolarization",
    "251198002": "clockwise rotation",
    "251199005": "counterclockwise rotation",
    "61721007": "clockwise or counterclockwise vectorcardiographic loop",
}

#: Findings decided by their own codes; normal_ecg is decided by the whole list.
CODED_FINDINGS = ("sinus_bradycardia", "sinus_tachycardia", "afib", "lbbb", "lvh", "av_block_1")
ALL_FINDINGS = ("normal_ecg", *CODED_FINDINGS)


@dataclass(frozen=True)
class Source:
    """One of the Challenge's source databases: how far its Dx lists go and who its patients are."""

    database: str
    licence: str
    rules_out: tuple[str, ...]  # findings whose code's absence is a negative
    reads: bool = True          # the Dx list is a read of this ECG (not the subject's clinical diagnoses)
    one_record_per_patient: bool = True


#: Record-name prefix -> source (the Challenge names records by source: A0001, HR00001, JS00001).
SOURCES = {
    "A": Source("CPSC 2018", "none stated (CPSC 2018; redistributed by the Challenge under CC BY 4.0)",
                ("normal_ecg", "afib", "av_block_1", "lbbb")),
    "Q": Source("CPSC 2018 Extra", "none stated (CPSC 2018; redistributed by the Challenge under CC BY 4.0)", ()),
    "I": Source("St Petersburg INCART", "ODC-By 1.0", (), reads=False, one_record_per_patient=False),
    "S": Source("PTB", "ODC-By 1.0", (), reads=False, one_record_per_patient=False),
    "HR": Source("PTB-XL", "CC BY 4.0", ALL_FINDINGS, one_record_per_patient=False),
    "E": Source("Georgia", "CC BY 4.0", ALL_FINDINGS),
    "JS": Source("Chapman-Shaoxing / Ningbo", "CC BY 4.0", ALL_FINDINGS),
}
UNKNOWN_SOURCE = Source("not one of the Challenge's sources", "unknown", ())

SEXES = {"male": "M", "m": "M", "female": "F", "f": "F"}


def source_of(record: str) -> Source:
    """The source database of a record, from its name's letters ("HR00001" -> PTB-XL)."""
    match = re.fullmatch(r"([A-Za-z]+)\d+", record)
    return SOURCES.get(match.group(1).upper(), UNKNOWN_SOURCE) if match else UNKNOWN_SOURCE


def dx_labels(codes: set[str], source: Source) -> dict[str, int]:
    """The findings a record's Dx codes decide (see the module's docstring)."""
    if not source.reads:
        return {}
    labels = {}
    for finding in CODED_FINDINGS:
        if any(FINDING_CODES.get(code, ("",))[0] == finding for code in codes):
            labels[finding] = 1
        elif finding in source.rules_out and not any(UNSETTLED_CODES.get(code, ("",))[0] == finding
                                                     for code in codes):
            labels[finding] = 0
    if codes - {SINUS_RHYTHM} - set(NORMAL_VARIANT_CODES):
        labels["normal_ecg"] = 0
    elif codes == {SINUS_RHYTHM} and "normal_ecg" in source.rules_out:
        labels["normal_ecg"] = 1
    return labels


def header_fields(header: Path) -> dict[str, str]:
    """The header's "#Key: value" comment lines, keys lower-cased ("age", "sex", "dx")."""
    try:
        comments = wfdb.rdheader(str(header.with_suffix(""))).comments
    except WFDB_ERRORS as err:
        raise ManifestError(f"not a readable WFDB header ({type(err).__name__}: {err})", header) from None
    fields = {}
    for comment in comments:
        key, sep, value = comment.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


def dx_codes(fields: dict[str, str], header: Path) -> set[str]:
    if "dx" not in fields:
        raise ManifestError("expected a '#Dx: <SNOMED CT codes>' comment line, as every Challenge header "
                            "has", header, "Dx")
    codes = {code.strip() for code in fields["dx"].split(",") if code.strip()}
    bad = sorted(code for code in codes if not code.isdigit())
    if bad:
        raise ManifestError(f"expected comma-separated SNOMED CT codes, got {bad}", header, "Dx")
    return codes


def parse_age(text: str | None) -> float | None:
    """Years, or None for "NaN", "Unknown" and ages no person has."""
    try:
        age = float(text or "nan")
    except ValueError:
        return None
    return age if math.isfinite(age) and 0 <= age <= 120 else None


def patient_of(record: str, source: Source) -> str:
    if source.one_record_per_patient:
        return record
    return f"{source.database}:unidentified"


def find_headers(root: Path) -> list[Path]:
    """Every record's header under ROOT, refusing a record name found twice."""
    headers = sorted(root.rglob("*.hea"))
    seen: dict[str, Path] = {}
    for header in headers:
        first = seen.setdefault(header.stem, header)
        if first != header:
            raise ManifestError(f"record {header.stem} is also at {first}: one record per name (two "
                                "releases unpacked under ROOT?)", header)
    return headers


def build(root: Path, files_dir: Path, progress: bool = False, limit: int | None = None) -> list[Study]:
    """One study per header under ROOT (the first `limit` in path order when given)."""
    headers = find_headers(root.absolute())[:limit]
    studies = []
    for header in tqdm(headers, desc="physionet-challenge", disable=not progress):
        fields = header_fields(header)
        source = source_of(header.stem)
        patient = patient_of(header.stem, source)
        studies.append(Study(
            study_id=header.stem, patient_id=patient, split=patient_split(patient), ecg=header,
            age=parse_age(fields.get("age")), sex=SEXES.get(fields.get("sex", "").lower()),
            labels=dx_labels(dx_codes(fields, header), source)))
    return studies


RECIPE = Recipe(
    name="physionet-challenge", title="PhysioNet/CinC Challenge 2020/2021", modality="ecg",
    fills="ECG (WFDB header), patient-disjoint hashed splits (no official split is public; PTB, INCART "
          "and PTB-XL records each kept in one split), age, sex, labels from the SNOMED CT Dx codes "
          "(7 ECG findings where the source's vocabulary has them; no STEMI labels)",
    citation="Perez Alday EA, Gu A, Shah AJ, et al. Classification of 12-lead ECGs: the PhysioNet/Computing "
             "in Cardiology Challenge 2020. Physiol Meas 41(12):124003 (2020). doi:10.1088/1361-6579/abc960; "
             "Reyna MA, Sadr N, Perez Alday EA, et al. Will two do? Varying dimensions in electrocardiography: "
             "the PhysioNet/Computing in Cardiology Challenge 2021. Computing in Cardiology 48 (2021). "
             "doi:10.23919/CinC53138.2021.9662687",
    licence="CC BY 4.0 (the Challenge's release); sources: CPSC 2018 none stated, PTB and INCART ODC-By 1.0, "
            "PTB-XL, Georgia, Chapman-Shaoxing and Ningbo CC BY 4.0",
    url="https://physionet.org/content/challenge-2021/",
    build=build,
)
