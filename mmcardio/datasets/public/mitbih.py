"""MIT-BIH-style WFDB folders: the MIT-BIH Arrhythmia Database (48 half-hour two-lead ambulatory
ECGs of 47 subjects, every beat and rhythm change annotated) and PhysioNet Holter databases in
the same layout.

Dataset: Moody GB, Mark RG. "The impact of the MIT-BIH Arrhythmia Database." IEEE Engineering in
Medicine and Biology Magazine 20(3):45-50 (2001), doi:10.1109/51.932724; Goldberger AL, Amaral
LAN, Glass L, et al. "PhysioBank, PhysioToolkit, and PhysioNet." Circulation 101(23):e215-e220
(2000), doi:10.1161/01.CIR.101.23.e215. Licence: Open Data Commons Attribution 1.0 (ODC-By 1.0).
Get it from https://physionet.org/content/mitdb/ (1.0.0).

Also read, same layout and licence: the MIT-BIH Atrial Fibrillation Database (afdb; Moody GB,
Mark RG, "A new method for detecting atrial fibrillation using R-R intervals", Computers in
Cardiology 10:227-230, 1983; 25 subjects, one record each) and the Long-Term AF Database (ltafdb;
Petrutiu S, Sahakian AV, Swiryn S, Europace 9:466-470, 2007, doi:10.1093/europace/eum096; 84
subjects, one record each). Their channels are named "ECG1"/"ECG2", no lead, and their
documentation does not say which leads they are: the ECG reader refuses channels that name no
lead unless told which they are, so `mmcardio validate` lists those records, unless the option
`lead_map` (e.g. `--option lead_map=ECG1=II,ECG2=V1`, what you know of your copy) fills every
study's `ecg_lead_map`. Not supported: the European ST-T Database (90 records of 79
subjects; which records share a subject is not in `SAME_SUBJECT`, so its splits could leak).

Layout (ROOT is the unpacked database)::

    ROOT/RECORDS          the record names, one a line (without it: every ROOT/*.hea)
    ROOT/100.hea          WFDB header: "100 2 360 650000", signals "100.dat 212 200 11 1024 ...
                          MLII" and "... V5"; comments "# 69 M 1085 1629 x1" (age, sex, ...) and
                          the medications
    ROOT/100.dat          the signals (format 212)
    ROOT/100.atr          reference annotations: beats (N, L, R, V, A, /, ...) and rhythm
                          changes (symbol "+" with aux_note "(N", "(AFIB", "(SBR", "(AFL", ...)

MIT-BIH's upper channel is modified limb lead II (MLII, read as lead II, "modified"); the lower
is "usually a modified lead V1 (occasionally V2 or V5, and in one instance V4)" (the database's
directory), which the header cannot say: the reader takes a plain "V1" as measured.
The x_mitdb/ subfolder (excerpts of records 108 and 207) is not read. A record whose signal file
is absent (afdb 00735 and 03665 ship annotations only) is skipped and logged.

What the manifest gets:

- ecg: the record's .hea; study_id: the record name; age and sex from the first header comment
  ("69 M ...": an age outside 0-120 or "?" is unknown; afdb headers have no comments).
- patient_id: the record name, except the records of one subject in `SAME_SUBJECT` (the MIT-BIH
  Arrhythmia Database directory: "Records 201 and 202 came from the same male subject"); split:
  `common.patient_split` of the patient (the databases have no official split).
- labels from reference.atr, read with `wfdb.rdann` (record-level: any episode or beat counts):

  * afib: 1 when a rhythm annotation "(AFIB" is present; sinus_bradycardia: "(SBR"; lbbb: a
    beat annotated "L" (left bundle branch block beat, the annotators' own definition).
  * 0 when the record has annotations of that kind (rhythm changes, beats) without it, and the
    symbol is in the annotators' vocabulary, that is, used on some record read from ROOT: afdb's
    annotators marked only AFIB, AFL, J and N rhythms and no beats, so its records get no
    sinus_bradycardia and no lbbb label, rather than a 0 no one decided.
  * never labelled: normal_ecg (a diagnostic 12-lead read; these are two-lead Holter excerpts
    annotated beat by beat), sinus_tachycardia (the MIT-BIH rhythm vocabulary has no such label;
    "(SVTA" is supraventricular tachyarrhythmia), lvh, stemi_anterior and stemi_inferior (no
    annotation names them; two ambulatory leads cannot show them) and av_block_1 (no annotation
    for it: "(BII" is second-degree block; PR intervals are not annotated).
- measurements: heart_rate (bpm), the mean over the record of 60 / RR between consecutive beat
  annotations (every QRS symbol of WFDB's table): 60 x fs x (beats - 1) / (last beat - first beat).
- no report: the databases have no text; a summary written here would be ours, not theirs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import wfdb
from tqdm import tqdm
from wfdb.io.annotation import ann_label_table, is_qrs

from mmcardio.datasets.public import Recipe
from mmcardio.datasets.public.common import patient_split
from mmcardio.datasets.readers.ecg_leads import parse_lead_map
from mmcardio.datasets.readers.ecg_wfdb import WFDB_ERRORS
from mmcardio.errors import ManifestError
from mmcardio.records import Measurement
from mmcardio.study import Study

logger = logging.getLogger(__name__)

#: (sampling rate, record) -> patient id: records of one subject. MIT-BIH Arrhythmia (360 Hz):
#: 201 and 202; the rate keeps ltafdb's own records 201 and 202 (128 Hz, two subjects) apart.
SAME_SUBJECT = {(360.0, "201"): "201", (360.0, "202"): "201"}
#: finding -> the rhythm annotation (aux_note of a "+") stating it.
RHYTHM_FINDINGS = {"afib": "(AFIB", "sinus_bradycardia": "(SBR"}
#: finding -> the beat annotation symbol stating it.
BEAT_FINDINGS = {"lbbb": "L"}
RHYTHM_CHANGE = "+"
#: WFDB's QRS (beat) annotation symbols.
BEAT_SYMBOLS = frozenset(symbol for code, symbol in zip(ann_label_table.label_store, ann_label_table.symbol)
                         if is_qrs[code])


@dataclass
class Annotations:
    """What a record's reference annotations say: its rhythms, beat kinds and beat times."""

    rhythms: set[str]
    beat_kinds: set[str]
    beat_samples: list[int]


def record_headers(root: Path) -> list[Path]:
    """The headers of the records ROOT/RECORDS lists (else of every ROOT/*.hea)."""
    listing = root / "RECORDS"
    if not listing.is_file():
        return sorted(root.glob("*.hea"))
    names = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    headers = [root / f"{name}.hea" for name in names]
    for name, header in zip(names, headers):
        if not header.is_file():
            raise ManifestError(f"RECORDS lists record {name!r} but its header {header.name} is missing; is "
                                "the download complete?", listing)
    return headers


def read_header(header: Path) -> wfdb.Record:
    try:
        return wfdb.rdheader(str(header.with_suffix("")))
    except WFDB_ERRORS as err:
        raise ManifestError(f"not a readable WFDB header ({type(err).__name__}: {err})", header) from None


def read_annotations(header: Path) -> Annotations | None:
    """The record's reference annotations (.atr), or None when it has none."""
    path = header.with_suffix(".atr")
    if not path.is_file():
        return None
    try:
        ann = wfdb.rdann(str(header.with_suffix("")), "atr")
    except WFDB_ERRORS as err:
        raise ManifestError(f"not a readable WFDB annotation file ({type(err).__name__}: {err})", path) from None
    notes = ann.aux_note or [""] * len(ann.symbol)
    rhythms = {note.strip("\x00 ") for symbol, note in zip(ann.symbol, notes) if symbol == RHYTHM_CHANGE}
    beats = [(int(sample), symbol) for sample, symbol in zip(ann.sample, ann.symbol) if symbol in BEAT_SYMBOLS]
    return Annotations({r for r in rhythms if r.startswith("(")}, {s for _, s in beats}, [s for s, _ in beats])


def age_and_sex(comments: list[str]) -> tuple[float | None, str | None]:
    """From the first comment, "69 M 1085 1629 x1" (MIT-BIH); (None, None) otherwise."""
    words = comments[0].split() if comments else []
    if len(words) < 2 or words[1] not in ("M", "F", "?"):
        return None, None
    age = float(words[0]) if words[0].isdigit() and 0 <= int(words[0]) <= 120 else None
    return age, words[1] if words[1] != "?" else None


def labels_of(annotations: Annotations | None, vocabulary: set[str]) -> dict[str, int]:
    """Findings the annotations decide (see the module's docstring)."""
    if annotations is None:
        return {}
    labels = {}
    for findings, present in ((RHYTHM_FINDINGS, annotations.rhythms), (BEAT_FINDINGS, annotations.beat_kinds)):
        for finding, symbol in findings.items():
            if symbol in present:
                labels[finding] = 1
            elif present and symbol in vocabulary:
                labels[finding] = 0
    return labels


def heart_rate(annotations: Annotations | None, fs: float) -> dict[str, Measurement]:
    """Mean heart rate over the record from its beat annotations (60 / mean RR)."""
    beats = annotations.beat_samples if annotations else []
    if len(beats) < 2 or beats[-1] <= beats[0]:
        return {}
    return {"heart_rate": Measurement(round(60.0 * fs * (len(beats) - 1) / (beats[-1] - beats[0]), 1), "bpm")}


def has_signals(header: Path, record: wfdb.Record) -> bool:
    missing = sorted({name for name in record.file_name or [] if not (header.parent / name).is_file()})
    if missing:
        logger.warning("%s: skipped, its signal file(s) %s are absent", header, missing)
    return bool(record.file_name) and not missing


def build(root: Path, files_dir: Path, progress: bool = False, limit: int | None = None,
          lead_map: str = "") -> list[Study]:
    """One study per record with signals (the first `limit` when given)."""
    declared = parse_lead_map([pair for pair in lead_map.split(",") if pair.strip()])
    read = []
    for header in tqdm(record_headers(root.absolute()), desc="mitbih", disable=not progress):
        if limit is not None and len(read) >= limit:
            break
        record = read_header(header)
        if has_signals(header, record):
            read.append((header, record, read_annotations(header)))
    vocabulary = set().union(*(a.rhythms | a.beat_kinds for _, _, a in read if a))
    studies = []
    for header, record, atr in read:
        fs = float(record.fs)
        patient = SAME_SUBJECT.get((fs, record.record_name), record.record_name)
        age, sex = age_and_sex(record.comments)
        studies.append(Study(
            study_id=record.record_name, patient_id=patient, split=patient_split(patient), ecg=header,
            age=age, sex=sex, labels=labels_of(atr, vocabulary),
            measurements=heart_rate(atr, fs), ecg_lead_map=dict(declared)))
    return studies


RECIPE = Recipe(
    name="mitbih", title="MIT-BIH Arrhythmia Database (and MIT-BIH-style Holter databases)", modality="ecg",
    fills="ECG (WFDB header), patient-disjoint hashed splits (records 201 and 202 together), age, sex, "
          "labels afib, sinus_bradycardia and lbbb from the reference annotations, heart_rate from the "
          "beat annotations",
    citation="Moody GB, Mark RG. The impact of the MIT-BIH Arrhythmia Database. IEEE Eng Med Biol Mag "
             "20(3):45-50 (2001). doi:10.1109/51.932724; Goldberger AL, Amaral LAN, Glass L, et al. "
             "PhysioBank, PhysioToolkit, and PhysioNet. Circulation 101(23):e215-e220 (2000). "
             "doi:10.1161/01.CIR.101.23.e215",
    licence="ODC-By 1.0", url="https://physionet.org/content/mitdb/",
    build=build,
    options={"lead_map": "the standard lead of channels whose label names none, e.g. ECG1=II,ECG2=V1 "
                         "(afdb, ltafdb; default: none)"},
)
