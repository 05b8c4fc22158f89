"""`mmcardio bench`: speed and memory benchmarks, as one JSON document."""
from __future__ import annotations

from mmcardio.cli import add_json_flag, emit
from mmcardio.io import write_json

#: Kept beside `mmcardio.bench.SECTIONS` (which imports torch) so --help stays light.
SECTION_NAMES = "towers,text,readers,index"


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="benchmark speed and memory (towers, text, readers, FAISS) as JSON",
        description="Measure speed and memory on this machine. towers: each modality tower of "
                    "the model on random inputs of the shapes its config's preprocess gives "
                    "(ECG signal + lead mask, echo views, CMR cine, CT volume): median ms of a "
                    "training step (forward + backward) and of inference per batch, studies/s, "
                    "parameters. text: the text tower on phantom English and Chinese reports "
                    "(tokenizing included): ms, texts/s, tokens per text. readers: mmcardio's "
                    "readers on the 12-lead ECG and the echo cine that pydicom ships and on a "
                    "phantom CT written as a DICOM series and as NIfTI: ms per file, MB/s. "
                    "index: FAISS flat, ivf and hnsw (built as `mmcardio index` builds them) over "
                    "random unit vectors: build seconds, queries/s (100 queries, k=10) and "
                    "recall@10 against the exact flat hits (random vectors are the hardest case; "
                    "embeddings cluster). Every section reports the process's peak resident "
                    "memory after it ran; the document also records the machine, the library "
                    "versions, the options and the date. Speed and memory targets live here and "
                    "never in timed unit tests, because test machines are shared and noisy: "
                    "compare two runs of the same machine and options by ratios of the same "
                    "measurement, never against absolute numbers.",
        epilog="example: mmcardio bench --only towers,text --batch-size 8 --repeats 5 "
               "--out runs/bench/cardioclip-tiny.json",
    )
    p.add_argument("--model", default="cardioclip-tiny", metavar="NAME|FOLDER",
                   help="a built-in model config (random weights; default cardioclip-tiny) or a "
                        "CardioCLIP folder such as RUN/final")
    p.add_argument("--only", default=SECTION_NAMES, metavar="SECTIONS",
                   help=f"comma-separated sections to run (default all: {SECTION_NAMES})")
    p.add_argument("--batch-size", type=int, metavar="N", default=8,
                   help="studies (and report texts) per batch (default 8)")
    p.add_argument("--repeats", type=int, metavar="N", default=5,
                   help="timed runs per measurement; their median is reported (default 5)")
    p.add_argument("--warmup", type=int, metavar="N", default=1,
                   help="untimed runs before each measurement (default 1)")
    p.add_argument("--threads", type=int, metavar="N", default=1,
                   help="torch and FAISS threads (default 1: the machine may be shared)")
    p.add_argument("--n-vectors", type=int, metavar="N", default=20000,
                   help="vectors in each FAISS index (default 20000)")
    p.add_argument("--out", metavar="FILE.json",
                   help="also write the JSON document to this file (atomically)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mmcardio.bench import BenchOptions, run_benchmarks  # torch and FAISS: on use

    options = BenchOptions(
        model=args.model, sections=tuple(s.strip() for s in args.only.split(",") if s.strip()),
        batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup,
        threads=args.threads, n_vectors=args.n_vectors,
    )
    document = run_benchmarks(options, progress=not args.json)
    if args.out:
        write_json(args.out, document)
    emit(document, args.json, table(document) + (f"\nwritten to {args.out}" if args.out else ""))
    return 0


def table(document: dict) -> str:
    """The document as aligned rows for people, one block per section."""
    options, machine, sections = document["options"], document["machine"], document["sections"]
    lines = [(f"mmcardio bench  {document['date']}  {options['model']}  batch "
              f"{options['batch_size']}  median of {options['repeats']}  "
              f"{machine['torch_threads']} thread(s) of {machine['usable_cpus']} CPUs")]
    if "towers" in sections or "text" in sections:
        lines.append(_row("tower", "parameters", "train ms", "infer ms", "train/s", "infer/s",
                          "train/infer"))
        rows = dict(sections.get("towers", {}).get("modalities", {}))
        if "text" in sections:
            rows["text"] = sections["text"]
        for name, r in rows.items():
            unit = "texts" if name == "text" else "studies"
            lines.append(_row(name, r["parameters"], r["train_ms"], r["inference_ms"],
                              r[f"train_{unit}_per_s"], r[f"inference_{unit}_per_s"],
                              r["train_over_inference"]))
        if "text" in sections:
            lines.append(f"  text: {sections['text']['mean_tokens_per_text']:.0f} tokens per "
                         f"text, /s counts texts; other towers count studies")
    if "readers" in sections:
        lines.append(_row("file", "files", "MB", "ms/file", "MB/s", "shape"))
        for name, r in sections["readers"]["files"].items():
            lines.append(_row(name, r["files"], r["megabytes"], r["ms_per_file"],
                              r["megabytes_per_s"], "x".join(map(str, r["shape"]))))
    if "index" in sections:
        index = sections["index"]
        lines.append(_row(f"index {index['vectors']}x{index['dim']}", "build s", "queries/s",
                          f"recall@{index['k']}"))
        for kind, r in index["kinds"].items():
            lines.append(_row(kind, r["build_s"], r["queries_per_s"], r[f"recall_at_{index['k']}"]))
    peaks = ", ".join(f"{name} {s['peak_rss_mib']:.0f}" for name, s in sections.items())
    lines.append(f"peak RSS MiB: start {document['baseline_rss_mib']:.0f}, after {peaks}")
    return "\n".join(lines)


def _row(first: str, *cells: object) -> str:
    return f"{first:<18}" + "".join(f"{_cell(c):>12}" for c in cells)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
