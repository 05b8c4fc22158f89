"""Zero-shot and retrieval of the ECG tower given a subset of the leads (PTB-XL-style lead-subset
benchmarks: lead I as a watch records it, lead II as a Holter, the limb leads, all twelve).

    python scripts/lead_subsets.py --model RUN/final --manifest M --out DIR [--subsets I II I,II all]

Each subset is one `mmcardio zeroshot --ecg-leads` run in DIR/leads-<subset>/ (its store kept
for re-runs); DIR/lead_subsets.json gets, per subset, the ECG findings' English zero-shot AUROC,
their macro mean and the finding-query precision@10 of the ECG embeddings.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmcardio.commands.zeroshot import lead_list
from mmcardio.errors import MMCardioError
from mmcardio.eval.zeroshot import evaluate_zeroshot
from mmcardio.io import write_json


def subset_figures(results: dict) -> dict:
    """The ECG rows of one evaluation: AUROC per finding (EN), macro AUROC, P@10 (EN)."""
    auroc = {r["finding"]: round(r["auroc"]["value"], 4) for r in results["classification"]
             if r["lang"] == "en" and r["modality"] == "ecg"}
    p10 = [r["precision_at_10"] for r in results["finding_queries"] if r["lang"] == "en" and r["modality"] == "ecg"]
    return {"auroc": auroc, "macro_auroc": round(results["summary"]["zeroshot"]["macro_auroc"]["ecg"], 4),
            "precision_at_10": round(sum(p10) / len(p10), 4) if p10 else None,
            "n_studies": results["n_studies"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="CardioCLIP folder, e.g. RUN/final")
    parser.add_argument("--manifest", required=True, help="study manifest with ECG labels")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--subsets", nargs="+", default=["I", "II", "I,II", "all"],
                        help="lead subsets, comma-separated leads each, or 'all' (default: I II I,II all)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    table = {}
    try:
        for subset in args.subsets:
            leads = None if subset == "all" else lead_list(subset)
            results = evaluate_zeroshot(args.model, args.manifest, out / f"leads-{subset.replace(',', '+')}",
                                        split=args.split, n_bootstrap=args.bootstrap, ecg_leads=leads,
                                        progress=False)
            table[subset] = subset_figures(results)
            print(f"{subset:>8}: macro AUROC {table[subset]['macro_auroc']:.3f}, "
                  f"P@10 {table[subset]['precision_at_10']}", flush=True)
    except (MMCardioError, argparse.ArgumentTypeError) as err:
        print(f"lead_subsets: error: {err}", file=sys.stderr)
        return 2
    write_json(out / "lead_subsets.json", table)
    print(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
