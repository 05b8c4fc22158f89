"""`mmcardio measure --manifest M --study ID`: a study's masks -> measurements with evidence."""

from __future__ import annotations

from pathlib import Path

from mmcardio.cli import add_json_flag, emit
from mmcardio.errors import MMCardioError
from mmcardio.study import read_manifest

DESCRIPTION = (
    "Measure one study from its label masks. Echo (A4C/A2C): LV end-diastolic and end-systolic "
    "volume (mL) by the biplane method of disks, or area-length with one view; EF (%); wall "
    "thickness (mm); LA volume (mL). CMR short-axis cine: LV volumes (mL) and EF (%) by disk "
    "summation, LV mass (g), wall thickness (mm), RV end-diastolic volume (mL). CT: Agatston "
    "score (AU) and calcium volume (mm3), from the CT in HU. Every value cites its source "
    "(modality and views), the ED/ES frames or slices it came from, the method and a "
    "confidence in [0, 1] (for echo: agreement of the two apical views; null when nothing "
    "checks it). Masks are the manifest's `masks` column (label values of "
    "mmcardio.records.Label) or, with --segmenter, predicted with no user: the LV found "
    "automatically and tracked through each cine (CT: the heart between the lungs, then the "
    "calcified lesions on it)."
)


def register(sub) -> None:
    p = sub.add_parser(
        "measure",
        help="one study's masks -> EF, volumes, mass, wall thickness, Agatston (with evidence)",
        description=DESCRIPTION,
    )
    p.add_argument("--manifest", required=True, help="manifest file (.csv, .parquet or .jsonl)")
    p.add_argument("--study", required=True, help="study_id of the row to measure")
    p.add_argument("--segmenter", type=Path,
                   help="segmenter folder (a `mmcardio segment train` run's final/): predict the masks "
                        "instead of reading the manifest's")
    p.add_argument("--out", type=Path, help="folder for the masks as NIfTI (<study>_<key>.nii.gz)")
    p.add_argument("--png", action="store_true",
                   help="also write <study>_overlay.png in --out: ED and ES frames with the LV contours")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mmcardio.adapters.structural import measure_study, write_masks, write_overlays

    if args.png and args.out is None:
        raise MMCardioError("--png writes into --out DIR; give --out", field="--png")
    study = _find_study(args.manifest, args.study, need_masks=args.segmenter is None)
    result = measure_study(study, _predicted(study, args.segmenter) if args.segmenter else None)
    summary = result.to_json()
    if args.out is not None:
        summary["files"] = {k: str(p) for k, p in write_masks(result, args.out).items()}
        if args.png:
            summary["overlay"] = str(write_overlays(result, args.out, study))
    emit(summary, args.json, _text(summary))
    return 0


def _find_study(manifest: str, study_id: str, need_masks: bool):
    studies = {s.study_id: s for s in read_manifest(manifest)}
    if study_id not in studies:
        raise MMCardioError(f"no study {study_id!r} in the manifest", manifest, "study_id")
    if need_masks and not studies[study_id].masks:
        raise MMCardioError(f"study {study_id!r} has no masks; give --segmenter to predict them",
                            manifest, "masks")
    return studies[study_id]


def _predicted(study, folder: Path) -> dict:
    from mmcardio.adapters.predict import predict_masks
    from mmcardio.adapters.segmenter import Segmenters

    segmenters = Segmenters(folder)
    masks = predict_masks(study, segmenters)
    if not masks:
        raise MMCardioError(f"study {study.study_id!r} has no echo, CMR or CT series the segmenter "
                            f"outlines ({sorted(segmenters.predictors)})", folder, "segmenter")
    return masks


def _text(summary: dict) -> str:
    lines = []
    for modality, found in summary["measurements"].items():
        for name, m in found.items():
            where = ", ".join(f"{k} {'/'.join(map(str, v))}" for k, v in m["frames"].items())
            confidence = "" if m["confidence"] is None else f", confidence {m['confidence']:.2f}"
            lines.append(f"{modality} {name}: {m['value']:.1f} {m['unit']} ({m['method']}; "
                         f"frames {where or '-'}{confidence})")
    lines += [f"wrote {p}" for p in summary.get("files", {}).values()]
    return "\n".join(lines + ([f"wrote {summary['overlay']}"] if summary.get("overlay") else []))
