"""ECG files without identifiers: vendor XML (GE MUSE, GE CardioSoft, HL7 aECG), WFDB, EDF,
CSV and NumPy. The samples are copied unchanged; only what names, dates or locates the
patient goes.

XML is parsed with defusedxml (no entity expansion, no external entities). Blocks that hold
the patient, the visit, the order, the site, dates and free-text statements are emptied, by
element name: the readers need only the waveform elements (`READER_ELEMENTS`).
"""
from __future__ import annotations

import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import edfio
import wfdb

from mmcardio.datasets.readers.ecg_xml import local_name, parse_xml_tree
from mmcardio.deid.text import Scrubber
from mmcardio.errors import MMCardioError
from mmcardio.io import atomic_path, write_text

#: Elements the XML readers read (`mmcardio.datasets.readers.ecg_xml`): never emptied.
READER_ELEMENTS = frozenset({
    "RestingECG", "Waveform", "WaveformType", "SampleBase", "SampleExponent", "LeadData", "LeadID",
    "WaveFormData", "LeadSampleSize", "LeadSampleCountTotal", "LeadAmplitudeUnitsPerBit", "LeadAmplitudeUnits",
    "CardiologyXML", "StripData", "MedianSamples", "Resolution", "SampleRate", "ChannelSampleCountTotal",
    "WaveformData", "AnnotatedECG", "component", "series", "derivedSeries", "code", "sequenceSet", "sequence",
    "value", "digits", "origin", "scale", "increment",
})
#: Sample data: neither emptied nor searched for identifiers (base64 holds any letters).
DATA_ELEMENTS = frozenset({"WaveFormData", "WaveformData", "digits"})
#: Element names that hold the patient, staff, site, visit, dates or free text.
IDENTIFYING_ELEMENT = re.compile(
    r"patient|name|birth|dob|addr|street|city|zip|postal|phone|telecom|email|mrn|accession|institution|"
    r"hospital|site|location|physician|doctor|referr|operator|technician|tech|requisition|admission|visit|"
    r"order|date|time|^age|age$|gender|sex|race|ethnic|height|weight|^pid$|^id$|uid|subject|person|author|"
    r"performer|custodian|trial|room|^bed$|ward|department|diagnos|interpret|statement|comment|note|"
    r"question|^text$|reason|confirm|overread|edit|^head$|family|given|device|serial", re.IGNORECASE)
#: Of those, the ones whose text is a patient's name or id (searched for in the report).
NAME_OR_ID_ELEMENT = re.compile(r"patient.*(name|id)$|lastname|firstname|familyname|givenname|^family$|"
                                r"^given$|^pid$|mrn|accession|medicalrecord", re.IGNORECASE)
#: WFDB comments "key: value" whose value is a name or an id.
NAME_OR_ID_COMMENT = re.compile(r"^\s*(name|patient|mrn|id|patient[ _]?id|record[ _]?id)\s*[:=]\s*(.+)$",
                                re.IGNORECASE)


def xml_identifiers(path: Path) -> set[str]:
    """Patient names and ids stated in an ECG XML's patient blocks."""
    found = set()
    for element in parse_xml_tree(path).getroot().iter():
        if NAME_OR_ID_ELEMENT.search(local_name(element.tag)) and (element.text or "").strip():
            found.add(element.text.strip())
        if local_name(element.tag) == "id" and element.get("extension"):  # aECG subject / document ids
            found.add(element.get("extension"))
    return found


def deidentify_ecg_xml(src: Path, dst: Path, scrub: Scrubber) -> None:
    """Empty the identifying blocks of an ECG XML and remove known identifiers from the rest."""
    tree = parse_xml_tree(src)
    root = tree.getroot()
    parents = {child: parent for parent in root.iter() for child in parent}  # ElementTree keeps no parent links
    holds_data = {id(e) for d in root.iter() if local_name(d.tag) in READER_ELEMENTS for e in _ancestors(parents, d)}
    for element in list(root.iter()):
        name = local_name(element.tag)
        if name in READER_ELEMENTS or id(element) in holds_data:
            continue
        if IDENTIFYING_ELEMENT.search(name):
            element.clear()
    for element in root.iter():
        if local_name(element.tag) in DATA_ELEMENTS:
            continue
        element.text = scrub(element.text, dates=False) if element.text else element.text
        element.tail = scrub(element.tail, dates=False) if element.tail else element.tail
        for attribute, value in element.attrib.items():
            element.set(attribute, scrub(value, dates=False))
    with atomic_path(dst) as tmp:
        tmp.write_bytes(_xml_bytes(root))


def _ancestors(parents: dict[ET.Element, ET.Element], target: ET.Element) -> list[ET.Element]:
    """The elements above `target`, by the `parents` map of its tree."""
    chain, node = [], target
    while node in parents:
        node = parents[node]
        chain.append(node)
    return chain


def _xml_bytes(root: ET.Element) -> bytes:
    namespace = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else None
    try:  # keep an HL7 file's default namespace rather than prefixing every element with ns0:
        body = ET.tostring(root, encoding="unicode", default_namespace=namespace) if namespace else \
            ET.tostring(root, encoding="unicode")
    except ValueError:  # some elements outside the namespace: prefixes it is
        body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'.encode()


def wfdb_identifiers(header: Path) -> set[str]:
    """Names and ids that a WFDB header's comments state ("# Name: ...", "# MRN: ...")."""
    record = _wfdb_header(header)
    return {m.group(2).strip() for c in record.comments or [] if (m := NAME_OR_ID_COMMENT.match(c))}


def _wfdb_header(header: Path):
    try:
        return wfdb.rdheader(str(header.with_suffix("")))
    except (ValueError, IndexError, KeyError, TypeError, OSError) as err:
        raise MMCardioError(f"cannot read the WFDB header for de-identification ({type(err).__name__})",
                            header) from None


def deidentify_wfdb(header: Path, out_folder: Path, record_name: str) -> Path:
    """Copy a WFDB record as `record_name`: the header rewritten by wfdb without its comments
    (age, sex, diagnoses, sometimes names) and base date/time, the data files copied byte for
    byte under new names. Returns the new header."""
    record = _wfdb_header(header)
    if getattr(record, "seg_name", None):
        raise MMCardioError("multi-segment WFDB records are not de-identified; de-identify them "
                            "yourself and run prepare with --no-deidentify", header)
    renamed: dict[str, str] = {}
    for name in record.file_name:
        suffix = Path(name).suffix or ".dat"
        renamed.setdefault(name, f"{record_name}{'' if not renamed else f'_{len(renamed)}'}{suffix}")
    for old, new in renamed.items():
        with atomic_path(out_folder / new) as tmp:
            tmp.write_bytes((header.parent / old).read_bytes())
    record.record_name, record.comments = record_name, []
    record.base_time = record.base_date = record.base_datetime = None
    record.file_name = [renamed[name] for name in record.file_name]
    with tempfile.TemporaryDirectory(dir=out_folder) as scratch:  # wfdb writes NAME.hea into a folder
        record.wrheader(write_dir=scratch)
        text = (Path(scratch) / f"{record_name}.hea").read_text(encoding="latin-1")
    return write_text(out_folder / f"{record_name}.hea", text)


def deidentify_edf(src: Path, dst: Path) -> None:
    """EDF/EDF+ with edfio's anonymisation (patient and recording fields "X", start date
    01.01.85, start time 00.00.00) and without annotations (free text)."""
    try:
        edf = edfio.read_edf(src)
    except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError, EOFError) as err:
        raise MMCardioError(f"cannot read the EDF for de-identification ({type(err).__name__}: {err})", src) from None
    edf.anonymize()
    if edf.annotations:
        edf.set_annotations([])
    with atomic_path(dst) as tmp:
        edf.write(tmp)


#: Apple Health ECG export rows kept (the others are Name, Date of Birth, Recorded Date, ...).
APPLE_HEALTH_KEPT = ("Sample Rate", "Lead", "Unit")
NUMBER_ROW = re.compile(r"^[\s\"]*[-+0-9.eE]+([\s\"]*[,;\t][\s\"]*[-+0-9.eE]*)*[\s\"]*$")


def deidentify_ecg_csv(src: Path, dst: Path) -> None:
    """A CSV ECG keeps its lead-name header (plain CSV) or its Sample Rate / Lead / Unit rows
    (Apple Health export), and its rows of numbers; every other row (names, dates) goes."""
    lines = src.read_text(encoding="utf-8-sig").splitlines()
    keys = {line.split(",", 1)[0].strip().strip('"') for line in lines[:20]}
    apple = all(k in keys for k in APPLE_HEALTH_KEPT)
    kept = [line for i, line in enumerate(lines)
            if NUMBER_ROW.match(line) or (not apple and i == 0)
            or (apple and line.split(",", 1)[0].strip().strip('"') in APPLE_HEALTH_KEPT)]
    with atomic_path(dst) as tmp:
        tmp.write_text("\n".join(kept) + "\n", encoding="utf-8")
