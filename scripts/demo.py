"""The end-to-end demo (`make demo`): the commands a user runs, on the built-in phantom cohort.

synthesize -> validate -> read one file of each modality -> prepare the cache ->
ECG MAE pretraining and CLIP alignment with `accelerate launch` on 2 processes -> embed ->
index -> zero-shot evaluation on the held-out split -> retrieval queries in English and Chinese.
Figures go to OUT/summary.json; the Markdown evaluation report path is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
QUERIES = [  # (English, Chinese twin) report-style queries
    ("atrial fibrillation", "心房颤动"),
    ("left bundle branch block with reduced ejection fraction", "左束支传导阻滞，射血分数降低"),
    ("severe coronary artery calcification", "严重冠状动脉钙化"),
]


def step(title: str, cmd: list[str], capture_json: bool = True) -> dict | None:
    """Run one user command, show it, and return its --json output."""
    print(f"\n== {title}\n$ {' '.join(str(c) for c in cmd)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE if capture_json else None)
    if result.returncode != 0:
        sys.exit(f"demo: step '{title}' failed with exit code {result.returncode}")
    print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    return json.loads(result.stdout) if capture_json else None


def mmcardio(*args: object) -> list[str]:
    return [str(BIN / "mmcardio"), *map(str, args), "--json"]


def launch(config: Path, manifest: Path, cache: Path, out: Path, *overrides: str) -> dict:
    """`accelerate launch` on 2 CPU processes (gloo); returns the run summary."""
    cmd = [BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           ROOT / "scripts" / "pretrain.py", "--config", config, "--manifest", manifest,
           "--cache", cache, "--out", out]
    for item in overrides:
        cmd += ["--set", item]
    step(f"pretrain ({out.name}) with accelerate launch on 2 processes", cmd, capture_json=False)
    return json.loads((out / "run.json").read_text())


def read_examples(cohort: Path) -> dict:
    """One file of each modality through `mmcardio read`."""
    rows = [json.loads(line) for line in (cohort / "truth.jsonl").read_text().splitlines()]
    files = {}
    for row in rows:
        for modality, info in row["files"].items():
            files.setdefault(modality.split(":")[0], cohort / info["path"])
    return {m: step(f"read one {m} file", mmcardio("read", p)) for m, p in sorted(files.items())}


def retrieval_table(index: Path, model: Path) -> list[dict]:
    rows = []
    for en, zh in QUERIES:
        for query in (en, zh):
            hits = step(f"retrieve: {query}", mmcardio("retrieve", "--index", index, "--model", model,
                                                       query, "--k", 3, "--modality", "study"))
            for hit in hits["hits"]:
                rows.append({"query": query, **{k: hit[k] for k in ("rank", "study_id", "score", "summary")}})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'query':<58} {'#':>2} {'study':<10} {'score':>6}  first sentence of its report")
    for r in rows:
        print(f"{r['query'][:58]:<58} {r['rank']:>2} {r['study_id']:<10} {r['score']:6.3f}  {r['summary'][:70]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo", help="output folder")
    parser.add_argument("--studies", type=int, default=400, help="phantom studies to synthesize")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "pretrain" / "tiny.yaml")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    out = args.out.resolve()
    cohort, cache = out / "cohort", out / "cache"
    manifest = cohort / "manifest.csv"

    synth = step("synthesize the phantom cohort",
                 mmcardio("synth", "--out", cohort, "--studies", args.studies, "--seed", args.seed))
    check = step("validate the manifest", mmcardio("validate", manifest))
    read = read_examples(cohort)
    step("prepare the preprocessed cache", mmcardio("prepare", "--manifest", manifest, "--out", cache,
                                                    "--config", args.config))
    mae = launch(args.config, manifest, cache, out / "mae", "stage=mae")
    align = launch(args.config, manifest, cache, out / "align", "stage=align",
                   f"init_from={out / 'mae' / 'final'}")
    model = out / "align" / "final"
    step("embed every study and report", mmcardio("embed", "--model", model, "--manifest", manifest,
                                                  "--out", out / "store"))
    step("build the FAISS index", mmcardio("index", "--store", out / "store", "--out", out / "index"))
    zeroshot = step("zero-shot evaluation on the test split",
                    mmcardio("zeroshot", "--model", model, "--manifest", manifest, "--split", "test",
                             "--store", out / "store", "--out", out / "eval"))
    table = retrieval_table(out / "index", model)
    print_table(table)

    summary = {
        "cohort": {"studies": args.studies, "seed": args.seed, "synth": synth, "validate_ok": check["ok"],
                   "read": read},
        "pretrain": {
            "world_size": align["world_size"], "first_loss": align["first_loss"],
            "final_loss": align["final_loss"], "samples_per_s": align["samples_per_s"],
            "mae_vs_mean_ratio": mae["mae_eval"]["mae_vs_mean_ratio"],
            "lead_reconstruction_corr": mae["mae_eval"]["lead_reconstruction_corr"],
            "mae_world_size": mae["world_size"],
        },
        "zeroshot": zeroshot["summary"]["zeroshot"],
        "retrieval": zeroshot["summary"]["retrieval"],
        "retrieval_examples": table,
        "report": str(out / "eval" / "report.md"),
        "demo_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"\nfigures: {out / 'summary.json'}\nevaluation report: {summary['report']}")
    print(json.dumps({k: summary[k] for k in ("pretrain", "zeroshot", "retrieval", "demo_seconds")}, indent=2))


if __name__ == "__main__":
    main()
