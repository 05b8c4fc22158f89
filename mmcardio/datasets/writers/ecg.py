"""ECG writers: an `ECG` record to WFDB, DICOM 12-lead/General ECG, GE MUSE XML, GE CardioSoft
XML, HL7 aECG, NumPy or CSV, each readable by `mmcardio.datasets.readers.read_ecg`.

Integer formats store 1 uV per unit (quantization error <= 0.5 uV); 16-bit formats therefore
hold +-32.767 mV. Every write is atomic. wfdb and pydicom write their formats; the three XML
vendor formats have no writer library, so they are built here with ElementTree.
"""
from __future__ import annotations

import base64
import datetime as dt
import io
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pydicom
import wfdb
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mmcardio.datasets.readers.ecg import EIGHT_LEADS, SCP_ECG_LEAD_CODES
from mmcardio.errors import MMCardioError
from mmcardio.io import atomic_path
from mmcardio.records import ECG, STANDARD_LEADS

__all__ = ["FORMATS", "write_ecg"]

FORMATS = ("wfdb", "dicom", "muse", "cardiosoft", "aecg", "npy", "csv")
SUFFIX_FORMATS = {".hea": "wfdb", ".dcm": "dicom", ".npy": "npy", ".csv": "csv"}

TWELVE_LEAD_ECG_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.2"
TWELVE_LEAD_MAX_CHANNELS, TWELVE_LEAD_MAX_SAMPLES = 13, 16384  # PS3.3 A.34.3.4 constraints
ECG_IOD_FS_RANGE = (200.0, 1000.0)  # both ECG IODs constrain the sampling frequency to this
HL7_NAMESPACE = "urn:hl7-org:v3"
XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
HL7_ACT_CODE = "2.16.840.1.113883.5.4"
MDC_CODE_SYSTEM = "2.16.840.1.113883.6.24"
INT16_LIMIT_UV = 32767


def write_ecg(ecg: ECG, path: str | Path, format: str | None = None) -> Path:
    """Write `ecg` as `format` (default: from the suffix: .hea/.dcm/.npy/.csv; an .xml path
    needs format="muse", "cardiosoft" or "aecg"). Returns the written path (the .hea for WFDB).

    muse stores I, II and V1-V6 only, as GE MUSE does (the reader derives the other limb
    leads); npy stores 12 leads in standard order or the 8 of `EIGHT_LEADS`.
    """
    path = Path(path)
    fmt = format.lower() if format else SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt not in FORMATS:
        raise MMCardioError(f"unknown ECG format {fmt!r} (from {'format=' if format else 'the suffix'}); "
                            f"expected one of {', '.join(FORMATS)}", path, "format")
    _check_record(ecg, path)
    if fmt == "wfdb":
        return _write_wfdb(ecg, path)
    encode = {"dicom": _dicom_bytes, "muse": _muse_bytes, "cardiosoft": _cardiosoft_bytes,
              "aecg": _aecg_bytes, "npy": _npy_bytes, "csv": _csv_bytes}[fmt]
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode(ecg, path))
    return path


def _check_record(ecg: ECG, path: Path) -> None:
    signal = np.asarray(ecg.signal)
    if signal.ndim != 2 or signal.shape[0] != len(ecg.lead_names):
        raise MMCardioError(f"signal shape {list(signal.shape)} does not match "
                            f"{len(ecg.lead_names)} lead names", path, "signal")
    unknown = [name for name in ecg.lead_names if name not in STANDARD_LEADS]
    if unknown:
        raise MMCardioError(f"non-standard lead names {unknown}", path, "lead_names")
    if not np.all(np.isfinite(signal)):
        raise MMCardioError("signal holds NaN or infinite samples", path, "signal")
    if not ecg.fs > 0:
        raise MMCardioError(f"sampling rate {ecg.fs} Hz is not positive", path, "fs")


def _microvolts(signal: np.ndarray, path: Path, int16: bool) -> np.ndarray:
    """Samples as integers of 1 uV; 16-bit formats are checked against their range."""
    digital = np.rint(np.asarray(signal, dtype=np.float64) * 1000.0)
    if int16 and np.abs(digital).max(initial=0) > INT16_LIMIT_UV:
        raise MMCardioError(f"amplitude {np.abs(signal).max():.1f} mV exceeds the 16-bit range "
                            "(+-32.767 mV at 1 uV resolution)", path, "signal")
    return digital.astype(np.int16 if int16 else np.int64)


def _ints_text(values: np.ndarray, sep: str) -> str:
    return sep.join(map(str, values.tolist()))


def _xml_bytes(root: ET.Element, doctype: str = "") -> bytes:
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{doctype}{body}\n'.encode()


def _sub(parent: ET.Element, tag: str, text: object = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = str(text)
    return element


# --- WFDB -----------------------------------------------------------------------------------------

def _write_wfdb(ecg: ECG, path: Path) -> Path:
    """wfdb writes fmt 16 with adc gain 1000/mV (1 uV per unit); the .dat is moved into place
    before the .hea, so a crash never leaves a header without its data."""
    stem = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat") else path
    header = stem.with_name(stem.name + ".hea")
    _microvolts(ecg.signal, path, int16=True)  # range check; wfdb digitizes itself
    n = len(ecg.lead_names)
    with atomic_path(header) as tmp:
        try:
            wfdb.wrsamp(stem.name, fs=float(ecg.fs), units=["mV"] * n, sig_name=list(ecg.lead_names),
                        p_signal=np.asarray(ecg.signal, dtype=np.float64).T, fmt=["16"] * n,
                        adc_gain=[1000.0] * n, baseline=[0] * n, write_dir=str(tmp.parent))
        except ValueError as err:  # e.g. a record name wfdb does not accept
            raise MMCardioError(f"wfdb cannot write this record ({err})", path) from None
        os.replace(tmp.parent / f"{stem.name}.dat", stem.with_name(stem.name + ".dat"))
    return header


# --- DICOM ----------------------------------------------------------------------------------------

def _dicom_bytes(ecg: ECG, path: Path) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, _dicom_dataset(ecg, path), enforce_file_format=True)
    return buffer.getvalue()


def _dicom_dataset(ecg: ECG, path: Path) -> Dataset:
    """A 12-Lead ECG Waveform object (General ECG when it has more than 13 channels or 16384
    samples): one RHYTHM multiplex group of int16 samples at 1 uV per unit."""
    low, high = ECG_IOD_FS_RANGE
    if not low <= ecg.fs <= high:
        raise MMCardioError(f"DICOM ECG objects need 200-1000 Hz; got {ecg.fs:g} Hz (resample first)",
                            path, "fs")
    n_channels, n_samples = np.asarray(ecg.signal).shape
    twelve_lead = n_channels <= TWELVE_LEAD_MAX_CHANNELS and n_samples <= TWELVE_LEAD_MAX_SAMPLES
    sop_class = TWELVE_LEAD_ECG_STORAGE if twelve_lead else GENERAL_ECG_STORAGE
    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.Modality = "ECG"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName = ds.PatientID = ds.PatientBirthDate = ds.PatientSex = ""
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.ReferringPhysicianName = ds.StudyID = ds.AccessionNumber = ds.Manufacturer = ""
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.AcquisitionContextSequence = []
    group = Dataset()
    group.MultiplexGroupTimeOffset = "0"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = n_channels
    group.NumberOfWaveformSamples = n_samples
    group.SamplingFrequency = f"{ecg.fs:g}"
    group.MultiplexGroupLabel = "RHYTHM"
    group.ChannelDefinitionSequence = [_dicom_channel(name) for name in ecg.lead_names]
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    # Waveform Data interleaves channels per sample: C1S1, C2S1, ..., CnS1, C1S2, ...
    group.WaveformData = _microvolts(ecg.signal, path, int16=True).T.astype("<i2").tobytes()
    ds.WaveformSequence = [group]
    return ds


def _dicom_channel(lead: str) -> Dataset:
    channel = Dataset()
    channel.ChannelSourceSequence = [_code(f"5.6.3-9-{SCP_ECG_LEAD_CODES[lead]}", "SCPECG",
                                           f"Lead {lead}", "1.3")]
    channel.ChannelSensitivity = "1"
    channel.ChannelSensitivityUnitsSequence = [_code("uV", "UCUM", "microvolt", "1.4")]
    channel.ChannelSensitivityCorrectionFactor = "1"
    channel.ChannelBaseline = "0"
    channel.ChannelSampleSkew = "0"
    channel.WaveformBitsStored = 16
    return channel


def _code(value: str, scheme: str, meaning: str, version: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = value, scheme
    code.CodingSchemeVersion, code.CodeMeaning = version, meaning
    return code


# --- XML vendor formats ---------------------------------------------------------------------------

def _muse_bytes(ecg: ECG, path: Path) -> bytes:
    """GE MUSE RestingECG: one Rhythm waveform with I, II, V1-V6 as base64 int16, 1 uV per bit."""
    names = [name for name in EIGHT_LEADS if name in ecg.lead_names]
    if not {"I", "II"} <= set(names):
        raise MMCardioError("MUSE stores leads I and II; this ECG lacks one", path, "lead_names")
    base, exponent = _decimal_rate(ecg.fs, path)
    root = ET.Element("RestingECG")
    waveform = _sub(root, "Waveform")
    for tag, value in (("WaveformType", "Rhythm"), ("WaveformStartTime", 0),
                       ("NumberofLeads", len(names)), ("SampleType", "CONTINUOUS_SAMPLES"),
                       ("SampleBase", base), ("SampleExponent", exponent)):
        _sub(waveform, tag, value)
    digital = _microvolts(ecg.signal, path, int16=True)
    for name in names:
        samples = digital[ecg.lead_names.index(name)].astype("<i2")
        lead = _sub(waveform, "LeadData")
        for tag, value in (("LeadByteCountTotal", samples.nbytes), ("LeadTimeOffset", 0),
                           ("LeadSampleCountTotal", samples.size), ("LeadAmplitudeUnitsPerBit", 1),
                           ("LeadAmplitudeUnits", "MICROVOLTS"), ("LeadHighLimit", 32767),
                           ("LeadLowLimit", -32768), ("LeadID", name), ("LeadOffsetFirstSample", 0),
                           ("FirstSampleBaseline", 0), ("LeadSampleSize", 2), ("LeadOff", "FALSE"),
                           ("BaselineSway", "FALSE"),
                           ("WaveFormData", base64.b64encode(samples.tobytes()).decode("ascii"))):
            _sub(lead, tag, value)
    return _xml_bytes(root, '<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n')


def _decimal_rate(fs: float, path: Path) -> tuple[int, int]:
    """fs as SampleBase x 10^SampleExponent with an integer base (MUSE's encoding)."""
    for digits in range(4):
        base = fs * 10**digits
        if abs(base - round(base)) < 1e-9 * max(1.0, base):
            return round(base), -digits
    raise MMCardioError(f"sampling rate {fs!r} Hz has no short decimal form for MUSE", path, "fs")


def _cardiosoft_bytes(ecg: ECG, path: Path) -> bytes:
    """GE CardioSoft CardiologyXML: StripData with comma-separated samples, 1 uV per LSB."""
    root = ET.Element("CardiologyXML")
    _sub(root, "ObservationType", "RestECG")
    strip = _sub(root, "StripData")
    _sub(strip, "NumberOfLeads", len(ecg.lead_names))
    _sub(strip, "SampleRate", f"{ecg.fs:g}", units="Hz")
    _sub(strip, "ChannelSampleCountTotal", ecg.n_samples)
    _sub(strip, "Resolution", 1, units="uVperLsb")
    for name, samples in zip(ecg.lead_names, _microvolts(ecg.signal, path, int16=False)):
        _sub(strip, "WaveformData", _ints_text(samples, ","), lead=name)
    return _xml_bytes(root)


def _aecg_bytes(ecg: ECG, path: Path) -> bytes:
    """HL7 aECG: one RHYTHM series, a TIME_RELATIVE sequence (increment = 1/fs s) and one
    SLIST_PQ sequence per lead (origin 0 uV, scale 1 uV)."""
    # The namespace declarations are written as plain attributes: ElementTree's
    # default_namespace rejects unprefixed attributes and register_namespace is global state.
    root = ET.Element("AnnotatedECG", {"xmlns": HL7_NAMESPACE, "xmlns:xsi": XSI_NAMESPACE,
                                       "classCode": "OBS", "moodCode": "EVN"})
    _sub(root, "id", root=generate_uid(prefix=None))
    _sub(root, "code", code="93000", codeSystem="2.16.840.1.113883.6.12", codeSystemName="CPT-4")
    _sub(root, "effectiveTime", nullFlavor="UNK")  # the record carries no acquisition time
    series = _sub(_sub(root, "component"), "series", classCode="OBSSER", moodCode="EVN")
    _sub(series, "code", code="RHYTHM", codeSystem=HL7_ACT_CODE, codeSystemName="ActCode")
    _sub(series, "effectiveTime", nullFlavor="UNK")
    sequence_set = _sub(_sub(series, "component"), "sequenceSet", classCode="OBSCOR", moodCode="EVN")

    def sequence(code: str, code_system: str, value_type: str) -> ET.Element:
        element = _sub(_sub(sequence_set, "component"), "sequence", classCode="OBS", moodCode="EVN")
        _sub(element, "code", code=code, codeSystem=code_system)
        return _sub(element, "value", **{"xsi:type": value_type})

    time = sequence("TIME_RELATIVE", HL7_ACT_CODE, "GLIST_PQ")
    _sub(time, "head", value="0", unit="s")
    _sub(time, "increment", value=repr(1.0 / ecg.fs), unit="s")
    for name, samples in zip(ecg.lead_names, _microvolts(ecg.signal, path, int16=False)):
        value = sequence(f"MDC_ECG_LEAD_{name.upper()}", MDC_CODE_SYSTEM, "SLIST_PQ")
        _sub(value, "origin", value="0", unit="uV")
        _sub(value, "scale", value="1", unit="uV")
        _sub(value, "digits", _ints_text(samples, " "))
    return _xml_bytes(root)


# --- NumPy and CSV (mV, float) --------------------------------------------------------------------

def _npy_bytes(ecg: ECG, path: Path) -> bytes:
    """float32 [leads, samples] in mV; NumPy carries no lead names, so only the two fixed lead
    orders the reader knows are written."""
    if tuple(ecg.lead_names) not in (STANDARD_LEADS, EIGHT_LEADS):
        raise MMCardioError(f"a NumPy ECG holds 12 leads in standard order or {', '.join(EIGHT_LEADS)}; "
                            f"got {', '.join(ecg.lead_names)} (write CSV instead)", path, "lead_names")
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(ecg.signal, dtype=np.float32))
    return buffer.getvalue()


def _csv_bytes(ecg: ECG, path: Path) -> bytes:
    """A header row of lead names, then one row per sample in mV with 0.1 uV precision."""
    buffer = io.StringIO()
    np.savetxt(buffer, np.asarray(ecg.signal).T, fmt="%.4f", delimiter=",",
               header=",".join(ecg.lead_names), comments="")
    return buffer.getvalue().encode("utf-8")
