"""ECG reader: WFDB, DICOM waveforms, GE MUSE / GE CardioSoft / HL7 aECG XML, NumPy and CSV
-> `ECG` (float32 [leads, samples] in mV, standard lead names in `STANDARD_LEADS` order).

The format is chosen by content (DICOM preamble, XML root, NumPy magic), with the WFDB header
and CSV recognised by suffix. Every lead label goes through one spelling table
(`normalize_lead_name`); leads outside the standard twelve (V4R, X/Y/Z, V7, ...) are dropped
(logged at INFO). Missing limb leads are derived from two of I/II/III (Einthoven, Goldberger)
and listed in `derived_leads`; absent precordial leads are listed in `missing_leads` and are
never rows of the signal. Nothing is resampled here.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.waveforms.numpy_handler import multiplex_array

from mmcardio.datasets.readers.ecg_wfdb import read_wfdb
from mmcardio.datasets.readers.ecg_xml import Channel, mv_per_unit, read_ecg_xml
from mmcardio.datasets.readers.limits import require_file
from mmcardio.errors import ReaderError
from mmcardio.records import ECG, STANDARD_LEADS

__all__ = ["EIGHT_LEADS", "SCP_ECG_LEAD_CODES", "normalize_lead_name", "read_ecg"]

logger = logging.getLogger(__name__)

#: The one spelling table: every accepted spelling of a standard lead, after upper-casing and
#: removing spaces, "_" and the prefixes "MDC_ECG_", "LEAD". "C1".."C6" is the European naming
#: of V1..V6; "DI".."DIII" the Latin-American/French naming of I..III.
LEAD_SPELLINGS = {
    spelling: lead
    for lead, spellings in {
        "I": ("I", "DI", "D1"), "II": ("II", "DII", "D2"), "III": ("III", "DIII", "D3"),
        "aVR": ("AVR",), "aVL": ("AVL",), "aVF": ("AVF",),
        **{f"V{i}": (f"V{i}", f"C{i}") for i in range(1, 7)},
    }.items()
    for spelling in spellings
}

#: SCP-ECG lead numbers (DICOM CID 3001 codes "5.6.3-9-N" and MDC "2:N" share them).
SCP_ECG_LEAD_CODES = {"I": 1, "II": 2, "V1": 3, "V2": 4, "V3": 5, "V4": 6, "V5": 7, "V6": 8,
                      "III": 61, "aVR": 62, "aVL": 63, "aVF": 64}
SCP_ECG_INVERTED_AVR = 65  # "Lead -aVR"
_LEAD_BY_SCP_NUMBER = {number: lead for lead, number in SCP_ECG_LEAD_CODES.items()}

#: The independent leads most devices store; a NumPy array of 8 rows holds these.
EIGHT_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
NUMPY_LEAD_ORDERS = {12: STANDARD_LEADS, 8: EIGHT_LEADS}

FLAT_PEAK_TO_PEAK_MV = 0.010  # below 10 uV on every lead there is no ECG in the file
#: Above 1 V a sample is no surface ECG (hundreds of times any QRS): wrong units or a bad value.
MAX_ABS_MV = 1000.0
#: Sampling rates an ECG can have (Holter 128 Hz, PTB-XL's 100 Hz copies, 10 kHz research).
ECG_FS_RANGE_HZ = (25.0, 100_000.0)
_EPONYMS = re.compile(r"\((einthoven|goldberger|wilson)\)", re.IGNORECASE)
_PREFIXES = re.compile(r"^(MDCECG)?(LEAD)?")


def normalize_lead_name(label: str) -> tuple[str, bool] | None:
    """Standard name of a lead label and whether it is stored inverted ("-aVR"), or None when
    the label is not one of the twelve standard leads.

    >>> normalize_lead_name("MDC_ECG_LEAD_AVR"), normalize_lead_name("C1"), normalize_lead_name("-aVR")
    (('aVR', False), ('V1', False), ('aVR', True))
    """
    key = re.sub(r"[\s_]", "", _EPONYMS.sub("", label)).upper()
    key = _PREFIXES.sub("", key)
    inverted = key.startswith("-") or key.endswith("NEG")
    key = key.removeprefix("-").removesuffix("NEG")
    lead = LEAD_SPELLINGS.get(key)
    return None if lead is None else (lead, inverted)


def read_ecg(path: str | Path, fs: float | None = None, min_leads: int = 6,
             units: str | None = None) -> ECG:
    """Read a resting ECG as `ECG` in mV.

    path: a WFDB record (the .hea, the .dat or the record stem), a DICOM ECG waveform, a GE
        MUSE / GE CardioSoft / HL7 aECG XML, a NumPy .npy ([leads, samples] or [samples, leads],
        12 rows in `STANDARD_LEADS` order or 8 rows in `EIGHT_LEADS` order) or a CSV with a
        header row of lead names.
    fs: sampling rate in Hz; required for NumPy/CSV, must agree with the file otherwise.
    min_leads: fewest recorded standard leads accepted (1 for single-lead devices).
    units: amplitude unit of NumPy/CSV values ("uV", "mV", "V"; default mV). Other formats
        state their units, so passing it for them is an error.
    Raises ReaderError naming the file for corrupt input, NaNs, flat lines, too few leads,
    unknown sampling rates and leads of different lengths.
    """
    kind, path = _detect_format(Path(path))
    if units is not None and kind not in ("npy", "csv"):
        raise ReaderError(f"a {kind} file states its amplitude units; units= is only for "
                          "NumPy/CSV input", path)
    if kind == "npy":
        channels, stated_fs = _read_numpy(path, units or "mV"), None
    elif kind == "csv":
        channels, stated_fs = _read_csv(path, units or "mV"), None
    else:
        channels, stated_fs = {"wfdb": read_wfdb, "dicom": _read_dicom, "xml": read_ecg_xml}[kind](path)
    return _assemble(channels, _sampling_rate(stated_fs, fs, path), path, min_leads)


def _detect_format(path: Path) -> tuple[str, Path]:
    """("wfdb" | "dicom" | "xml" | "npy" | "csv", the path to read)."""
    if not path.exists():
        header = path.with_name(path.name + ".hea")
        if header.exists():  # a WFDB record stem
            return "wfdb", header
        raise ReaderError("file does not exist", path)
    if path.is_dir():
        raise ReaderError("is a folder; expected an ECG file", path)
    require_file(path)
    suffix = path.suffix.lower()
    if suffix in (".hea", ".dat"):
        if not path.with_suffix(".hea").exists():
            raise ReaderError(f"WFDB data without its header {path.with_suffix('.hea').name}", path)
        return "wfdb", path.with_suffix(".hea")
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM" or suffix == ".dcm":
        return "dicom", path
    if head.startswith(b"\x93NUMPY"):
        return "npy", path
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return "xml", path
    if suffix == ".csv":
        return "csv", path
    raise ReaderError("unknown ECG file type; expected WFDB (.hea/.dat), DICOM waveform, "
                      "MUSE/CardioSoft/aECG XML, NumPy .npy or CSV", path)


def _sampling_rate(stated: float | None, given: float | None, path: Path) -> float:
    if stated is None and given is None:
        raise ReaderError("sampling rate unknown: pass fs", path, "fs")
    if stated is not None and given is not None and not math.isclose(stated, given, rel_tol=1e-6):
        raise ReaderError(f"the file states {stated:g} Hz but fs={given:g} was passed", path, "fs")
    rate = float(stated if stated is not None else given)
    low, high = ECG_FS_RANGE_HZ
    if not (math.isfinite(rate) and low <= rate <= high):
        raise ReaderError(f"sampling rate {rate:g} Hz is outside the {low:g}-{high:g} Hz an ECG is "
                          "recorded at", path, "fs")
    return rate


# --- formats --------------------------------------------------------------------------------------

def _read_dicom(path: Path) -> tuple[list[Channel], float | None]:
    """pydicom decodes the multiplex group (sensitivity x correction + baseline); the channel
    sensitivity units sequence then gives mV."""
    try:
        ds = pydicom.dcmread(path, force=path.suffix.lower() == ".dcm")
        groups = list(ds.get("WaveformSequence", []))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as err:
        raise ReaderError(f"corrupt or truncated DICOM ({err})", path) from None
    sop_class = ds.get("SOPClassUID")
    if sop_class is None:
        raise ReaderError("not a DICOM object (no SOP Class UID); corrupt file?", path, "SOPClassUID")
    if not groups:
        raise ReaderError(f"DICOM without waveform data ({getattr(sop_class, 'name', sop_class)}); "
                          "expected an ECG waveform object", path, "WaveformSequence")
    index = max(range(len(groups)), key=lambda i: _ecg_group_rank(groups[i]))
    group = groups[index]
    definitions = list(group.get("ChannelDefinitionSequence", []))
    try:
        values = multiplex_array(ds, index, as_raw=False)
    except (AttributeError, ValueError, KeyError) as err:
        raise ReaderError(f"waveform data unreadable or truncated ({err})", path, "WaveformData") from None
    if len(definitions) != values.shape[1]:
        raise ReaderError(f"{values.shape[1]} channels but {len(definitions)} channel definitions",
                          path, "ChannelDefinitionSequence")
    channels = [Channel(_dicom_channel_label(ch), values[:, i] * _dicom_channel_mv(ch, path))
                for i, ch in enumerate(definitions)]
    rate = group.get("SamplingFrequency")
    return channels, None if rate is None else float(rate)


def _ecg_group_rank(group) -> tuple[int, bool, int]:
    """Prefer the multiplex group with the most standard leads, then rhythm over median beats,
    then the longest."""
    labels = [_dicom_channel_label(ch) for ch in group.get("ChannelDefinitionSequence", [])]
    n_leads = sum(normalize_lead_name(label) is not None for label in labels)
    is_median = "MEDIAN" in str(group.get("MultiplexGroupLabel", "")).upper()
    return n_leads, not is_median, int(group.get("NumberOfWaveformSamples", 0))


def _dicom_channel_label(channel) -> str:
    """A lead label from the SCP-ECG/MDC code when there is one, else the code meaning or label."""
    sources = channel.get("ChannelSourceSequence") or [None]
    source = sources[0]
    if source is None:
        return str(channel.get("ChannelLabel", ""))
    number = _scp_ecg_number(str(source.get("CodingSchemeDesignator", "")), str(source.get("CodeValue", "")))
    if number == SCP_ECG_INVERTED_AVR:
        return "-aVR"
    if number is not None:
        return _LEAD_BY_SCP_NUMBER.get(number, f"non-standard lead code {number}")
    return str(source.get("CodeMeaning") or channel.get("ChannelLabel", ""))


def _scp_ecg_number(scheme: str, code: str) -> int | None:
    """The lead number of "5.6.3-9-N" (SCPECG), "2:N" or 131072+N (MDC)."""
    if scheme == "SCPECG" and code.startswith("5.6.3-9-"):
        code = code.removeprefix("5.6.3-9-")
    elif scheme == "MDC" and code.startswith("2:"):
        code = code.removeprefix("2:")
    elif scheme == "MDC" and code.isdigit() and 131072 <= int(code) < 131072 + 65536:
        code = str(int(code) - 131072)
    else:
        return None
    return int(code) if code.isdigit() else None


def _dicom_channel_mv(channel, path: Path) -> float:
    if "ChannelSensitivity" not in channel:
        raise ReaderError("channel has no ChannelSensitivity: amplitude units unknown", path,
                          "ChannelSensitivity")
    units = channel.get("ChannelSensitivityUnitsSequence") or []
    if not units:
        raise ReaderError("channel has no ChannelSensitivityUnitsSequence: amplitude units unknown",
                          path, "ChannelSensitivityUnitsSequence")
    code = units[0]
    unit = str(code.get("CodeValue") or code.get("CodeMeaning", ""))
    return mv_per_unit(unit, path, "ChannelSensitivityUnitsSequence")


def _read_numpy(path: Path, units: str) -> list[Channel]:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ReaderError(f"corrupt or truncated .npy ({err})", path) from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ReaderError(f"expected a 2-D numeric array [leads, samples], got {array.dtype} "
                          f"{list(array.shape)}", path)
    if array.shape[0] == array.shape[1]:
        raise ReaderError(f"shape {list(array.shape)} is ambiguous: which axis holds the leads?", path)
    signal = array if array.shape[0] < array.shape[1] else array.T  # leads are the short axis
    names = NUMPY_LEAD_ORDERS.get(signal.shape[0])
    if names is None:
        raise ReaderError(f"{signal.shape[0]} unnamed leads: a NumPy ECG holds 12 rows "
                          f"({', '.join(STANDARD_LEADS)}) or 8 rows ({', '.join(EIGHT_LEADS)}); "
                          "use CSV with a header row for other lead sets", path)
    scale = mv_per_unit(units, path, "units")
    return [Channel(name, row.astype(np.float64) * scale) for name, row in zip(names, signal)]


def _read_csv(path: Path, units: str) -> list[Channel]:
    """A header row of lead names, then one row per sample (delimiter , ; or tab)."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise ReaderError(f"not a text CSV ({err})", path) from None
    if len(lines) < 2:
        raise ReaderError("CSV needs a header row of lead names and at least one row of samples", path)
    delimiter = next((d for d in (",", ";", "\t") if d in lines[0]), ",")
    labels = [cell.strip().strip('"') for cell in lines[0].split(delimiter)]
    if all(_is_number(label) for label in labels):
        raise ReaderError("CSV has no header row of lead names", path)
    try:
        data = np.loadtxt(lines[1:], delimiter=delimiter, ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise ReaderError(f"malformed CSV ({err})", path) from None
    if data.shape[1] != len(labels):
        raise ReaderError(f"{data.shape[1]} columns of samples but {len(labels)} header names", path)
    scale = mv_per_unit(units, path, "units")
    return [Channel(label, data[:, i] * scale) for i, label in enumerate(labels)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- assembly: names, checks, derivation ------------------------------------------------------------

def _assemble(channels: list[Channel], fs: float, path: Path, min_leads: int) -> ECG:
    leads = _standard_leads(channels, path)
    _check_finite(leads, path)
    _check_lengths(leads, path)
    _check_lead_count(leads, min_leads, path)
    _check_not_flat(leads, path)
    derived = _derive_limb_leads(leads)
    names = [name for name in STANDARD_LEADS if name in leads]
    return ECG(
        signal=np.stack([leads[name] for name in names]).astype(np.float32),
        fs=fs, lead_names=names,
        missing_leads=[name for name in STANDARD_LEADS if name not in leads],
        derived_leads=derived, units="mV", source=str(path),
    )


def _standard_leads(channels: list[Channel], path: Path) -> dict[str, np.ndarray]:
    """Standard lead name -> samples in mV (inverted leads flipped); other channels dropped."""
    leads: dict[str, np.ndarray] = {}
    dropped = []
    for channel in channels:
        named = normalize_lead_name(channel.label)
        if named is None or named[0] in leads:
            dropped.append(channel.label)
            continue
        name, inverted = named
        leads[name] = -channel.values_mv if inverted else channel.values_mv
    if not leads:
        raise ReaderError(f"no standard ECG lead among the channels {[c.label for c in channels]}", path)
    if dropped:
        logger.info("%s: dropped non-standard or repeated channels %s", path, dropped)
    return leads


def _check_finite(leads: dict[str, np.ndarray], path: Path) -> None:
    for name, values in leads.items():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ReaderError(f"lead {name} has {bad} NaN (missing or invalid) samples of "
                              f"{len(values)}", path, name)
        largest = float(np.max(np.abs(values)))
        if largest > MAX_ABS_MV:
            raise ReaderError(f"lead {name} has a sample of {largest:.4g} mV, beyond the +-{MAX_ABS_MV:g} "
                              "mV of any surface ECG: wrong amplitude units or corrupt values", path, name)


def _check_lengths(leads: dict[str, np.ndarray], path: Path) -> None:
    lengths = {name: len(values) for name, values in leads.items()}
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ReaderError(f"leads have different lengths ({listing} samples)", path)
    if lengths and not next(iter(lengths.values())):
        raise ReaderError("leads hold no samples", path)


def _check_lead_count(leads: dict[str, np.ndarray], min_leads: int, path: Path) -> None:
    if len(leads) >= max(min_leads, 1):
        return
    names = [name for name in STANDARD_LEADS if name in leads]
    raise ReaderError(f"{len(names)} leads ({', '.join(names)}): a 12-lead reader needs at least "
                      f"{min_leads} recorded leads; pass min_leads=1 for single-lead devices", path)


def _check_not_flat(leads: dict[str, np.ndarray], path: Path) -> None:
    largest = max(float(np.ptp(values)) for values in leads.values())
    if largest < FLAT_PEAK_TO_PEAK_MV:
        raise ReaderError(f"flat line: every lead has peak-to-peak below 10 uV (largest "
                          f"{largest * 1000:.2f} uV); the file holds no ECG signal", path)


def _derive_limb_leads(leads: dict[str, np.ndarray]) -> list[str]:
    """Fill in missing limb leads from any two of I, II, III (Einthoven: III = II - I;
    Goldberger: aVR = -(I+II)/2, aVL = I - II/2, aVF = II - I/2). Returns the derived names."""
    if sum(name in leads for name in ("I", "II", "III")) < 2:
        return []
    derived = []
    if "I" not in leads:
        leads["I"] = leads["II"] - leads["III"]
        derived.append("I")
    if "II" not in leads:
        leads["II"] = leads["I"] + leads["III"]
        derived.append("II")
    lead_i, lead_ii = leads["I"], leads["II"]
    formulas = {"III": lambda: lead_ii - lead_i, "aVR": lambda: -(lead_i + lead_ii) / 2,
                "aVL": lambda: lead_i - lead_ii / 2, "aVF": lambda: lead_ii - lead_i / 2}
    for name, formula in formulas.items():
        if name not in leads:
            leads[name] = formula()
            derived.append(name)
    return derived
