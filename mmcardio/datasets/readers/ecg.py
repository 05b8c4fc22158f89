"""ECG reader: WFDB, EDF/EDF+, DICOM waveforms, GE MUSE / GE CardioSoft / HL7 aECG XML, Apple
Health ECG exports, NumPy and CSV -> `ECG` (float32 [leads, samples] in mV, standard lead names
in `STANDARD_LEADS` order), whole or a window of it.

The format is chosen by content (DICOM preamble, XML root, NumPy magic, EDF header), with the
WFDB header and CSV recognised by suffix. Every channel label goes through one table
(`ecg_leads.channel_role`): standard leads as measured, Holter/telemetry leads (MLII, MV1,
CM5...) as the standard lead they stand in for ("modified"), other ECG channels (V4R, Frank
X/Y/Z, an "ECG1" that names no lead) kept in `extra_channels`, non-ECG signals left out; the
choice is recorded per lead in `lead_origin` and in words in `notes`. A record with one usable
lead reads (a wearable's lead I, a Holter's MLII). Missing limb leads are derived from two of
I/II/III (Einthoven, Goldberger) and listed in `derived_leads`; absent precordial leads are
listed in `missing_leads` and are never rows of the signal. Nothing is resampled here.

Long recordings (Holter, hours) are read a window at a time: WFDB and EDF decode only the
window asked for (`read_ecg(start_s=, duration_s=)`, `iter_ecg_windows`).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from tokenize import TokenError

import numpy as np
from pydicom.errors import InvalidDicomError
from pydicom.waveforms.numpy_handler import multiplex_array

from mmcardio.datasets.readers.dicom import DICOM_READ_ERRORS, dcmread_bounded, dicom_int
from mmcardio.datasets.readers.ecg_edf import edf_duration_s, read_edf
from mmcardio.datasets.readers.ecg_leads import (
    DECLARED,
    DERIVED,
    MEASURED,
    MODIFIED,
    UNMAPPED,
    ChannelRole,
    channel_role,
    normalize_lead_name,
)
from mmcardio.datasets.readers.ecg_wfdb import read_wfdb, wfdb_duration_s
from mmcardio.datasets.readers.ecg_xml import Channel, mv_per_unit, read_ecg_xml
from mmcardio.datasets.readers.limits import exists, require_file
from mmcardio.errors import ReaderError
from mmcardio.records import ECG, STANDARD_LEADS

__all__ = ["EIGHT_LEADS", "SCP_ECG_LEAD_CODES", "ecg_duration_s", "iter_ecg_windows", "normalize_lead_name",
           "read_ecg"]

logger = logging.getLogger(__name__)

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
EDF_VERSION = b"0       "  # the first 8 bytes of every EDF/EDF+ header


def read_ecg(path: str | Path, fs: float | None = None, min_leads: int = 1, units: str | None = None,
             lead_map: dict[str, str] | None = None, start_s: float = 0.0,
             duration_s: float | None = None) -> ECG:
    """Read an ECG, or the window of `duration_s` seconds from `start_s`, as `ECG` in mV.

    path: a WFDB record (the .hea, the .dat or the record stem), an EDF/EDF+ file, a DICOM ECG
        waveform, a GE MUSE / GE CardioSoft / HL7 aECG XML, an Apple Health ECG export (CSV), a
        NumPy .npy ([leads, samples] or [samples, leads], 12 rows in `STANDARD_LEADS` order or 8
        rows in `EIGHT_LEADS` order) or a CSV with a header row of lead names.
    fs: sampling rate in Hz; required for NumPy/CSV, must agree with the file otherwise.
    min_leads: fewest standard leads (recorded, modified or declared) accepted, e.g. 8 to take
        only full resting ECGs.
    units: amplitude unit of NumPy/CSV values ("uV", "mV", "V"; default mV). Other formats
        state their units, so passing it for them is an error.
    lead_map: {channel label: standard lead} for channels whose label names no lead ("ECG1").
    start_s, duration_s: the window to read (duration None: to the end). WFDB and EDF decode
        only the window; other formats (10-s resting ECGs) are read whole, then cut.
    Raises ReaderError naming the file for corrupt input, NaNs, flat lines, too few leads,
    unknown sampling rates and leads of different lengths.
    """
    kind, path = _detect_format(Path(path))
    if units is not None and kind not in ("npy", "csv"):
        raise ReaderError(f"a {kind} file states its amplitude units; units= is only for "
                          "NumPy/CSV input", path)
    _check_window(start_s, duration_s, path)
    if kind == "wfdb":
        channels, stated_fs = read_wfdb(path, start_s, duration_s)
    elif kind == "edf":
        channels, stated_fs = read_edf(path, start_s, duration_s, lead_map)
    else:
        channels, stated_fs = _read_whole(kind, path, units)
    rate = _sampling_rate(stated_fs, fs, path)
    if kind not in ("wfdb", "edf"):
        channels = _cut(channels, rate, start_s, duration_s, path)
    ecg = _assemble(channels, rate, path, min_leads, lead_map)
    ecg.start_s = float(start_s)
    return ecg


def _read_whole(kind: str, path: Path, units: str | None) -> tuple[list[Channel], float | None]:
    if kind == "npy":
        return _read_numpy(path, units or "mV"), None
    if kind == "csv":
        return _read_csv(path, units)
    return {"dicom": _read_dicom, "xml": read_ecg_xml}[kind](path)


def _check_window(start_s: float, duration_s: float | None, path: Path) -> None:
    if not (math.isfinite(start_s) and start_s >= 0):
        raise ReaderError(f"expected a window start >= 0 s, got {start_s}", path, "start_s")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise ReaderError(f"expected a window duration > 0 s, got {duration_s}", path, "duration_s")


def _cut(channels: list[Channel], fs: float, start_s: float, duration_s: float | None,
         path: Path) -> list[Channel]:
    if start_s == 0 and duration_s is None:
        return channels
    first = round(start_s * fs)
    length = len(channels[0].values_mv) if channels else 0
    if first >= length:
        raise ReaderError(f"the window starts at {start_s:g} s, after the recording's end ({length / fs:g} s)",
                          path, "start_s")
    last = None if duration_s is None else first + round(duration_s * fs)
    return [Channel(c.label, c.values_mv[first:last]) for c in channels]


def ecg_duration_s(path: str | Path, fs: float | None = None) -> float:
    """A recording's length in seconds: from the header alone for WFDB and EDF."""
    kind, path = _detect_format(Path(path))
    if kind == "wfdb":
        return wfdb_duration_s(path)
    if kind == "edf":
        return edf_duration_s(path)
    return read_ecg(path, fs=fs).duration_s


def window_starts(duration_s: float, window_s: float, hop_s: float | None = None) -> list[float]:
    """Starts of `window_s` windows every `hop_s` (default: back to back) covering a recording of
    `duration_s`; the last ends at the recording's end, so no tail is left out or padded."""
    if window_s <= 0 or (hop_s is not None and hop_s <= 0):
        raise ReaderError(f"expected a window and a hop > 0 s, got {window_s} and {hop_s}", field="window_s")
    if duration_s <= window_s:
        return [0.0]
    hop = hop_s or window_s
    starts = list(np.arange(0.0, duration_s - window_s + 1e-9, hop))
    if starts[-1] + window_s < duration_s - 1e-9:
        starts.append(duration_s - window_s)
    return [float(s) for s in starts]


def iter_ecg_windows(path: str | Path, window_s: float, hop_s: float | None = None,
                     **read_kwargs) -> Iterator[ECG]:
    """A long recording as `ECG` windows (`window_starts`), each read on its own: WFDB and EDF
    decode only that window, so a 24-hour Holter never sits in memory whole. `read_kwargs`
    are `read_ecg`'s (fs, lead_map, min_leads, units)."""
    duration = ecg_duration_s(path, fs=read_kwargs.get("fs"))
    for start in window_starts(duration, window_s, hop_s):
        yield read_ecg(path, start_s=start, duration_s=window_s, **read_kwargs)


def _detect_format(path: Path) -> tuple[str, Path]:
    """("wfdb" | "edf" | "dicom" | "xml" | "npy" | "csv", the path to read)."""
    if not exists(path):
        header = path.with_name(path.name + ".hea")
        if exists(header):  # a WFDB record stem
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
    if head.startswith(EDF_VERSION) or suffix in (".edf", ".rec"):
        return "edf", path
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return "xml", path
    if suffix == ".csv":
        return "csv", path
    raise ReaderError("unknown ECG file type; expected WFDB (.hea/.dat), EDF, DICOM waveform, "
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
        ds = dcmread_bounded(path, force=path.suffix.lower() == ".dcm")
        list(ds.iterall())  # convert every value now, so a corrupt one fails here, named
        groups = list(ds.get("WaveformSequence", []))
    except InvalidDicomError as err:
        raise ReaderError(f"not a DICOM file ({err})", path) from None
    except DICOM_READ_ERRORS as err:
        raise ReaderError(f"corrupt or truncated DICOM ({type(err).__name__}: {err})", path) from None
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
    except (AttributeError, ValueError, KeyError, TypeError, IndexError, OverflowError) as err:
        # TypeError: a channel's sensitivity or baseline that is not a number (pydicom adds it)
        raise ReaderError(f"waveform data unreadable or truncated ({type(err).__name__}: {err})", path,
                          "WaveformData") from None
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
    return n_leads, not is_median, dicom_int(group.get("NumberOfWaveformSamples"), 0)  # 0: absent or not one number


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
    except (ValueError, OSError, EOFError, TokenError, SyntaxError) as err:  # the last two: a garbled header dict
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


def _read_csv(path: Path, units: str | None) -> tuple[list[Channel], float | None]:
    """A header row of lead names, then one row per sample (delimiter , ; or tab); or an Apple
    Health ECG export (metadata rows, then one sample per row)."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise ReaderError(f"not a text CSV ({err})", path) from None
    if len(lines) < 2:
        raise ReaderError("CSV needs a header row of lead names and at least one row of samples", path)
    if _is_apple_health(lines):
        if units is not None:
            raise ReaderError("an Apple Health export states its unit; units= is only for plain CSV", path)
        return _read_apple_health(lines, path)
    delimiter = next((d for d in (",", ";", "\t") if d in lines[0]), ",")
    labels = [cell.strip().strip('"') for cell in lines[0].split(delimiter)]
    if all(_is_number(label) for label in labels):
        raise ReaderError("CSV has no header row of lead names", path)
    data = _numbers(lines[1:], delimiter, path)
    if data.shape[1] != len(labels):
        raise ReaderError(f"{data.shape[1]} columns of samples but {len(labels)} header names", path)
    scale = mv_per_unit(units or "mV", path, "units")
    return [Channel(label, data[:, i] * scale) for i, label in enumerate(labels)], None


#: Metadata rows of an Apple Health ECG export (apple_health_export/electrocardiograms/*.csv).
APPLE_HEALTH_KEYS = ("Sample Rate", "Lead", "Unit")


def _is_apple_health(lines: list[str]) -> bool:
    keys = {line.split(",", 1)[0].strip().strip('"') for line in lines[:20]}
    return all(key in keys for key in APPLE_HEALTH_KEYS)


def _read_apple_health(lines: list[str], path: Path) -> tuple[list[Channel], float]:
    """The export's one lead (Apple Watch records lead I) at its "Sample Rate" (e.g. "512
    hertz") in its "Unit" (µV). Identifying rows (Name, Date of Birth) are not read."""
    first = next((i for i, line in enumerate(lines) if _is_number(line.split(",")[0].strip())), None)
    if first is None:
        raise ReaderError("the Apple Health export holds no samples", path)
    meta = {}
    for line in lines[:first]:
        key, _, value = line.partition(",")
        meta[key.strip().strip('"')] = value.strip().strip('"')
    rate = meta["Sample Rate"].split()[0] if meta["Sample Rate"] else ""
    if not _is_number(rate):
        raise ReaderError(f"expected a rate like '512 hertz', got {meta['Sample Rate']!r}", path, "Sample Rate")
    data = _numbers([line.split(",")[0] for line in lines[first:]], ",", path)
    return [Channel(meta["Lead"], data[:, 0] * mv_per_unit(meta["Unit"], path, "Unit"))], float(rate)


def _numbers(lines: list[str], delimiter: str, path: Path) -> np.ndarray:
    try:
        return np.loadtxt(lines, delimiter=delimiter, ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise ReaderError(f"malformed CSV ({err})", path) from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- assembly: names, checks, derivation ------------------------------------------------------------

def _assemble(channels: list[Channel], fs: float, path: Path, min_leads: int,
              lead_map: dict[str, str] | None) -> ECG:
    _check_declared(lead_map, path)
    leads, roles, extra, notes = _sort_channels(channels, path, lead_map)
    _check_finite({**leads, **extra}, path)
    _check_lengths({**leads, **extra}, path)
    _check_lead_count(leads, min_leads, path)
    _check_not_flat(leads, path)
    derived = _derive_limb_leads(leads)
    names = [name for name in STANDARD_LEADS if name in leads]
    origin = {name: roles[name].origin if name in roles else DERIVED for name in names}
    return ECG(
        signal=np.stack([leads[name] for name in names]).astype(np.float32),
        fs=fs, lead_names=names,
        missing_leads=[name for name in STANDARD_LEADS if name not in leads],
        derived_leads=derived, units="mV", source=str(path),
        lead_origin={**origin, **{label: UNMAPPED for label in extra}},
        extra_channels={label: values.astype(np.float32) for label, values in extra.items()},
        notes=notes,
    )


def _check_declared(lead_map: dict[str, str] | None, path: Path) -> None:
    unknown = sorted(lead for lead in (lead_map or {}).values() if lead not in STANDARD_LEADS)
    if unknown:
        raise ReaderError(f"declared leads {unknown} are not standard leads {list(STANDARD_LEADS)}", path, "lead_map")


def _sort_channels(channels: list[Channel], path: Path, lead_map: dict[str, str] | None,
                   ) -> tuple[dict[str, np.ndarray], dict[str, ChannelRole], dict[str, np.ndarray], list[str]]:
    """Standard lead -> samples in mV (inverted leads flipped) and the role that gave it;
    unmapped ECG channels by label; notes. A lead given twice keeps the measured channel."""
    leads: dict[str, np.ndarray] = {}
    roles: dict[str, ChannelRole] = {}
    extra: dict[str, np.ndarray] = {}
    notes, dropped = [], []
    rank = {MEASURED: 0, DECLARED: 1, MODIFIED: 2}
    for channel in channels:
        role = channel_role(channel.label, lead_map)
        if role is None:
            dropped.append(channel.label)
        elif role.lead is None:
            extra[channel.label] = channel.values_mv
            notes.append(role.note)
        elif role.lead in roles and rank[roles[role.lead].origin] <= rank[role.origin]:
            notes.append(f"{channel.label}: lead {role.lead} is already read from {roles[role.lead].label}; left out")
        else:
            leads[role.lead] = -channel.values_mv if role.inverted else channel.values_mv
            roles[role.lead] = role
    notes += [roles[lead].note for lead in STANDARD_LEADS if lead in roles and roles[lead].note]
    if dropped:
        logger.info("%s: left out channels that are no ECG %s", path, dropped)
    if not leads:
        hint = f" ({'; '.join(notes)})" if notes else ""
        raise ReaderError(f"no channel is a standard ECG lead or a modified one among {[c.label for c in channels]}"
                          f"{hint}", path, "lead_map" if extra else None)
    return leads, roles, extra, notes


def _check_finite(leads: dict[str, np.ndarray], path: Path) -> None:
    for name, values in leads.items():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ReaderError(f"lead {name} has {bad} NaN (missing or invalid) samples of "
                              f"{len(values)}", path, name)
        largest = float(np.max(np.abs(values), initial=0.0))  # a window past a short lead is empty
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
    raise ReaderError(f"{len(names)} leads ({', '.join(names)}), fewer than the {min_leads} asked for "
                      "(min_leads)", path, "min_leads")


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
