"""A de-identified copy of a cohort: the manifest with pseudonyms, and every file it points to
copied under OUT/files/<study pseudonym>/ without identifiers (see `mmcardio.deid`)."""
from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pydicom

from mmcardio.datasets.readers.video import CAMUS_SEQUENCE
from mmcardio.deid.dicom import deidentify_dicom_file, dicom_identifiers
from mmcardio.deid.ecg import (
    deidentify_ecg_csv,
    deidentify_ecg_xml,
    deidentify_edf,
    deidentify_wfdb,
    wfdb_identifiers,
    xml_identifiers,
)
from mmcardio.deid.images import (
    deidentify_info_cfg,
    deidentify_metaimage,
    deidentify_nifti,
    deidentify_video,
)
from mmcardio.deid.keys import DeidKey
from mmcardio.deid.text import IDENTIFIER_COLUMN, Scrubber
from mmcardio.errors import MMCardioError
from mmcardio.io import atomic_path, write_json
from mmcardio.study import COLUMNS, EchoClip, Study, read_manifest, read_rows, write_manifest

log = logging.getLogger(__name__)

FILES = "files"
SUMMARY = "prepare.json"
SOURCE_MARK = ".source"  # keyed digest of the originals a study folder was made from
#: Bump when the de-identification of files changes, so older copies are redone.
DEID_VERSION = "1"
#: An absolute path of two or more parts ("/data/x"), not a unit ("mV/s") or a ratio ("1/2").
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/[^\s/'\",:;()]+){2,}/?")
HIPAA_MAX_AGE = 90  # ages above 89 are reported as 90 (HIPAA safe harbour)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass
class Copy:
    """One file (or DICOM folder) of a study: where it comes from and where its copy goes."""

    column: str
    source: Path
    target: str  # relative to the study folder
    kind: str
    members: list[Path] = field(default_factory=list)  # DICOM series files


def file_kind(path: Path) -> str:
    """How a file is de-identified, from its content and name (as the readers recognise it)."""
    name = path.name.lower()
    if not path.exists() and path.with_name(path.name + ".hea").exists() or name.endswith((".hea", ".dat")):
        return "wfdb"
    if path.is_dir():
        return "dicom-folder"
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".mhd", ".mha")):
        return "metaimage"
    if name.endswith(VIDEO_SUFFIXES):
        return "video"
    if name.endswith((".edf", ".rec")) or head.startswith(b"0       "):
        return "edf"
    if name.endswith(".npy") and head.startswith(b"\x93NUMPY"):
        return "npy"  # the NumPy header holds only dtype, order and shape
    if name.endswith(".xml") or head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return "xml"
    if name.endswith(".csv"):
        return "csv"
    raise MMCardioError("no de-identification for this file type (expected DICOM, NIfTI, MetaImage, WFDB, "
                        "EDF, ECG XML, CSV, NumPy or MP4/AVI/MOV)", path)


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def _plan(study: Study, pseudonym: str) -> list[Copy]:
    """Where each file of `study` goes, with names that carry nothing of the originals."""
    copies = []
    for column, path in study.files():
        kind = file_kind(Path(path))
        base = column.replace("masks.", "mask-").replace(".", "-")
        base = re.sub(r"[^\w-]", "_", base)
        if column == "echo":
            base = f"echo-{sum(c.column == 'echo' for c in copies)}"
        camus = CAMUS_SEQUENCE.search(Path(path).name)
        if kind == "wfdb":
            target = f"{pseudonym}.hea"
        elif kind == "dicom-folder":
            target = base
        elif kind == "dicom" and column in ("cmr", "ct") and _classic_slice(Path(path)):
            kind, target = "dicom-folder", base  # the reader reads the file's whole series
        elif camus:
            target = base + camus.group(0)  # keeps CAMUS's _2CH_sequence naming (frame rate lookup)
        else:
            target = base + (".dcm" if kind == "dicom" else _suffix(Path(path)))
        copies.append(Copy(column, Path(path), target, kind))
    return copies


def _classic_slice(path: Path) -> bool:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return "PerFrameFunctionalGroupsSequence" not in header and "SeriesInstanceUID" in header


def _dicom_members(copy: Copy) -> list[Path]:
    """The files of a DICOM series: a folder's DICOM files, or a file's series neighbours."""
    if copy.source.is_dir():
        candidates = sorted(p for p in copy.source.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [p for p in candidates if _is_dicom(p)]
    series = pydicom.dcmread(copy.source, stop_before_pixels=True).SeriesInstanceUID
    return [p for p in sorted(copy.source.parent.iterdir()) if p.is_file() and not p.name.startswith(".")
            and _is_dicom(p) and pydicom.dcmread(p, stop_before_pixels=True).get("SeriesInstanceUID") == series]


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(132)[128:] == b"DICM"


def _identifiers(copy: Copy) -> set[str]:
    """Names and ids the file's own header states."""
    if copy.kind in ("dicom", "dicom-folder"):
        files = copy.members or [copy.source]
        return set().union(*(dicom_identifiers(pydicom.dcmread(p, stop_before_pixels=True)) for p in files[:1]))
    if copy.kind == "xml":
        return xml_identifiers(copy.source)
    if copy.kind == "wfdb":
        return wfdb_identifiers(_wfdb_header(copy.source))
    return set()


def _wfdb_header(path: Path) -> Path:
    return path.with_suffix(".hea") if path.suffix.lower() in (".hea", ".dat") else path.with_name(path.name + ".hea")


def _write_copy(copy: Copy, folder: Path, key: DeidKey, patient: str, scrub: Scrubber,
                keep_burned_in: bool, label: str) -> None:
    target = folder / copy.target
    if copy.kind == "dicom":
        deidentify_dicom_file(copy.source, target, key, patient, keep_burned_in, label)
    elif copy.kind == "dicom-folder":
        target.mkdir(parents=True, exist_ok=True)
        for i, member in enumerate(copy.members, 1):
            deidentify_dicom_file(member, target / f"{i:05d}.dcm", key, patient, keep_burned_in, label)
    elif copy.kind == "wfdb":
        deidentify_wfdb(_wfdb_header(copy.source), folder, Path(copy.target).stem)
    elif copy.kind == "xml":
        deidentify_ecg_xml(copy.source, target, scrub)
    elif copy.kind == "nifti":
        deidentify_nifti(copy.source, target)
    elif copy.kind == "metaimage":
        deidentify_metaimage(copy.source, target)
    elif copy.kind == "video":
        deidentify_video(copy.source, target)
    elif copy.kind == "edf":
        deidentify_edf(copy.source, target)
    elif copy.kind == "csv":
        deidentify_ecg_csv(copy.source, target)
    elif copy.kind == "npy":
        with atomic_path(target) as tmp:
            tmp.write_bytes(copy.source.read_bytes())
    camus = CAMUS_SEQUENCE.search(copy.target)
    info = copy.source.parent / f"Info_{camus['view'].upper()}.cfg" if camus else None
    if info is not None and info.is_file():
        deidentify_info_cfg(info, folder / info.name)


def _source_mark(study: Study, copies: list[Copy], key: DeidKey, keep_burned_in: bool) -> str:
    """A keyed digest of the originals (paths, sizes, times) and the options: unchanged -> reuse."""
    parts = [DEID_VERSION, str(keep_burned_in), study.patient_id]
    for copy in copies:
        stem = copy.source.name.split(".")[0]  # a MetaImage's .raw, a NIfTI's .nii.gz
        files = copy.members or sorted(copy.source.parent.glob(glob.escape(stem) + ".*")) or [copy.source]
        if copy.kind == "wfdb":
            header = _wfdb_header(copy.source)
            files = sorted(header.parent.glob(header.stem + ".*"))
        parts += [f"{copy.column}|{copy.target}|{p}|{p.stat().st_size}|{p.stat().st_mtime_ns}"
                  for p in files if p.is_file()]
    return key.fingerprint("\n".join(parts))


class PathRedactor:
    """Text without original paths: each known path (as given and resolved), its folder and its
    file name become a label; any other absolute path becomes "<path>". Original paths often
    hold names or record numbers ("/data/DOE_JOHN_12345/ecg.xml")."""

    def __init__(self, labelled: list[tuple[Path, str]]):
        pairs: dict[str, str] = {}
        for path, label in labelled:
            for text in (str(path), str(path.resolve()), str(path.parent), str(path.resolve().parent),
                         path.name, path.stem):
                if len(text) >= 4:
                    pairs.setdefault(text, label)
        self.pairs = sorted(pairs.items(), key=lambda pair: len(pair[0]), reverse=True)

    def __call__(self, text: str) -> str:
        for old, new in self.pairs:
            text = text.replace(old, new)
        return ABSOLUTE_PATH.sub("<path>", text)


def _study_redactor(copies: list[Copy], scrub: Scrubber) -> Callable[[str], str]:
    paths = PathRedactor([(p, f"<{c.column} file>") for c in copies for p in [c.source, *c.members]])
    return lambda message: paths(scrub(message, dates=False))


@contextlib.contextmanager
def redacted_logs(redact: Callable[[str], str]) -> Iterator[None]:
    """Every log record made meanwhile (ours and the libraries': wfdb's fsspec logs each file it
    opens) has the original paths removed from its message, whatever handler writes it."""
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


def _deidentified_study(study: Study, row: dict, out: Path, key: DeidKey, keep_burned_in: bool,
                        reused: list[str]) -> Study:
    pseudonym, patient = key.study(study.study_id), key.patient(study.patient_id)
    copies = _plan(study, pseudonym)
    scrub = Scrubber([study.study_id, study.patient_id])
    scrub.add(str(v) for k, v in row.items()
              if k not in COLUMNS and IDENTIFIER_COLUMN.search(str(k)) and v not in (None, ""))
    current = ""  # the column being copied, named in a failure
    try:
        for copy in copies:
            current = copy.column
            if copy.kind == "dicom-folder":
                copy.members = _dicom_members(copy)
                if not copy.members:
                    raise MMCardioError("no DICOM files", copy.source, copy.column)
            scrub.add(_identifiers(copy))
        folder = out / FILES / pseudonym
        mark = _source_mark(study, copies, key, keep_burned_in)
        if (folder / SOURCE_MARK).is_file() and (folder / SOURCE_MARK).read_text().strip() == mark:
            reused.append(pseudonym)
        else:
            with atomic_path(folder) as tmp, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # libraries' warnings may name the original files
                tmp.mkdir()
                with contextlib.redirect_stdout(io.StringIO()):  # dicom-anonymizer prints; --json must not
                    for copy in copies:
                        current = copy.column
                        _write_copy(copy, tmp, key, patient, scrub, keep_burned_in, f"{copy.column} of {pseudonym}")
                (tmp / SOURCE_MARK).write_text(mark + "\n")
            for warning in caught:
                log.debug("%s: %s", pseudonym, _study_redactor(copies, scrub)(str(warning.message)))
    except MMCardioError as err:
        problem = f"{err.field + ': ' if err.field else ''}{err.problem}"
        raise MMCardioError(_study_redactor(copies, scrub)(f"{current}: {problem}")) from None
    except Exception as err:  # noqa: BLE001 - one bad study must not stop the cohort; it is listed
        raise MMCardioError(_study_redactor(copies, scrub)(f"{current}: {type(err).__name__}: {err}")) from None
    return _new_row(study, pseudonym, patient, {c.column + (str(i) if c.column == "echo" else ""): folder / c.target
                                                 for i, c in enumerate(copies)}, scrub)


def _new_row(study: Study, pseudonym: str, patient: str, targets: dict[str, Path], scrub: Scrubber) -> Study:
    echo_targets = [p for column, p in targets.items() if column.startswith("echo")]
    return replace(
        study, study_id=pseudonym, patient_id=patient,
        ecg=targets.get("ecg") if study.ecg else None, cmr=targets.get("cmr") if study.cmr else None,
        ct=targets.get("ct") if study.ct else None,
        echo=[EchoClip(path, clip.view) for path, clip in zip(echo_targets, study.echo)],
        masks={k: targets[f"masks.{k}"] for k in study.masks},
        report=scrub(study.report), reports={k: scrub(v) for k, v in study.reports.items()},
        translations={lang: {k: scrub(v) for k, v in texts.items()} for lang, texts in study.translations.items()},
        age=None if study.age is None else min(study.age, float(HIPAA_MAX_AGE)),
    )


def deidentify_cohort(manifest: str | Path, out: str | Path, key: DeidKey, keep_burned_in: bool = False,
                      progress: bool = True) -> dict:
    """Write OUT/manifest.<same format> with pseudonymous ids and OUT/files/<study>/ copies of
    its files without identifiers (unchanged studies of an earlier run are reused), and
    OUT/prepare.json. Returns the summary (what prepare.json holds) plus "mapping": the
    original -> pseudonym pairs, which are never written into OUT."""
    start = time.perf_counter()
    manifest, out = Path(manifest), Path(out)
    rows, studies = read_rows(manifest), read_manifest(manifest)
    _check_unique(studies, key)
    done: list[Study] = []
    failed: dict[str, str] = {}
    reused: list[str] = []
    items = zip(rows, studies)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, total=len(studies), desc="de-identify", unit="study")
    originals = PathRedactor([(manifest.parent, "<cohort>"), *((Path(p), "<original file>")
                                                               for s in studies for _, p in s.files())])
    with redacted_logs(originals):
        for row, study in items:
            try:
                done.append(_deidentified_study(study, row, out, key, keep_burned_in, reused))
            except MMCardioError as err:
                failed[key.study(study.study_id)] = err.problem
    new_manifest = write_manifest(done, out / f"manifest{_manifest_suffix(manifest)}")
    summary = {"manifest": str(new_manifest), "studies": len(studies), "deidentified": len(done) - len(reused),
               "reused": len(reused), "failed": failed, "key_id": key.key_id, "keep_burned_in": keep_burned_in,
               "dropped_columns": sorted(str(c) for c in (rows[0] if rows else {}) if c not in COLUMNS),
               "seconds": round(time.perf_counter() - start, 3)}
    write_json(out / SUMMARY, summary)
    mapping = [("study", s.study_id, key.study(s.study_id)) for s in studies]
    mapping += sorted({("patient", s.patient_id, key.patient(s.patient_id)) for s in studies})
    return {**summary, "mapping": mapping}


def _manifest_suffix(manifest: Path) -> str:
    suffix = manifest.suffix.lower()
    return ".parquet" if suffix == ".pq" else ".jsonl" if suffix == ".ndjson" else suffix


def _check_unique(studies: list[Study], key: DeidKey) -> None:
    for domain, ids in (("study", {s.study_id for s in studies}), ("patient", {s.patient_id for s in studies})):
        derive = key.study if domain == "study" else key.patient
        if len({derive(i) for i in ids}) != len(ids):
            raise MMCardioError(f"two {domain} ids share a pseudonym (a 64-bit collision); use another key",
                                field=f"{domain}_id")


def write_mapping(path: str | Path, mapping: list[tuple[str, str, str]]) -> Path:
    """The original -> pseudonym table as CSV, readable by its owner only."""
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["kind", "original", "pseudonym"])
    writer.writerows(mapping)
    path = Path(path)
    with atomic_path(path) as tmp:  # created 0600: never readable by others, not even briefly
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())
    return path
