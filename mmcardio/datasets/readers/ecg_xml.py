"""ECG XML exports: GE MUSE (`RestingECG`), GE CardioSoft (`CardiologyXML`, the UK Biobank
resting-ECG format) and HL7 aECG (`AnnotatedECG`, namespace `urn:hl7-org:v3`).

No maintained library reads these vendor schemas, so each is decoded here from its published
structure into `Channel`s (values in mV, labels as the file spells them) plus the sampling rate
the file states. Lead naming, derivation and the sanity checks happen once, in `ecg.py`.
Namespaces are stripped on parsing, so any prefix (or none) works.

Files are parsed by defusedxml: an entity declaration (the "billion laughs" expansion, an
external entity such as SYSTEM "file:///etc/passwd", a parameter entity pulling in a remote
DTD) is refused, as no vendor ECG export declares entities. A DOCTYPE naming an external DTD
(MUSE writes `<!DOCTYPE RestingECG SYSTEM "restecg.dtd">`) is allowed: it is never fetched.
"""
from __future__ import annotations

import base64
import binascii
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import parse as parse_xml

from mmcardio.errors import ReaderError

logger = logging.getLogger(__name__)

#: Millivolts per unit, keyed by the unit spelled in lower case (UCUM codes and vendor words).
MV_PER_UNIT = {
    "nv": 1e-6, "nanovolt": 1e-6,
    "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3,
    "mv": 1.0, "millivolt": 1.0,
    "v": 1e3, "volt": 1e3,
}

#: Seconds per unit for aECG time increments.
SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
#: Larger files are refused before parsing: no ECG export comes near it.
MAX_XML_BYTES = 256 * 2**20


@dataclass
class Channel:
    """One recorded channel: its label as the file spells it and its samples in mV."""

    label: str
    values_mv: np.ndarray


def _unit_key(unit: str) -> str:
    key = unit.strip().lower()
    return key[:-1] if key.endswith("volts") else key


def is_voltage(unit: str) -> bool:
    return _unit_key(unit) in MV_PER_UNIT


def mv_per_unit(unit: str, path: str | Path, field: str) -> float:
    """Millivolts per `unit` ("uV", "MICROVOLTS", "mV", "V", ...); ReaderError if not a voltage."""
    key = _unit_key(unit)
    if key not in MV_PER_UNIT:
        raise ReaderError(f"amplitude unit {unit!r} is not a voltage (expected uV, mV or V)",
                          path, field)
    return MV_PER_UNIT[key]


def read_ecg_xml(path: str | Path) -> tuple[list[Channel], float | None]:
    """Channels and stated sampling rate (None if the file does not state it) of an ECG XML."""
    root = _parse(path)
    parser = XML_PARSERS.get(root.tag)
    if parser is None:
        raise ReaderError(f"unknown XML root <{root.tag}>; expected RestingECG (GE MUSE), "
                          "CardiologyXML (GE CardioSoft) or AnnotatedECG (HL7 aECG)", path)
    return parser(root, Path(path))


def parse_xml_tree(path: str | Path) -> ET.ElementTree:
    """An ECG XML document parsed safely (size bounded, no entities, no external references),
    its tags as written (namespaces included); any refusal is a ReaderError naming `path`."""
    size = Path(path).stat().st_size
    if size > MAX_XML_BYTES:  # ElementTree holds the whole document, at several times its size
        raise ReaderError(f"{size:,} bytes of XML, over the {MAX_XML_BYTES:,} an ECG export can take (a "
                          "5-minute 12-lead strip at 1 kHz in decimal text is under 50 MB)", path)
    try:
        return parse_xml(path)
    except DefusedXmlException as err:
        raise ReaderError(f"refused: the XML declares entities or external references ({err}); an "
                          "ECG export declares none, and expanding them could exhaust memory or read "
                          "other files", path, "DOCTYPE") from None
    except ET.ParseError as err:
        raise ReaderError(f"malformed or truncated XML ({err})", path) from None
    except LookupError as err:  # the XML declaration names an encoding Python does not know
        raise ReaderError(f"the XML declaration names an unknown character encoding ({err})", path,
                          "encoding") from None


def _parse(path: str | Path) -> ET.Element:
    root = parse_xml_tree(path).getroot()
    for element in root.iter():
        element.tag = local_name(element.tag)
    return root


def local_name(tag: str) -> str:
    """An element's name without its namespace ("{urn:hl7-org:v3}code" -> "code")."""
    return tag.rsplit("}", 1)[-1]


def _text(parent: ET.Element, tag: str, path: Path) -> str:
    element = parent.find(tag)
    if element is None or not (element.text or "").strip():
        raise ReaderError(f"<{parent.tag}> has no <{tag}>", path, tag)
    return element.text.strip()


def _number(text: str, path: Path, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ReaderError(f"expected a number, got {text!r}", path, field) from None
    if not math.isfinite(value):
        raise ReaderError(f"expected a finite number, got {text!r}", path, field)
    return value


def _numbers(text: str, sep: str | None, path: Path, field: str) -> np.ndarray:
    tokens = [t for t in text.split(sep) if t.strip()] if sep else text.split()
    try:
        return np.asarray(tokens, dtype=np.float64)
    except ValueError:
        raise ReaderError("sample list holds a value that is not a number", path, field) from None


def _optional_number(parent: ET.Element, tag: str, path: Path) -> float | None:
    element = parent.find(tag)
    if element is None or not (element.text or "").strip():
        return None
    return _number(element.text.strip(), path, tag)


# --- GE MUSE -------------------------------------------------------------------------------------

MUSE_SAMPLE_DTYPES = {2: "<i2", 4: "<i4"}


def _read_muse(root: ET.Element, path: Path) -> tuple[list[Channel], float | None]:
    """`Waveform` (Rhythm preferred over Median) -> `LeadData` with base64 little-endian samples."""
    waveforms = root.findall("Waveform")
    if not waveforms:
        raise ReaderError("MUSE XML has no <Waveform>", path, "Waveform")
    kinds = [(w.findtext("WaveformType") or "").strip().lower() for w in waveforms]
    waveform = waveforms[kinds.index("rhythm")] if "rhythm" in kinds else waveforms[0]
    if "rhythm" not in kinds:
        logger.warning("%s: no Rhythm waveform; reading the %s waveform", path, kinds[0] or "first")
    base = _optional_number(waveform, "SampleBase", path)
    exponent = int(_optional_number(waveform, "SampleExponent", path) or 0)
    fs = None if base is None else (base * 10**exponent if exponent >= 0 else base / 10**-exponent)
    return [_muse_lead(lead, path) for lead in waveform.findall("LeadData")], fs


def _muse_lead(lead: ET.Element, path: Path) -> Channel:
    label = _text(lead, "LeadID", path)
    field = f"LeadData[{label}]"
    try:
        raw = base64.b64decode(_text(lead, "WaveFormData", path))
    except (binascii.Error, ValueError):
        raise ReaderError(f"lead {label}: WaveFormData is not valid base64", path, field) from None
    size = int(_optional_number(lead, "LeadSampleSize", path) or 2)
    if size not in MUSE_SAMPLE_DTYPES:
        raise ReaderError(f"lead {label}: LeadSampleSize {size} is not 2 or 4 bytes", path, field)
    samples = np.frombuffer(raw[: len(raw) - len(raw) % size], dtype=MUSE_SAMPLE_DTYPES[size])
    stated = _optional_number(lead, "LeadSampleCountTotal", path)
    if stated is not None:
        if len(samples) < stated:
            raise ReaderError(f"lead {label}: WaveFormData holds {len(samples)} samples, "
                              f"LeadSampleCountTotal says {int(stated)} (truncated?)", path, field)
        samples = samples[: int(stated)]
    per_bit = _number(_text(lead, "LeadAmplitudeUnitsPerBit", path), path, "LeadAmplitudeUnitsPerBit")
    unit = mv_per_unit(_text(lead, "LeadAmplitudeUnits", path), path, "LeadAmplitudeUnits")
    return Channel(label, samples * (per_bit * unit))


# --- GE CardioSoft -------------------------------------------------------------------------------

def _read_cardiosoft(root: ET.Element, path: Path) -> tuple[list[Channel], float | None]:
    """`StripData` (the 10 s rhythm; `MedianSamples` only as a fallback) -> comma-separated
    `WaveformData lead=".."` samples times `Resolution` (units "uVperLsb")."""
    strip = root.find(".//StripData")
    if strip is None:
        strip = root.find(".//MedianSamples")
        if strip is None:
            raise ReaderError("CardiologyXML has no <StripData>", path, "StripData")
        logger.warning("%s: no StripData; reading the median beats", path)
    resolution = strip.find("Resolution")
    if resolution is None or not (resolution.text or "").strip():
        raise ReaderError("<StripData> has no <Resolution>: amplitude scale unknown", path, "Resolution")
    unit = resolution.get("units", "uVperLsb")
    scale = _number(resolution.text.strip(), path, "Resolution") * mv_per_unit(
        unit[: -len("perLsb")] if unit.lower().endswith("perlsb") else unit, path, "Resolution")
    rate = strip.find("SampleRate")
    if rate is not None and rate.get("units", "Hz").lower() != "hz":
        raise ReaderError(f"SampleRate in {rate.get('units')!r}; expected Hz", path, "SampleRate")
    fs = _optional_number(strip, "SampleRate", path)
    stated = _optional_number(strip, "ChannelSampleCountTotal", path)
    channels = []
    for data in strip.findall("WaveformData"):
        label = data.get("lead", "")
        values = _numbers(data.text or "", ",", path, f"WaveformData[{label}]")
        if stated is not None and len(values) < stated:
            raise ReaderError(f"lead {label}: {len(values)} samples, ChannelSampleCountTotal "
                              f"says {int(stated)} (truncated?)", path, f"WaveformData[{label}]")
        channels.append(Channel(label, values * scale))
    return channels, fs


# --- HL7 aECG ------------------------------------------------------------------------------------

def _read_aecg(root: ET.Element, path: Path) -> tuple[list[Channel], float | None]:
    """The rhythm `series` -> its `sequenceSet` with the most leads: a TIME_* sequence whose
    `increment` is the sample period, and lead sequences (`MDC_ECG_LEAD_*`) holding
    `origin + scale * digits` in the units of origin and scale."""
    series_list = list(root.iter("series"))  # derived median beats live in <derivedSeries>
    if not series_list:
        raise ReaderError("AnnotatedECG has no <series>", path, "series")
    codes = [_code(s) for s in series_list]
    series = series_list[codes.index("RHYTHM")] if "RHYTHM" in codes else series_list[0]
    sets = series.findall("component/sequenceSet")
    if not sets:
        raise ReaderError("aECG series has no <sequenceSet>", path, "sequenceSet")
    sequence_set = max(sets, key=lambda s: len(s.findall("component/sequence/value/digits")))
    fs, channels = None, []
    for sequence in sequence_set.findall("component/sequence"):
        code, value = _code(sequence), sequence.find("value")
        if value is None:
            continue
        if code.startswith("TIME_"):
            fs = _aecg_rate(value, path)
        elif value.find("digits") is not None:
            channels.append(_aecg_lead(code, value, path))
    return channels, fs


def _code(element: ET.Element) -> str:
    code = element.find("code")
    return "" if code is None else code.get("code", "")


def _aecg_rate(value: ET.Element, path: Path) -> float | None:
    increment = value.find("increment")
    if increment is None:
        return None
    unit = increment.get("unit", "s")
    if unit not in SECONDS_PER_UNIT:
        raise ReaderError(f"time increment unit {unit!r}; expected s or ms", path, "increment")
    period = _number(increment.get("value", ""), path, "increment") * SECONDS_PER_UNIT[unit]
    if period <= 0:
        raise ReaderError(f"time increment {period} s is not positive", path, "increment")
    return round(1.0 / period, 6)  # the increment is a rounded decimal (1/360 s)


def _aecg_lead(code: str, value: ET.Element, path: Path) -> Channel:
    digits = _numbers(value.findtext("digits") or "", None, path, f"digits[{code}]")
    origin, scale = value.find("origin"), value.find("scale")
    if scale is None:
        raise ReaderError(f"lead {code}: no <scale>: amplitude scale unknown", path, "scale")
    scale_unit = scale.get("unit", "")
    scale_mv = _number(scale.get("value", ""), path, "scale") * mv_per_unit(scale_unit, path, "scale")
    origin_mv = 0.0 if origin is None else _number(origin.get("value", ""), path, "origin") * \
        mv_per_unit(origin.get("unit", scale_unit), path, "origin")
    return Channel(code, origin_mv + digits * scale_mv)


XML_PARSERS: dict[str, Callable[[ET.Element, Path], tuple[list[Channel], float | None]]] = {
    "RestingECG": _read_muse,
    "CardiologyXML": _read_cardiosoft,
    "AnnotatedECG": _read_aecg,
}
