"""`mmcardio report`: draft a grounded report for one study; `mmcardio report train`: train the head."""
from __future__ import annotations

import argparse

from mmcardio.cli import add_json_flag, add_run_flags, emit
from mmcardio.errors import MMCardioError

DESCRIPTION = (
    "Draft a report for one study of a manifest, for a physician to review. The head (a "
    "`report train` run's final/) reads the study through its CardioCLIP: projected "
    "embeddings as prefix tokens, then a prompt with the study's measurements (the manifest's, "
    "or with --segmenter measured from predicted masks), the findings the evidence supports "
    "(measurement thresholds first, then the zero-shot probability averaged with the share of "
    "similar archived studies that have the finding) and the same section of the most similar "
    "archived reports; it writes each exam's section, then the impression. Every sentence of the draft is tied "
    "to its evidence (a measurement, a finding probability, retrieved study ids) with a "
    "confidence; a number that disagrees with the measurements is replaced by the measured "
    "value, and a finding the evidence does not support is removed or marked [review]; the "
    "grounding log lists each change. The head refuses to draft (exit 3, with the reasons) "
    "when an input is unusable (flat-line or noise ECG, swapped leads, a blank clip), a "
    "modality is one it was not trained on, an embedding lies far from the training studies', "
    "or the draft's confidence is low.")


def register(sub) -> None:
    p = sub.add_parser("report", help="draft a grounded report for one study (or: report train)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  mmcardio report --model runs/report/final --manifest c/manifest.csv --study S0007\n"
                              "  mmcardio report --model runs/report/final --manifest c/manifest.csv --study S0007 "
                              "--lang zh --json\n"
                              "  mmcardio report train --config configs/report/tiny.yaml --manifest c/manifest.csv "
                              "--out runs/report --set clip_model=runs/demo/align/final --set store=runs/demo/store")
    p.add_argument("--model", help="report-head folder: a `mmcardio report train` run, or its final/")
    p.add_argument("--manifest", help="manifest holding the study")
    p.add_argument("--study", help="study_id to draft")
    p.add_argument("--lang", default="en", choices=("en", "zh"), help="draft language (default en)")
    p.add_argument("--clip-model", help="CardioCLIP folder (default: the one the head was trained with)")
    p.add_argument("--segmenter", help="segmenter folder: measure the study from predicted masks "
                                       "instead of using the manifest's measurements")
    add_json_flag(p)
    p.set_defaults(func=run_draft)
    actions = p.add_subparsers(dest="action", metavar="[train]")
    t = actions.add_parser(
        "train", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train the report head on a manifest's reports",
        description="Train the report head: a causal LM (a tiny GPT-2 learned here, or a local "
                    "transformers model with LoRA) that reads CardioCLIP embeddings as prefix "
                    "tokens and a prompt of measurements, zero-shot findings and retrieved reports, "
                    "and writes the study's report, in every language of `languages` the manifest "
                    "has (report and translations). Needs clip_model (CardioCLIP folder) and store "
                    "(its `mmcardio embed` store of the manifest). A training study without an "
                    "embedding in the store (one embed could not read) is left out, logged and listed "
                    "under skipped_studies in OUT/run.json, while at most max_failed_fraction of the "
                    "studies are (default 0.01; more stops the run). Runs in this process; for several "
                    "use `accelerate launch -m mmcardio.cli report train ...`. Writes "
                    "OUT/metrics.jsonl, OUT/checkpoints/, OUT/config.yaml, OUT/run.json and OUT/final/.",
        epilog="example:\n  mmcardio report train --config configs/report/tiny.yaml --manifest c/manifest.csv "
               "--out runs/report --set clip_model=runs/demo/align/final --set store=runs/demo/store\n"
               "  mmcardio report train ... --set lm=/models/Qwen2.5-0.5B --set lora_rank=16   # LoRA on a local LM")
    t.add_argument("--config", help="run config YAML/JSON (e.g. configs/report/tiny.yaml)")
    t.add_argument("--manifest", required=True, help="manifest with reports (and translations)")
    t.add_argument("--out", required=True, help="run folder")
    add_run_flags(t, "--set max_steps=600 --set lm=/path/to/local/causal-lm")
    t.set_defaults(func=run_train)


def run_train(args) -> int:
    from accelerate import PartialState

    from mmcardio.failures import skipped_note
    from mmcardio.report.config import load_report_config
    from mmcardio.report.train import run_report_training

    summary = run_report_training(load_report_config(args.config, args.overrides), args.manifest, args.out,
                                  resume=args.resume, progress=not args.json)
    if not PartialState().is_main_process:
        return 0
    emit(summary, args.json, f"{summary['steps']} steps on {summary['examples']} reports "
                             f"({', '.join(summary['languages'])}) in {summary['seconds']} s, loss "
                             f"{summary['first_loss']:.3f} -> {summary['final_loss']:.3f}; head in {summary['final']}"
                             + skipped_note(summary["skipped_studies"]))
    return 0


def run_draft(args) -> int:
    from mmcardio.report.draft import ReportDrafter
    from mmcardio.study import read_manifest

    missing = [f"--{k}" for k in ("model", "manifest", "study") if not getattr(args, k)]
    if missing:
        raise MMCardioError(f"drafting needs {', '.join(missing)} (or use `mmcardio report train`)")
    study = next((s for s in read_manifest(args.manifest) if s.study_id == args.study), None)
    if study is None:
        raise MMCardioError(f"no study {args.study!r} in the manifest", args.manifest, "study_id")
    drafter = ReportDrafter(args.model, args.clip_model)
    draft = drafter.draft(study, args.lang, measurements=_segmenter_measurements(args.segmenter, study))
    emit(draft.to_json(), args.json, draft.text() + _log_text(draft))
    return 3 if draft.abstained else 0


def _segmenter_measurements(segmenter: str | None, study):
    if not segmenter:
        return None
    from mmcardio.adapters.predict import predict_masks
    from mmcardio.adapters.segmenter import Segmenters
    from mmcardio.adapters.structural import measure_study

    result = measure_study(study, predict_masks(study, Segmenters(segmenter)))
    measured = dict(study.measurements)
    for modality in sorted(result.measurements, key=lambda m: m == "cmr"):  # CMR, the volume reference, last
        measured.update(result.measurements[modality])
    return measured


def _log_text(draft) -> str:
    if draft.abstained or not draft.grounding_log:
        return ""
    lines = ["", "grounding log:"]
    for entry in draft.grounding_log:
        detail = entry.get("reason") or (f"{entry.get('key')}: {entry.get('stated')} -> {entry.get('measured')}")
        lines.append(f"- {entry['action']}: {entry['sentence'][:80]} ({detail})")
    return "\n".join(lines)
