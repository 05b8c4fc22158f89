"""`mmcardio label-reports MANIFEST --out OUT`: a manifest's `labels` read from its reports."""
from __future__ import annotations

from pathlib import Path

from mmcardio.cli import add_json_flag, emit

DESCRIPTION = (
    "Fill the `labels` column of a study manifest from its report text, English or Chinese, "
    "with the rule-based report labeller (mmcardio.report.labeller, after CheXpert's): "
    "finding mentions from a clinical lexicon (synonyms, abbreviations, Chinese report "
    "wording), negation (\"no LBBB\", 未见房颤) and uncertainty (\"possible AF\", 不除外房颤) "
    "cues, and guideline thresholds on the numbers reports state (LVEF < 40% reduced, >= 52% "
    "normal; wall >= 13 mm; Agatston > 0 and >= 400; PR > 200 ms; sinus rate < 60 or > 100 "
    "bpm). Each study's `report` is read in its `report_lang` (a study without one: its exam "
    "reports, then its first translation). Findings a report does not state get no label. "
    "Uncertain findings are dropped, or read as present or absent (--uncertain; CheXpert's "
    "U-Ignore, U-Ones, U-Zeros). Labels the manifest already has are kept unless --overwrite. "
    "The new manifest is written atomically (the format follows OUT's suffix: .csv, .parquet "
    "or .jsonl); the per-finding counts of positive, negative and uncertain reports are "
    "printed."
)
EPILOG = ("example: mmcardio label-reports runs/phantom/manifest.csv --out runs/phantom/labelled.csv "
          "--uncertain ignore")


def register(sub) -> None:
    p = sub.add_parser(
        "label_reports", aliases=["label-reports"],
        help="read finding labels (1/0/uncertain) from report text into a manifest",
        description=DESCRIPTION, epilog=EPILOG,
    )
    p.add_argument("manifest", help="manifest file (.csv, .parquet or .jsonl) with `report` and `report_lang`")
    p.add_argument("--out", required=True, type=Path,
                   help="manifest to write (may be MANIFEST itself; replaced atomically)")
    p.add_argument("--uncertain", choices=("ignore", "positive", "negative"), default="ignore",
                   help="what an uncertain finding becomes: dropped (default), 1 or 0")
    p.add_argument("--overwrite", action="store_true",
                   help="replace each study's labels with the labeller's (default: keep the labels "
                        "the manifest has and add the others)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from mmcardio.eval.prompts import FINDINGS
    from mmcardio.report.labeller import label_report, labels_for_manifest
    from mmcardio.study import read_manifest, write_manifest

    studies = read_manifest(args.manifest)
    counts = {name: {"positive": 0, "negative": 0, "uncertain": 0} for name in FINDINGS}
    kept = added = 0
    for study in tqdm(studies, desc="label", unit="study", disable=args.json):
        text, lang = report_of(study)
        read = label_report(text, lang) if text.strip() else {}
        for name, status in read.items():
            counts[name][{1: "positive", 0: "negative", -1: "uncertain"}[status]] += 1
        new = labels_for_manifest(read, args.uncertain)
        old = {} if args.overwrite else study.labels
        kept += len(old)
        added += len(set(new) - set(old))
        study.labels = {**new, **old}
    write_manifest(studies, args.out)
    summary = {"manifest": str(args.manifest), "out": str(args.out), "studies": len(studies),
               "uncertain": args.uncertain, "overwrite": args.overwrite, "labels_kept": kept,
               "labels_added": added, "counts": counts}
    emit(summary, args.json, _text(summary))
    return 0


def report_of(study) -> tuple[str, str]:
    """The text to label and its language: the whole report, else the exam reports under
    their modality's header, else the first translation's report."""
    if study.report.strip():
        return study.report, study.report_lang
    if study.reports:
        return "\n".join(f"{m.upper()}: {t}" for m, t in study.reports.items()), study.report_lang
    for lang, texts in study.translations.items():
        if texts.get("report", "").strip():
            return texts["report"], lang
    return "", study.report_lang


def _text(s: dict) -> str:
    head = (f"wrote {s['out']}: {s['studies']} studies, {s['labels_added']} labels added, "
            f"{s['labels_kept']} kept (uncertain: {s['uncertain']})")
    lines = [head, f"{'finding':<18}{'positive':>9}{'negative':>9}{'uncertain':>10}"]
    lines += [f"{name:<18}{c['positive']:>9}{c['negative']:>9}{c['uncertain']:>10}"
              for name, c in s["counts"].items()]
    return "\n".join(lines)
