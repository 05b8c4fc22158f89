"""`mmcardio eval report`: score a report head's drafts on a labelled split."""
from __future__ import annotations

import argparse

from mmcardio.cli import add_json_flag, emit


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained head: eval report",
                       description="Evaluate trained heads on a labelled split.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = actions.add_parser(
        "report", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="score report drafts: finding F1, numbers, abstention, BLEU-4, ROUGE-L",
        description="Draft every study of a split in each language and score the drafts. Finding "
                    "F1: the report labeller reads each draft, compared with the study's labels "
                    "(micro over (study, finding) pairs the labels state; macro over findings), "
                    "beside a retrieval-only baseline that copies the most similar archived study's "
                    "report. Numeric contradictions: numbers left in final drafts that the "
                    "measurements do not support (the grounding should leave none). Abstention: "
                    "the share of clean studies not drafted, and of the first --ood-studies studies "
                    "with their ECG made a flat line, pure noise or shuffled leads, and their echo "
                    "clips blanked. BLEU-4 (sacrebleu) and ROUGE-L (rouge-score) against the reports.",
        epilog="example:\n  mmcardio eval report --model runs/report/final --manifest c/manifest.csv "
               "--split test --out runs/report/eval.json")
    r.add_argument("--model", required=True, help="report-head folder (a `report train` run's final/)")
    r.add_argument("--manifest", required=True, help="manifest with labels and reports")
    r.add_argument("--split", default="test", help="split to score (default test)")
    r.add_argument("--limit", type=int, help="only the first N studies of the split")
    r.add_argument("--languages", nargs="+", default=["en", "zh"], choices=("en", "zh"),
                   help="draft languages (default: en zh)")
    r.add_argument("--ood-studies", type=int, default=20,
                   help="studies corrupted for the abstention test (default 20)")
    r.add_argument("--out", help="also write the full result (with example drafts) to this JSON file")
    add_json_flag(r)
    r.set_defaults(func=run_report_eval)


def run_report_eval(args) -> int:
    from mmcardio.errors import MMCardioError
    from mmcardio.eval.drafts import evaluate_drafts
    from mmcardio.io import write_json
    from mmcardio.report.draft import ReportDrafter
    from mmcardio.study import read_manifest

    studies = [s for s in read_manifest(args.manifest) if s.split == args.split and s.labels][: args.limit]
    if not studies:
        raise MMCardioError(f"no labelled study of split {args.split!r}", args.manifest, "split")
    result = evaluate_drafts(ReportDrafter(args.model), studies, args.languages, args.ood_studies,
                             progress=not args.json)
    if args.out:
        write_json(args.out, result)
    summary = {k: v for k, v in result.items() if k != "examples"}
    emit(summary, args.json, _text(result))
    return 0


def _text(result: dict) -> str:
    lines = [f"{result['studies']} studies in {result['seconds']} s"]
    def num(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    for lang, r in result["by_language"].items():
        lines.append(f"{lang}: finding F1 {num(r['finding_f1']['micro'])} (baseline "
                     f"{num(r['baseline_finding_f1']['micro'])}), BLEU-4 {num(r['bleu4'])}, ROUGE-L "
                     f"{num(r['rougeL'])}, {r['abstained']}/{r['drafts']} abstained, "
                     f"{r['corrections']} grounding changes")
    lines.append(f"numeric contradictions: {result['numeric_contradictions']}")
    lines.append(f"abstention: clean {result['abstain_clean']:.3f}, unusable inputs {result['abstain_ood']:.3f} "
                 + ", ".join(f"{k} {v['abstained']}/{v['inputs']}" for k, v in result["ood"].items()))
    return "\n".join(lines)
