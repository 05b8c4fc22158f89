"""`mmcardio read FILE_OR_FOLDER`: what a reader makes of a file."""
from __future__ import annotations

from mmcardio.cli import add_json_flag, emit
from mmcardio.datasets.readers import read, read_ecg
from mmcardio.datasets.readers.ecg_leads import parse_lead_map


def register(sub) -> None:
    p = sub.add_parser(
        "read", help="read one file or DICOM series and print what was read",
        description="Read an ECG (WFDB, EDF/EDF+, DICOM waveform, GE MUSE XML, CardioSoft XML, HL7 "
                    "aECG, Apple Health export, NumPy/CSV), an echo cine (DICOM, MP4, AVI) or a "
                    "volume (DICOM series folder, NIfTI) and print modality, shape, units, sampling "
                    "rate or spacing, leads, duration and frame count. The reader is chosen by "
                    "content. For ECGs it also prints how each lead was obtained (lead_origin: "
                    "measured, modified for Holter leads such as MLII, derived, declared) and the "
                    "channels it kept unmapped, with notes.",
        epilog="examples: mmcardio read mitdb/100.hea --start 60 --duration 10; "
               "mmcardio read holter.edf --lead ECG1=II --json",
    )
    p.add_argument("path", help="a file, or a folder holding one DICOM series")
    p.add_argument("--fs", type=float, help="sampling rate in Hz, required for NumPy/CSV ECGs")
    p.add_argument("--lead", dest="leads", action="append", default=[], metavar="CHANNEL=LEAD",
                   help="ECG: read a channel whose label names no lead as this standard lead, e.g. ECG1=II")
    p.add_argument("--start", type=float, default=0.0, help="ECG: window start in seconds (default 0)")
    p.add_argument("--duration", type=float, help="ECG: window length in seconds (default: to the end)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    ecg_options = args.fs or args.leads or args.start or args.duration is not None
    if ecg_options:
        record = read_ecg(args.path, fs=args.fs, lead_map=parse_lead_map(args.leads, "--lead"),
                          start_s=args.start, duration_s=args.duration)
    else:
        record = read(args.path)
    summary = record.summary()
    text = "\n".join(f"{k}: {v}" for k, v in summary.items())
    emit(summary, args.json, text)
    return 0
