"""`mmcardio zeroshot`: zero-shot evaluation of a CardioCLIP on a manifest."""
from __future__ import annotations

import math

from mmcardio.cli import add_json_flag, emit


def add_arguments(p) -> None:
    """The evaluation's options (shared with scripts/zeroshot_eval.py)."""
    p.add_argument("--model", required=True, help="CardioCLIP folder, e.g. RUN/final")
    p.add_argument("--manifest", required=True, help="study manifest with labels and measurements")
    p.add_argument("--out", required=True, help="output folder for metrics.json, report.md and plots")
    p.add_argument("--split", default="test", help="split to evaluate: train, val, test or all (default test)")
    p.add_argument("--store", help="embedding store to use and extend (default OUT/store)")
    p.add_argument("--prompts", help="YAML or JSON prompt set: findings with positive/negative prompts and "
                                     "value prompts per language (default: the built-in set; its form is "
                                     "metrics.json's \"prompts\")")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="studies per forward pass when embedding")
    p.add_argument("--cache", help="a `mmcardio prepare` folder to read studies from when embedding")
    p.add_argument("--ecg-leads", type=lead_list, metavar="LEADS",
                   help="give the ECG tower only these leads, comma-separated (e.g. I, or I,II): the "
                        "model as a single-lead or limb-lead device would use it; use its own --out or --store")
    p.add_argument("--top-k", type=int, help="regression: mean of the k most similar values instead of "
                                             "the softmax-weighted mean")


def register(sub) -> None:
    p = sub.add_parser(
        "zeroshot", help="zero-shot evaluation: classification, regression, retrieval, report",
        description="Evaluate a CardioCLIP without training a classifier. Findings: each finding's "
                    "English and Chinese positive/negative prompts become two class embeddings; a "
                    "study's probability is their softmax with the model's logit scale; AUROC and "
                    "AUPRC with 95% bootstrap CIs and calibration error per finding and modality, "
                    "a linear-probe baseline (train split), AUROC by sex and age band. LVEF: "
                    "similarity to value prompts (\"LVEF 35%, moderately reduced systolic function\") "
                    "gives an estimate; MAE and Pearson "
                    "r. Retrieval: report text <-> study both directions (R@1/5/10, MRR, median "
                    "rank); finding queries (\"atrial fibrillation\") with P@10 of studies that have "
                    "the finding, in English and Chinese, and the gap between them; each study's "
                    "report against its translation (the manifest's `translations`). --prompts "
                    "replaces the built-in findings and value prompts. Writes metrics.json (with the "
                    "prompt set used), report.md and PNG plots to --out.",
        epilog="example: mmcardio zeroshot --model runs/demo/final --manifest cohort/manifest.csv "
               "--out runs/demo/zeroshot",
    )
    add_arguments(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def evaluate(args, accelerator=None) -> dict:
    from mmcardio.eval.prompts import load_prompts
    from mmcardio.eval.zeroshot import evaluate_zeroshot  # sklearn/matplotlib: load on use

    prompts = load_prompts(args.prompts) if args.prompts else None  # a bad file fails before embedding
    return evaluate_zeroshot(args.model, args.manifest, args.out, split=args.split, store=args.store,
                             prompts=prompts, n_bootstrap=args.bootstrap, seed=args.seed,
                             batch_size=args.batch_size, regression_top_k=args.top_k, cache=args.cache,
                             ecg_leads=args.ecg_leads,
                             progress=not getattr(args, "json", False), accelerator=accelerator)


def lead_list(text: str) -> list[str]:
    """["I", "II"] from "I,II" (standard lead names, as `records.STANDARD_LEADS` spells them)."""
    from argparse import ArgumentTypeError

    from mmcardio.records import STANDARD_LEADS

    leads = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [lead for lead in leads if lead not in STANDARD_LEADS]
    if unknown or not leads:
        raise ArgumentTypeError(f"expected leads among {', '.join(STANDARD_LEADS)}, got {text!r}")
    return leads


def fmt(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def summary_text(results: dict) -> str:
    """Headline numbers for people."""
    z, r = results["summary"]["zeroshot"], results["summary"]["retrieval"]
    macro = ", ".join(f"{k} {fmt(v)}" for k, v in z["macro_auroc"].items())
    lines = [f"{results['n_studies']} studies ({results['split']}) in {results['seconds']:.1f} s",
             f"zero-shot macro AUROC (EN prompts): {macro}",
             (f"mean AUROC EN {fmt(z['mean_auroc']['en'])}, ZH {fmt(z['mean_auroc']['zh'])}; "
              f"ECE {fmt(z['ece'])}; largest subgroup gap {fmt(z['subgroup_auroc_gap'])}"),
             (f"text->study R@10 {fmt(r.get('recall_at_10'))}, MRR {fmt(r.get('mrr'))}, "
              f"finding-query P@10 {fmt(r['precision_at_10'])}, zh-en gap {fmt(r['zh_en_gap'])}")]
    lines += [f"LVEF MAE ({mod}): {fmt(v)} %" for mod, v in z["ef_mae_by_modality"].items()]
    lines.append(f"report: {results['out']}/report.md")
    return "\n".join(lines)


def run(args) -> int:
    from mmcardio.retrieval.store import launched_accelerator  # torch: on use

    results = evaluate(args, launched_accelerator())
    if results:  # empty on non-main processes
        emit(results, args.json, summary_text(results))
    return 0
