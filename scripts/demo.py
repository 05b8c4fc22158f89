"""The end-to-end demo (`make demo`): the commands a user runs, on the built-in phantom cohort.

synthesize -> validate -> read one file of each modality -> prepare the cache ->
ECG MAE pretraining and CLIP alignment with `accelerate launch` on 2 processes -> embed ->
index -> zero-shot evaluation on the held-out split -> retrieval queries in English and Chinese
-> a tiny SAM trained on echo, LoRA adapters for CMR and CT -> the test split segmented and
measured with no user -> a report head (trained on one core beside the segmenters) drafting
the test split in English and Chinese, grounded and scored.
Figures go to OUT/summary.json; the Markdown evaluation report path is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
QUERIES = [  # (English, Chinese twin, the embeddings searched) report-style queries
    ("atrial fibrillation", "心房颤动", "ecg"),
    ("left bundle branch block", "左束支传导阻滞", "ecg"),
    ("reduced left ventricular ejection fraction", "左室射血分数降低", "echo"),
    ("severe coronary artery calcification", "重度冠状动脉钙化", "ct"),
]


#: The environment of steps that share the 2 cores with a job in the background: one thread each.
ONE_CORE = {**os.environ, "OMP_NUM_THREADS": "1"}


def step(title: str, cmd: list[str], capture_json: bool = True, env: dict | None = None) -> dict | None:
    """Run one user command, show it, and return its --json output."""
    print(f"\n== {title}\n$ {' '.join(str(c) for c in cmd)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([str(c) for c in cmd], check=False, cwd=ROOT, text=True, env=env,
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
    """The manifest's first file of each modality: the first through `mmcardio read` (as a user
    types it), the others through the same reader in this process (a CLI process costs ~4 s to
    start)."""
    from mmcardio import read, read_manifest

    files = {}
    for study in read_manifest(cohort / "manifest.csv"):
        for column, path in study.files():
            if not column.startswith("masks."):
                files.setdefault(column, path)
    (first, path), *rest = sorted(files.items())
    summaries = {first: step(f"read one {first} file", mmcardio("read", path))}
    for modality, path in rest:
        summaries[modality] = json.loads(json.dumps(read(path).summary(), default=str))
        print(f"   read {path.relative_to(cohort)}: {summaries[modality]['modality']}", flush=True)
    return summaries


def retrieval_table(index: Path, model: Path) -> list[dict]:
    """The example queries through `mmcardio retrieve` once (as a user types it), then all of
    them through the same Retriever in this process (one model load instead of eight)."""
    en, _, modality = QUERIES[0]
    step(f"retrieve: {en}", mmcardio("retrieve", "--index", index, "--model", model, en, "--k", 3,
                                     "--modality", modality))
    from mmcardio.retrieval import Retriever

    retriever = Retriever(index, model)
    rows = []
    for en, zh, modality in QUERIES:
        for query in (en, zh):
            for hit in retriever.search_text(query, k=3, modality=modality):
                rows.append({"query": query, "modality": modality,
                             **{k: v for k, v in hit.as_dict().items() if k in ("rank", "study_id", "score", "summary")}})
    return rows


def segmentation(out: Path, manifest: Path, studies: int, env: dict | None = None) -> dict:
    """The segmenter runs (echo, then CMR and CT adapters, each from the last one's folder)
    and `segment eval` on the first `studies` test studies; the figures of the summary."""
    configs, runs = ROOT / "configs" / "segment", {}
    for name, start in (("echo", None), ("cmr", "echo"), ("ct", "cmr")):
        config = configs / ("tiny.yaml" if name == "echo" else f"tiny-{name}-lora.yaml")
        extra = ["--set", f"init_from={out / f'seg-{start}' / 'final'}"] if start else []
        runs[name] = step(f"segmenter: {name} ({config.name})",
                          mmcardio("segment", "train", "--config", config, "--manifest", manifest,
                                   "--out", out / f"seg-{name}", *extra), env=env)
    found = step(f"segment and measure {studies} test studies with no user",
                 mmcardio("segment", "eval", "--segmenter", out / "seg-ct" / "final", "--manifest", manifest,
                          "--split", "test", "--limit", studies, "--out", out / "seg-eval.json"), env=env)
    from mmcardio.adapters.lora import adapter_share

    rank = runs["cmr"]["lora_rank"]
    return {
        "studies": found["studies"], "dice": found["dice"], "hd95": found["hd95_mm"], "ef_mae": found["ef_mae"],
        "lv_mass_rel_err": found["lv_mass_rel_err"] or None,
        "agatston_category_acc": found["agatston_category_acc"],
        "lora_trainable_share": {"tiny": runs["cmr"]["trainable_share"], "vit_b": adapter_share("vit_b", rank)},
        "lora_dice_gain": {m: v["lora_dice_gain"] for m, v in found["adapters"].items()},
        "box_prompted_dice": {m: {"adapted": v["box_prompted_dice"], "base": v["base_box_prompted_dice"]}
                              for m, v in found["adapters"].items()},
        "from_reference_masks": found["from_reference_masks"], "unmeasured": found["unmeasured"],
        "train_seconds": {m: r["seconds"] for m, r in runs.items()},
    }


class Background:
    """A user command run on one core beside the next steps (its progress goes to a log)."""

    def __init__(self, title: str, cmd: list[str], log: Path):
        print(f"\n== {title} (in the background, on one core; progress in {log})\n$ "
              f"{' '.join(str(c) for c in cmd)}", flush=True)
        self.title, self.start = title, time.perf_counter()
        with open(log, "w") as err:  # the child writes to its own copy of the descriptor
            self.process = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, text=True, env=ONE_CORE,
                                            stdout=subprocess.PIPE, stderr=err)

    def result(self) -> dict:
        out, _ = self.process.communicate()
        if self.process.returncode != 0:
            sys.exit(f"demo: step '{self.title}' failed with exit code {self.process.returncode}")
        print(f"\n== {self.title}: done after {time.perf_counter() - self.start:.0f} s", flush=True)
        return json.loads(out)


def train_report_head(out: Path, manifest: Path, model: Path) -> Background:
    """`report train` on the demo's CardioCLIP and store: its small LM gains little from a
    second thread, so it trains on one core while the segmenters train on the other."""
    return Background("report head: train (configs/report/tiny.yaml)",
                      mmcardio("report", "train", "--config", ROOT / "configs" / "report" / "tiny.yaml",
                               "--manifest", manifest, "--out", out / "report-head",
                               "--set", f"clip_model={model}", "--set", f"store={out / 'store'}"),
                      out / "report-head.log")


def report_head(out: Path, manifest: Path, training: Background, studies: int | None) -> dict:
    """The report head's training awaited, then `eval report` on the test split (its first
    `studies`, when given) in both languages; the figures of the summary."""
    run = training.result()
    limit = ["--limit", studies] if studies else []
    scored = step("draft, ground and score the test studies in EN and ZH",
                  mmcardio("eval", "report", "--model", out / "report-head" / "final", "--manifest", manifest,
                           "--split", "test", *limit, "--out", out / "report-eval.json"))
    by_lang = scored["by_language"]
    return {
        "studies": scored["studies"],
        "finding_f1": {lang: r["finding_f1"]["micro"] for lang, r in by_lang.items()},
        "finding_f1_macro": {lang: r["finding_f1"]["macro"] for lang, r in by_lang.items()},
        "baseline_finding_f1": {lang: r["baseline_finding_f1"]["micro"] for lang, r in by_lang.items()},
        "numeric_contradictions": scored["numeric_contradictions"],
        "grounding_changes": {lang: r["corrections"] for lang, r in by_lang.items()},
        "abstain_ood": scored["abstain_ood"], "abstain_ood_by_input": {k: v["share"] for k, v in scored["ood"].items()},
        "abstain_clean": scored["abstain_clean"],
        "bleu4": {lang: r["bleu4"] for lang, r in by_lang.items()},
        "rougeL": {lang: r["rougeL"] for lang, r in by_lang.items()},
        "baseline_bleu4": {lang: r["baseline_text"]["bleu4"] for lang, r in by_lang.items()},
        "train_seconds": run["seconds"], "eval_seconds": scored["seconds"],
    }


def print_table(rows: list[dict]) -> None:
    print(f"\n{'query':<44} {'in':<5} {'#':>2} {'study':<8} {'score':>6}  first sentence of its report")
    for r in rows:
        print(f"{r['query'][:44]:<44} {r['modality']:<5} {r['rank']:>2} {r['study_id']:<8} {r['score']:6.3f}  "
              f"{r['summary'][:70]}")


def start_fresh(out: Path) -> None:
    """Remove an earlier demo run in `out` (never a folder the demo did not make)."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / "cohort" / "manifest.csv").is_file():
        sys.exit(f"demo: {out} exists and holds no earlier demo run; give another --out")
    print(f"demo: removing the earlier run in {out}", flush=True)
    shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo", help="output folder")
    parser.add_argument("--studies", type=int, default=800, help="phantom studies to synthesize")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "pretrain" / "tiny.yaml",
                        help="pretraining config of both stages (MAE, then alignment)")
    parser.add_argument("--seg-studies", type=int, default=20,
                        help="test studies segmented and measured with no user (default 20)")
    parser.add_argument("--report-studies", type=int,
                        help="test studies the report head drafts and is scored on (default: all)")
    parser.add_argument("--align-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the alignment run only (repeatable), e.g. "
                             "--align-set epochs=40 for about twice the demo's ~340 steps")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    out = args.out.resolve()
    start_fresh(out)
    cohort, cache = out / "cohort", out / "cache"
    manifest = cohort / "manifest.csv"

    synth = step("synthesize the phantom cohort",
                 mmcardio("synth", "--out", cohort, "--studies", args.studies, "--seed", args.seed))
    # --no-read: prepare decodes every file next and names any it cannot read; decoding twice
    # would cost the demo a minute.
    check = step("validate the manifest", mmcardio("validate", manifest, "--no-read"))
    read = read_examples(cohort)
    # --no-deidentify: phantoms are nobody, and the demo's later steps name its studies by id; on
    # patients' data, prepare de-identifies and the next commands read CACHE/manifest.csv.
    step("prepare the preprocessed cache", mmcardio("prepare", "--manifest", manifest, "--out", cache,
                                                    "--config", args.config, "--workers", 2,
                                                    "--no-deidentify"))
    mae = launch(args.config, manifest, cache, out / "mae", "stage=mae")
    align = launch(args.config, manifest, cache, out / "align", "stage=align",
                   f"init_from={out / 'mae' / 'final'}", *args.align_set)
    model = out / "align" / "final"
    step("embed every study and report", mmcardio("embed", "--model", model, "--manifest", manifest,
                                                  "--out", out / "store", "--cache", cache))
    step("build the FAISS index", mmcardio("index", "--store", out / "store", "--out", out / "index"))
    training = train_report_head(out, manifest, model)
    zeroshot = step("zero-shot evaluation on the test split",
                    mmcardio("zeroshot", "--model", model, "--manifest", manifest, "--split", "test",
                             "--store", out / "store", "--out", out / "eval"), env=ONE_CORE)
    table = retrieval_table(out / "index", model)
    print_table(table)
    segmented = segmentation(out, manifest, args.seg_studies, env=ONE_CORE)
    drafted = report_head(out, manifest, training, args.report_studies)

    summary = {
        "cohort": {"studies": args.studies, "seed": args.seed, "synth": synth, "validate_ok": check["ok"],
                   "read": read},
        "pretrain": {
            "world_size": align["world_size"], "first_loss": align["first_loss"],
            "final_loss": align["final_loss"], "samples_per_s": align["samples_per_s"],
            "mae_vs_mean_ratio": mae["mae_eval"]["mae_vs_mean_ratio"],
            "lead_reconstruction_corr": mae["mae_eval"]["lead_reconstruction_corr"],
            "mae_world_size": mae["world_size"], "align_steps": align["steps"],
            "align_overrides": args.align_set,
        },
        "zeroshot": zeroshot["summary"]["zeroshot"],
        "retrieval": zeroshot["summary"]["retrieval"],
        "retrieval_examples": table,
        "segmentation": segmented,
        "report": drafted,
        "eval_report": str(out / "eval" / "report.md"),
        "demo_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"\nfigures: {out / 'summary.json'}\nevaluation report: {summary['eval_report']}")
    print(json.dumps({k: summary[k] for k in ("pretrain", "zeroshot", "retrieval", "segmentation", "report",
                                              "demo_seconds")},
                     indent=2))


if __name__ == "__main__":
    main()
