"""WFDB records (PhysioNet's header + signal files) -> channels in mV, read with wfdb after
the header's claims are checked against what wfdb would misread or over-allocate."""
from __future__ import annotations

import math
import re
from pathlib import Path

import wfdb

from mmcardio.datasets.readers.ecg_xml import Channel, mv_per_unit
from mmcardio.datasets.readers.limits import check_claim
from mmcardio.errors import ReaderError

#: What wfdb raises on malformed headers and short or corrupt .dat files.
WFDB_ERRORS = (ValueError, IndexError, KeyError, TypeError, OSError)
#: Stored bytes per sample of the WFDB formats (FLAC 508/516/524 compress: no bound).
WFDB_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2,
                         "212": 1.5, "310": 4 / 3, "311": 4 / 3}


def read_wfdb(header: Path) -> tuple[list[Channel], float]:
    """wfdb reads the record (after its header's claims are checked); units come from the
    header (WFDB's default is mV)."""
    try:
        _check_wfdb_header(wfdb.rdheader(str(header.with_suffix(""))), header)
        record = wfdb.rdrecord(str(header.with_suffix("")))
    except WFDB_ERRORS as err:
        raise ReaderError(f"corrupt or truncated WFDB record ({type(err).__name__}: {err})", header) from None
    if record.p_signal is None or record.p_signal.size == 0:
        raise ReaderError("WFDB record holds no samples", header)
    return [Channel(name, record.p_signal[:, i] * mv_per_unit(unit or "mV", header, f"units[{name}]"))
            for i, (name, unit) in enumerate(zip(record.sig_name, record.units))], float(record.fs)


def _check_wfdb_header(record, header: Path) -> None:
    """Refuse what wfdb would misread or over-allocate: a sampling rate it rounds (it reads
    "1e-9" as 1 Hz), signals without names, and more samples than the .dat files hold."""
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
    check_claim(header, "sig_len", sig_len * len(names) * 8, None,
                f"{sig_len} samples x {len(names)} signals")
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
