"""WFDB records (PhysioNet's header + signal files) -> channels in mV, read with wfdb after
the header's claims are checked against what wfdb would misread or over-allocate."""
from __future__ import annotations

import math
import re
from pathlib import Path

import wfdb

from mmcardio.datasets.readers.ecg_xml import Channel, is_voltage, mv_per_unit
from mmcardio.datasets.readers.limits import check_claim
from mmcardio.errors import ReaderError

#: What wfdb raises on malformed headers and short or corrupt .dat files.
WFDB_ERRORS = (ValueError, IndexError, KeyError, TypeError, OSError)
#: Stored bytes per sample of the WFDB formats (FLAC 508/516/524 compress: no bound).
WFDB_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2,
                         "212": 1.5, "310": 4 / 3, "311": 4 / 3}


def wfdb_duration_s(header: Path) -> float:
    """The record's length in seconds, from its header alone."""
    record = _read_header(header)
    return int(record.sig_len or 0) / float(record.fs)


def read_wfdb(header: Path, start_s: float = 0.0, duration_s: float | None = None) -> tuple[list[Channel], float]:
    """wfdb reads the record, or the window of `duration_s` seconds from `start_s` (None: to
    the end; wfdb reads only that part of the .dat), after its header's claims are checked;
    units come from the header (WFDB's default is mV)."""
    header_record = _read_header(header)
    sig_len = int(header_record.sig_len or 0)
    first = round(start_s * header_record.fs)
    if first >= sig_len > 0:
        raise ReaderError(f"the window starts at {start_s:g} s, after the record's end "
                          f"({sig_len / header_record.fs:g} s)", header, "start_s")
    last = sig_len if duration_s is None else min(sig_len, first + round(duration_s * header_record.fs))
    try:
        _check_wfdb_header(header_record, header, last - first)
        record = wfdb.rdrecord(str(header.with_suffix("")), sampfrom=first, sampto=last)
    except WFDB_ERRORS as err:
        raise ReaderError(f"corrupt or truncated WFDB record ({type(err).__name__}: {err})", header) from None
    if record.p_signal is None or record.p_signal.size == 0:
        raise ReaderError("WFDB record holds no samples", header)
    units = [unit or "mV" for unit in record.units]
    voltages = [i for i, unit in enumerate(units) if is_voltage(unit)]
    if not voltages:
        raise ReaderError(f"no signal is a voltage (units {units}): no ECG in this record", header, "units")
    return [Channel(record.sig_name[i], record.p_signal[:, i] * mv_per_unit(units[i], header, "units"))
            for i in voltages], float(record.fs)  # others (blood pressure in mmHg, respiration) are no ECG


def _read_header(header: Path):
    try:
        return wfdb.rdheader(str(header.with_suffix("")))
    except WFDB_ERRORS as err:
        raise ReaderError(f"corrupt WFDB header ({type(err).__name__}: {err})", header) from None


def _check_wfdb_header(record, header: Path, window: int) -> None:
    """Refuse what wfdb would misread or over-allocate: a sampling rate it rounds (it reads
    "1e-9" as 1 Hz), signals without names, more samples than the .dat files hold, and a
    window (`window` samples) over the decoded-size limit."""
    stated = header.read_text(encoding="latin-1").split("\n")
    fields = next(line for line in stated if line.strip() and not line.startswith("#")).split()
    if len(fields) > 2:
        text = re.split(r"[/(]", fields[2])[0]
        if not math.isclose(float(text), float(record.fs), rel_tol=1e-6):
            raise ReaderError(f"sampling frequency {text!r} is not a rate wfdb can read (it reads "
                              f"{record.fs:g} Hz)", header, "fs")
    names = getattr(record, "sig_name", None) or []
    if any(not name for name in names):
        raise ReaderError("the header names no lead for some signals (description field empty); "
                          "cannot tell which lead each signal is", header, "sig_name")
    sig_len = int(record.sig_len or 0)
    check_claim(header, "sig_len", window * len(names) * 8, None,
                f"{window} samples x {len(names)} signals")
    per_file: dict[str, float] = {}
    for file_name, fmt in zip(getattr(record, "file_name", None) or [], record.fmt or []):
        if fmt not in WFDB_BYTES_PER_SAMPLE:
            return  # compressed (FLAC) data: the decoded-size limit above is the bound
        per_file[file_name] = per_file.get(file_name, 0.0) + WFDB_BYTES_PER_SAMPLE[fmt]
    for file_name, bytes_per_frame in per_file.items():
        data = header.with_name(file_name)
        if data.is_file():  # a missing file is wfdb's error to report
            check_claim(header, "sig_len", math.ceil(sig_len * bytes_per_frame), data.stat().st_size,
                        f"{sig_len} samples in {file_name}")
