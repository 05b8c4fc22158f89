"""`mmcardio bench`: speed and memory benchmarks against the machine's limit and a reference,
as one JSON document."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from mmcardio.cli import add_json_flag, emit
from mmcardio.io import write_json

#: Kept beside `mmcardio.bench.SECTIONS` (which imports torch) so --help stays light.
SECTION_NAMES = "peak,towers,align,reference,scaling,loop,data,readers,index"

DESCRIPTION = """\
Measure speed and memory on this machine, each figure in the same run as what it is compared
with (pairs are timed in turn, so their ratio holds on a shared, noisy machine). The JSON
records the machine, every option, the units and how memory is measured.

sections (--only):
  peak       dense square torch.matmul in fp32 and bf16 (median GFLOP/s, best of --peak-sizes)
             on --threads threads: the limit. Every MFU below divides by a matmul of this size
             timed in turn with its measurement (peak_gflop_per_s), so load hits both alike.
  towers     per model, each modality tower with its projection head and the text tower
             (tokenizing included), on random inputs in the shapes the model's preprocess
             gives: a training step (forward, backward, AdamW) and an inference pass of a
             batch: ms, samples/s, GFLOP/sample (torch.utils.flop_counter, attention
             included), MFU (achieved FLOP/s over the dtype's peak), memory.
  align      per model, the whole alignment step as pretraining computes it (every tower, the
             text tower on phantom reports, CardioCLIPLoss, AdamW), in each of --dtypes (bf16:
             autocast), the dtypes timed in turn: studies/s, GFLOP/study, MFU, memory.
  reference  per model, the ECG tower's training step beside a plain 12-lead patch transformer
             (nn.TransformerEncoder, one token per time patch of all 12 leads, the same
             width/depth/heads/MLP ratio/patch): FLOPs, ECGs/s and memory ratios, ours over the
             reference (target: FLOPs at most 2x).
  scaling    per model, a training step of one study through a tower built for each input size:
             ECG length (--ecg-seconds), echo frames (--echo-frames), CT cube side (--ct-sizes):
             ms, GFLOP, memory.
  loop       the first model's alignment run on a phantom cohort (written to a temporary
             folder, its prepare cache built), set up as `mmcardio pretrain` sets it up: our
             accelerate loop (clipping, scheduler, logging every 10 steps) against a bare
             `loss.backward(); opt.step(); opt.zero_grad()` loop on the same objective,
             optimizer and batches, in alternating rounds: steps/s and overhead (target
             within 5%); a checkpoint's cost spread over checkpoint_every (100) steps.
  data       on that run, the share of step time spent waiting for the next batch, reading the
             prepare cache against decoding the files (1 loader worker): target under 5% with
             the cache; the prepare time per study.
  readers    mmcardio's readers on the ECG and echo pydicom ships and a phantom CT (DICOM
             series, NIfTI): ms per file, MB/s.
  index      FAISS flat, ivf and hnsw as `mmcardio index` builds them, at each of --index-sizes
             (default 10k, 100k, 1M; --quick 10k) in the first model's embedding size, over two
             kinds of unit vectors: "structured" (a Gaussian mixture fitted to real embeddings
             given with --index-source, else a synthetic one with the clusters and decaying
             spectrum of trained embeddings) and "isotropic" (random directions: the worst
             case). Per kind: build s, bytes per vector, p50/p99 ms of single queries,
             queries/s of a batch of 1000, recall@10 against exact search at the narrowest
             nprobe/efSearch reaching 0.95 (the sweep is in the JSON), and our Index.search's
             p50 over raw FAISS's on the same index (target: within 10%). target: whether IVF
             or HNSW answers in under 2 ms at recall@10 0.95 on 1M vectors.

Memory: the peak resident memory of each measurement above the memory before it (the kernel's
peak mark is reset before each; see memory_method in the JSON). Models over 20M parameters
(cardioclip-base) are measured with --large-batch-size and --large-repeats. Speed targets live
here, never in timed unit tests: compare runs of one machine and options by ratios."""


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _numbers(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(s) for s in _names(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") \
                from None
    return parse


#: (flag, type, metavar, help) of the options passed to BenchOptions as given (None: default).
OPTIONS = (
    ("--model", _names, "NAMES", ("comma-separated built-in model configs (random weights) or "
     "CardioCLIP folders such as RUN/final (default cardioclip-tiny,cardioclip-base; --quick: "
     "cardioclip-tiny)")),
    ("--text", str, "tiny|config|FOLDER", ("text tower of built-in configs: tiny (default: "
     "text-tiny, builds offline), config (the config's own; cardioclip-base's is downloaded), or "
     "a folder holding a transformers model; a model folder uses its own")),
    ("--only", _names, "SECTIONS", f"comma-separated sections to run (default all: {SECTION_NAMES})"),
    ("--batch-size", int, "N", ("studies per batch of models up to 20M parameters, and of the loop "
     "and data sections (default 8)")),
    ("--repeats", int, "N", ("timed calls per measurement of models up to 20M parameters, the "
     "peak, readers and index; their median is reported (default 5; --quick 3)")),
    ("--large-batch-size", int, "N", "studies per batch of larger models (default 2)"),
    ("--large-repeats", int, "N", ("timed calls per measurement of larger models (default 1: a base "
     "step takes seconds to a minute on a CPU)")),
    ("--warmup", int, "N", ("untimed calls before each measurement; the first counts FLOPs and "
     "memory (default 1)")),
    ("--threads", int, "N", "torch and FAISS threads (default 1: the machine may be shared)"),
    ("--dtypes", _names, "LIST", "training dtypes of the align section (default fp32,bf16)"),
    ("--peak-sizes", _numbers(int), "LIST", "matmul sizes of the peak (default 1024,2048; --quick 1024)"),
    ("--ecg-seconds", _numbers(float), "LIST", "ECG lengths of the scaling section (default 2.5,5,10,20)"),
    ("--echo-frames", _numbers(int), "LIST", "echo clip lengths of the scaling section (default 8,16,32,64)"),
    ("--ct-sizes", _numbers(int), "LIST", "CT cube sides of the scaling section (default 32,64,96,128)"),
    ("--cohort-studies", int, "N", "phantom studies of the loop and data sections (default 24; --quick 8)"),
    ("--loop-steps", int, "N", "steps per timed round of the loop section (default 10)"),
    ("--loop-rounds", int, "N", "timed rounds of each loop (default 5; --quick 2)"),
    ("--data-steps", int, "N", "steps timed per data source (default 8; --quick 3)"),
    ("--index-sizes", _numbers(int), "LIST", ("vectors in each FAISS index (default 10000,100000,1000000; "
     "--quick 10000)")),
    ("--index-source", str, "STORE|FILE.npy", ("embeddings the structured vectors are fitted to: an "
     "`mmcardio embed` store folder (its study vectors) or an [n, dim] .npy (default: synthetic)")),
)
#: CLI flags whose BenchOptions field has another name.
FIELDS = {"model": "models", "only": "sections"}


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="benchmark speed, utilization and memory against the machine's peak and a "
                      "plain reference, as JSON",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples: mmcardio bench --quick --json --out runs/bench-quick.json; "
               "mmcardio bench --out runs/bench.json (tiny and base, under 20 minutes on 2 cores); "
               "mmcardio bench --model cardioclip-base --only towers,reference",
    )
    p.add_argument("--quick", action="store_true",
                   help="the tiny model, fewer repeats, a smaller cohort and index: every section "
                        "in under 3 minutes on 2 cores")
    for flag, kind, metavar, text in OPTIONS:
        p.add_argument(flag, type=kind, metavar=metavar, help=text)
    p.add_argument("--out", metavar="FILE.json",
                   help="also write the JSON document to this file (atomically)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mmcardio.bench import BenchOptions, run_benchmarks  # torch and FAISS: on use

    given = {}
    for flag, *_ in OPTIONS:
        name = flag[2:].replace("-", "_")
        if getattr(args, name) is not None:
            given[FIELDS.get(name, name)] = getattr(args, name)
    options = BenchOptions.quick_run(**given) if args.quick else BenchOptions(**given)
    document = run_benchmarks(options, progress=not args.json)
    if args.out:
        write_json(args.out, document)
    emit(document, args.json, table(document) + (f"\nwritten to {args.out}" if args.out else ""))
    return 0


# ------------------------------------------------------------------------------ the table

def table(document: dict) -> str:
    """The document as aligned rows for people, one block per section."""
    options, machine, sections = document["options"], document["machine"], document["sections"]
    lines = [(f"mmcardio bench  {document['date']}  {', '.join(options['models'])}  "
              f"{machine['torch_threads']} thread(s) of {machine['usable_cpus']} CPUs  "
              f"{machine['processor']}")]
    for name, model in document["models"].items():
        plan = model["plan"]
        lines.append(f"  {name}: {model['parameters'] / 1e6:.1f}M parameters, batch {plan['batch_size']}, "
                     f"median of {plan['repeats']}, text tower {model['text_tower']}")
    blocks = {"peak": _peak, "towers": _towers, "align": _align, "reference": _reference,
              "scaling": _scaling, "loop": _loop, "data": _data, "readers": _readers, "index": _index}
    for section, result in sections.items():
        lines += ["", *blocks[section](result)]
    over = _mfu_over_one(sections)
    if over:
        lines += ["", (f"warning: MFU above 100% in {', '.join(over)}: the matmul timed beside it ran "
                      "slower than the workload (other load on the machine, or too few --repeats); "
                      "rerun on an idle machine")]
    return "\n".join(lines)


def _mfu_over_one(node: object, path: str = "") -> list[str]:
    """Where in the document an MFU exceeds 1 (impossible unless the peak was measured low)."""
    if isinstance(node, dict):
        if node.get("mfu", 0) > 1:
            return [path.strip("/")]
        return [found for key, value in node.items() for found in _mfu_over_one(value, f"{path}/{key}")]
    return []


def _peak(peak: dict) -> list[str]:
    rates = ", ".join(f"{dtype} {r['gflop_per_s']:.0f}" for dtype, r in peak.items() if dtype != "threads")
    return [f"peak matmul GFLOP/s ({peak['threads']} thread(s)): {rates}"]


FIGURE_HEADER = ("ms", "samples/s", "GFLOP/smp", "MFU", "mem MiB")


def _figures(r: dict) -> tuple:
    return r["ms"], r["samples_per_s"], r["gflop_per_sample"], f"{r['mfu']:.1%}", r["memory_mib"]


def _towers(towers: dict) -> list[str]:
    lines = []
    for model, rows in towers.items():
        lines.append(_row(f"towers {model}", "parameters", "pass", *FIGURE_HEADER))
        for name, r in rows.items():
            for i, part in enumerate(("train", "inference")):
                lines.append(_row(name if i == 0 else "", r["parameters"] if i == 0 else "", part,
                                  *_figures(r[part])))
    return lines


def _align(align: dict) -> list[str]:
    lines = []
    for model, r in align.items():
        lines.append(_row(f"align {model}", "dtype", *FIGURE_HEADER))
        for dtype in ("fp32", "bf16"):
            if dtype in r:
                lines.append(_row("", dtype, *_figures(r[dtype])))
        if "bf16_speedup" in r:
            lines.append(f"  bf16 over fp32: {r['bf16_speedup']:.2f}x faster")
    return lines


def _reference(reference: dict) -> list[str]:
    lines = []
    for model, r in reference.items():
        lines.append(_row(f"ECG vs plain {model}", "tokens", *FIGURE_HEADER))
        lines.append(_row("ours", "", *_figures(r["ours"])))
        lines.append(_row("reference", r["reference_tokens"], *_figures(r["reference"])))
        lines.append(f"  ours/reference: FLOPs {r['flops_ratio']:.2f}x (target <= "
                     f"{r['target_flops_ratio']:g}x), ECGs/s {r['samples_per_s_ratio']:.2f}x, "
                     f"memory {r['memory_ratio']:.2f}x")
    return lines


def _scaling(scaling: dict) -> list[str]:
    lines = []
    for model, axes in scaling.items():
        lines.append(_row(f"scaling {model}", "input", "ms", "GFLOP", "MFU", "mem MiB"))
        for axis, points in axes.items():
            for p in points:
                value = p[{"ecg_seconds": "seconds", "echo_frames": "frames", "ct_size": "size"}[axis]]
                lines.append(_row(f"{axis} {value:g}", "x".join(map(str, p["input"])), p["ms"],
                                  p["gflop_per_sample"], f"{p['mfu']:.1%}", p["memory_mib"]))
    return lines


def _loop(loop: dict) -> list[str]:
    return [_row(f"loop {loop['model']}", "steps/s", "ms/step"),
            _row("ours (accelerate)", loop["ours"]["steps_per_s"], loop["ours"]["ms"]),
            _row("bare", loop["bare"]["steps_per_s"], loop["bare"]["ms"]),
            (f"  overhead {loop['overhead']:+.1%} (target within {loop['target_overhead']:.0%}); a "
            f"checkpoint {loop['checkpoint_s']:.2f} s = {loop['checkpoint_share']:.1%} of "
            f"{loop['checkpoint_every']} steps")]


def _data(data: dict) -> list[str]:
    return [_row(f"data {data['model']}", "wait share", "wait ms", "ms/step"),
            *(_row(f"from {source}", f"{data[source]['wait_share']:.1%}", data[source]["wait_ms_per_step"],
                   data[source]["ms"]) for source in ("cache", "files")),
            (f"  target under {data['target_wait_share']:.0%} with the cache; {data['num_workers']} "
            f"worker(s); prepare {data['prepare_s_per_study']:.2f} s per study")]


def _readers(readers: dict) -> list[str]:
    lines = [_row("file", "files", "MB", "ms/file", "MB/s", "mem MiB", "shape")]
    for name, r in readers["files"].items():
        lines.append(_row(name, r["files"], r["megabytes"], r["ms_per_file"], r["megabytes_per_s"],
                          r["memory_mib"], "x".join(map(str, r["shape"]))))
    return lines


def _index(index: dict) -> list[str]:
    k = index["k"]
    lines = [_row(f"index {index['dim']}-d", "build s", "B/vector", "setting", "p50 ms", "p99 ms",
                  "batch q/s", f"recall@{k}", "API/FAISS", "mem MiB")]
    for distribution, by_size in index["distributions"].items():
        for n, kinds in by_size.items():
            for kind, r in kinds.items():
                setting = ",".join(f"{name} {value}" for name, value in r["search_params"].items()) or "exact"
                lines.append(_row(f"{distribution[:10]} {int(n):,} {kind}", r["build_s"], r["bytes_per_vector"],
                                  setting, r["p50_ms"], r["p99_ms"], r["queries_per_s"], r[f"recall_at_{k}"],
                                  r["api_over_faiss"], r["memory_mib"]))
    target = index["target"]
    for distribution in index["distributions"]:
        t = target[distribution]
        lines.append(f"  target {distribution}: {t['kind']} on {t['vectors']:,} vectors, p50 {t['p50_ms']:.3g} ms "
                     f"at recall@{k} {t[f'recall_at_{k}']:.3f}: {'met' if t['met'] else 'not met'} (p50 under "
                     f"{target['p50_ms']} ms at {target[f'recall_at_{k}']} on {target['vectors']:,}); API over "
                     f"FAISS up to {t['api_over_faiss']:.2f}x: {'met' if t['api_met'] else 'not met'}")
    return lines


def _row(first: str, *cells: object) -> str:
    return f"{first:<22}" + "".join(f" {_cell(c):>11}" for c in cells)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
