"""EDF / EDF+ recordings (Holter, polysomnography, wearables) -> ECG channels in mV, read with
edfio, which maps the file and decodes only the seconds asked for: an hours-long Holter is
read a window at a time. Signals that are not ECG (EEG, respiration, SpO2) are left unread."""
from __future__ import annotations

from pathlib import Path

import edfio
import numpy as np

from mmcardio.datasets.readers.ecg_leads import channel_role
from mmcardio.datasets.readers.ecg_xml import Channel, mv_per_unit
from mmcardio.datasets.readers.limits import check_claim
from mmcardio.errors import ReaderError

#: What edfio raises on malformed headers and truncated data records.
EDF_ERRORS = (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError, EOFError)


def open_edf(path: Path) -> edfio.Edf:
    """The EDF with its data mapped, not read; refuses a discontinuous EDF+D (its seconds are
    not the recording's time)."""
    try:
        edf = edfio.read_edf(path, lazy_load_data=True)
    except EDF_ERRORS as err:
        raise ReaderError(f"corrupt or truncated EDF ({type(err).__name__}: {err})", path) from None
    if not edf.is_continuous:
        raise ReaderError("EDF+D (discontinuous) recording: its data records are not contiguous in time; "
                          "export it as EDF+C", path, "reserved")
    return edf


def edf_duration_s(path: Path) -> float:
    return float(open_edf(path).duration)


def read_edf(path: Path, start_s: float = 0.0, duration_s: float | None = None,
             lead_map: dict[str, str] | None = None) -> tuple[list[Channel], float]:
    """The ECG signals' samples from `start_s` for `duration_s` seconds (None: to the end), in
    mV, and their sampling rate (ECG signals of different rates are refused: no resampling here)."""
    edf = open_edf(path)
    signals = [s for s in edf.signals if channel_role(s.label, lead_map) is not None]
    if not signals:
        raise ReaderError(f"no ECG signal among the EDF signals {[s.label for s in edf.signals]}", path, "label")
    rates = {float(s.sampling_frequency) for s in signals}
    if len(rates) > 1:
        listing = ", ".join(f"{s.label} {s.sampling_frequency:g} Hz" for s in signals)
        raise ReaderError(f"ECG signals at different sampling rates ({listing})", path, "samples_per_data_record")
    fs = rates.pop()
    if start_s >= float(edf.duration):
        raise ReaderError(f"the window starts at {start_s:g} s, after the recording's end ({edf.duration:g} s)",
                          path, "start_s")
    stop_s = float(edf.duration) if duration_s is None else min(start_s + duration_s, float(edf.duration))
    check_claim(path, "num_data_records", int((stop_s - start_s) * fs) * len(signals) * 8, None,
                f"{stop_s - start_s:g} s of {len(signals)} signals at {fs:g} Hz")
    channels = []
    for signal in signals:
        unit = mv_per_unit(signal.physical_dimension or "uV", path, f"physical_dimension[{signal.label}]")
        try:
            values = signal.get_data_slice(start_s, stop_s)
        except EDF_ERRORS as err:
            raise ReaderError(f"signal {signal.label!r} unreadable ({err})", path, "data") from None
        channels.append(Channel(signal.label, np.asarray(values, dtype=np.float64) * unit))
    return channels, fs
