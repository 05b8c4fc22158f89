"""`mmcardio read FILE_OR_FOLDER`: what a reader makes of a file."""
from __future__ import annotations

from mmcardio.cli import add_json_flag, emit
from mmcardio.datasets.readers import read, read_ecg


def register(sub) -> None:
    p = sub.add_parser(
        "read", help="read one file or DICOM series and print what was read",
        description="Read an ECG (WFDB, DICOM waveform, GE MUSE XML, CardioSoft XML, HL7 aECG, "
                    "NumPy/CSV), an echo cine (DICOM, MP4, AVI) or a volume (DICOM series folder, "
                    "NIfTI) and print modality, shape, units, sampling rate or spacing, leads, "
                    "duration and frame count. The reader is chosen by content.",
    )
    p.add_argument("path", help="a file, or a folder holding one DICOM series")
    p.add_argument("--fs", type=float, help="sampling rate in Hz, required for NumPy/CSV ECGs")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    record = read_ecg(args.path, fs=args.fs) if args.fs else read(args.path)
    summary = record.summary()
    text = "\n".join(f"{k}: {v}" for k, v in summary.items())
    emit(summary, args.json, text)
    return 0
