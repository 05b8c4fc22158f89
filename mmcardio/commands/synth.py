"""`mmcardio synth --out DIR --studies N --seed S`: write a phantom cohort."""

from __future__ import annotations

from mmcardio.cli import add_json_flag, emit


def register(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write a phantom cohort (ECG, echo, CMR, CT, reports, manifest, truth)",
        description="Write a phantom cohort with known truth: 12-lead ECGs from a cardiac-dipole model "
        "(WFDB, DICOM, MUSE XML, aECG), echo cines (DICOM, MP4), CMR cines and CT volumes "
        "(NIfTI, DICOM series), segmentation masks (NIfTI), English/Chinese reports, "
        "OUT/manifest.csv (validate it with `mmcardio validate`) and OUT/truth.jsonl "
        "(findings, measurements with units, both reports, which file holds what). "
        "Findings are correlated as in patients; studies are split train/val/test by "
        "patient. The same seed writes the same manifest and truth.",
        epilog="example: mmcardio synth --out runs/phantom --studies 200 --seed 0",
    )
    p.add_argument(
        "--out", required=True, help="output folder (written atomically: all or nothing)"
    )
    p.add_argument("--studies", type=int, default=200, help="number of studies (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPUs)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it exists and is not empty"
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mmcardio.datasets.synthetic import generate_cohort  # heavy imports only when used

    summary = generate_cohort(
        args.out,
        args.studies,
        seed=args.seed,
        progress=not args.json,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    emit(summary, args.json, _text(summary))
    return 0


def _text(s: dict) -> str:
    lines = [
        f"wrote {s['studies']} studies of {s['patients']} patients to {s['out']} in {s['seconds']} s",
        "modalities: " + ", ".join(f"{k} {v}" for k, v in s["modalities"].items()),
        "splits: " + ", ".join(f"{k} {v}" for k, v in sorted(s["splits"].items())),
        "reports: " + ", ".join(f"{k} {v}" for k, v in sorted(s["report_langs"].items())),
        "findings (positive / labelled studies):",
    ]
    lines += [
        f"  {name:18s} {c['positive']:4d} / {c['labelled']}" for name, c in s["findings"].items()
    ]
    lines.append("formats: " + ", ".join(f"{k} {v}" for k, v in s["formats"].items()))
    return "\n".join(lines)
