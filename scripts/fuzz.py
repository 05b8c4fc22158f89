"""The long fuzz run: mutated DICOM, WFDB, ECG XML, NumPy/CSV ECGs, NIfTI, MP4/AVI files and
manifests fed to every reader and to manifest validation, in worker processes that are killed
when a read hangs.

    OMP_NUM_THREADS=1 python scripts/fuzz.py --inputs 10000 --seed 0 --workers 2 --json \\
        --save-failures fuzz-failures

What it does, for input i of a run with --seed s: takes seed file i mod (number of formats)
(files the package's writers produce and files pydicom ships), mutates it with a generator
seeded by (s, i) (`mmcardio.fuzz.mutate`: byte flips, truncation, chunk insertion/deletion,
and format-aware changes to DICOM elements, NIfTI header fields, MP4/AVI integers, XML
elements, entity declarations, WFDB header tokens, manifest cells), writes it to a private
folder and reads it with each reader that takes that format. Each read ends in one of:

  ok               a typed record (ECG, Video, Volume, manifest rows) that keeps its invariants
  mmcardio_error   an MMCardioError with a message naming the file (the expected refusal)
  escaped          any other exception, a record that breaks its invariants, or a crashed worker
  timeout          no answer within --timeout seconds: the worker is killed and replaced
  memory           more than --memory-limit-mb traced allocation (tracemalloc peak), or MemoryError

The run exits 1 when any read ended other than ok or mmcardio_error. With --save-failures DIR,
each failing input is written to DIR/<input>-<format>/ with failure.json (reader, outcome,
traceback, mutations); `python scripts/fuzz.py --replay DIR/<input>-<format>` reads it again
in this process and prints the tracebacks. The same mutation code runs, bounded and shrinking,
in tests/test_fuzz_inputs.py.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

GOOD = ("ok", "mmcardio_error")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from mmcardio.fuzz import FORMATS, OUTCOMES

    parser = argparse.ArgumentParser(
        prog="scripts/fuzz.py", description=__doc__,
        epilog=f"formats: {', '.join(FORMATS)}. outcomes: {', '.join(OUTCOMES)}. Exit 1 when any read ends "
               "other than ok or mmcardio_error, 2 on bad arguments.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1000, help="mutated inputs to generate (default 1000); "
                        "the formats take turns, so each gets inputs / formats")
    parser.add_argument("--seed", type=int, default=0, help="run seed: input i of seed s is the same input "
                        "on every machine (default 0); change it to explore new inputs")
    parser.add_argument("--workers", type=int, default=2, help="reader processes (default 2)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one read may take before its "
                        "worker is killed and the read counted as a hang (default 60: generous on a loaded "
                        "machine; healthy reads take under a second)")
    parser.add_argument("--memory-limit-mb", type=float, default=512.0, help="traced allocation one read may "
                        "peak at (default 512 MB; the seeds are under 300 kB, so a read near this believed "
                        "a header's claim); the worker's address space is also capped to stop C-level blow-ups")
    parser.add_argument("--formats", default="", help="comma-separated formats to fuzz (default: all)")
    parser.add_argument("--save-failures", type=Path, help="folder to write each failing input to, with "
                        "failure.json, for --replay")
    parser.add_argument("--replay", type=Path, help="a folder written by --save-failures: read it again here "
                        "and print each reader's outcome and traceback")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.formats.split(","))) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}; expected some of {', '.join(FORMATS)}")
    if args.inputs < 1 or args.workers < 1 or args.timeout <= 0 or args.memory_limit_mb <= 0:
        parser.error("--inputs, --workers, --timeout and --memory-limit-mb must be positive")
    return args


# --- worker ---------------------------------------------------------------------------------------

def _worker(conn: Connection, seeds: dict, formats: list[str], run_seed: int, memory_limit: int,
            scratch: str) -> None:
    """Read inputs until told to stop: for each index, ("begin", reader) before each read and
    ("end", outcome) after it, then ("done", mutations)."""
    import logging
    import tracemalloc
    import warnings

    from mmcardio.fuzz import input_rng, materialize, mutate, run_reader

    logging.disable(logging.CRITICAL)  # readers log what they skip; thousands of inputs would flood
    warnings.simplefilter("ignore")
    _cap_address_space(memory_limit)
    tracemalloc.start()
    while (index := conn.recv()) is not None:
        seed = seeds[formats[index % len(formats)]]
        try:
            files, applied = mutate(seed, input_rng(run_seed, index))
        except Exception:  # noqa: BLE001 - a bug of the fuzzer itself: reported apart from the readers'
            import traceback

            conn.send(("mutation_error", traceback.format_exc()))
            continue
        folder = Path(tempfile.mkdtemp(prefix=f"{index}-", dir=scratch))
        materialize(files, folder)
        for reader in seed.readers:
            conn.send(("begin", reader))
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            outcome = run_reader(reader, folder / seed.entry, memory_limit)
            growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
            conn.send(("end", {**outcome.to_dict(), "rss_growth_bytes": growth}))
        shutil.rmtree(folder, ignore_errors=True)
        conn.send(("done", applied))


def _cap_address_space(memory_limit: int) -> None:
    """Cap the worker's address space at what it maps now plus room for four over-limit reads,
    so a C library that believes a header fails its allocation instead of taking the machine."""
    with open("/proc/self/statm") as fh:
        mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = mapped + 4 * memory_limit + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))


# --- parent ---------------------------------------------------------------------------------------

@dataclass
class Slot:
    """One worker process and what it is reading."""

    process: multiprocessing.Process
    conn: Connection
    index: int | None = None
    reader: str | None = None
    deadline: float = float("inf")
    pending: list[str] = field(default_factory=list)  # readers not yet run for this input


@dataclass
class Tally:
    """What the run saw."""

    formats: dict = field(default_factory=lambda: defaultdict(Counter))
    readers: dict = field(default_factory=lambda: defaultdict(Counter))
    reader_seconds: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    inputs_per_format: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)
    signatures: Counter = field(default_factory=Counter)
    slowest: dict = field(default_factory=lambda: {"seconds": 0.0})
    largest: dict = field(default_factory=lambda: {"peak_bytes": 0})
    largest_rss_growth: dict = field(default_factory=lambda: {"rss_growth_bytes": 0})
    timeout: float = 0.0
    mutation_errors: list[dict] = field(default_factory=list)

    def add(self, index: int, fmt: str, outcome: dict) -> None:
        kind, reader = outcome["kind"], outcome["reader"]
        self.formats[fmt][kind] += 1
        self.readers[reader][kind] += 1
        self.reader_seconds[reader] += outcome.get("seconds", 0.0)
        self.outcomes[kind] += 1
        where = {"input": index, "format": fmt, "reader": reader}
        if outcome.get("seconds", 0.0) > self.slowest["seconds"]:
            self.slowest = {"seconds": round(outcome["seconds"], 3), **where, "outcome": kind}
        if outcome.get("peak_bytes", 0) > self.largest["peak_bytes"]:
            self.largest = {"peak_bytes": outcome["peak_bytes"], **where, "outcome": kind}
        if outcome.get("rss_growth_bytes", 0) > self.largest_rss_growth["rss_growth_bytes"]:
            self.largest_rss_growth = {"rss_growth_bytes": outcome["rss_growth_bytes"], **where}
        if kind not in GOOD:
            self.signatures[f"{fmt} {reader} {kind} {outcome.get('error', '')}: {outcome.get('message', '')[:80]}"] += 1
            self.failures.append({**where, **{k: outcome.get(k) for k in ("kind", "error", "message", "details")}})


def _spawn(context, seeds: dict, formats: list[str], args: argparse.Namespace, scratch: str) -> Slot:
    parent, child = context.Pipe()
    process = context.Process(target=_worker, daemon=True,
                              args=(child, seeds, formats, args.seed, int(args.memory_limit_mb * 2**20), scratch))
    process.start()
    child.close()
    return Slot(process, parent)


def _kill(slot: Slot) -> None:
    slot.process.kill()  # this worker's pid only: it is ours, and it is stuck
    slot.process.join(10)
    slot.conn.close()


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from mmcardio.fuzz import FORMATS, build_seeds

    formats = [f for f in FORMATS if not args.formats or f in args.formats.split(",")]
    started = time.perf_counter()
    tally = Tally(timeout=args.timeout)
    with tempfile.TemporaryDirectory(prefix="mmcardio-fuzz-") as scratch:
        seeds = {name: seed for name, seed in build_seeds(Path(scratch) / "seeds").items() if name in formats}
        context = multiprocessing.get_context("spawn")  # see validation.py: forking copies held locks
        slots = [_spawn(context, seeds, formats, args, scratch) for _ in range(min(args.workers, args.inputs))]
        queue = list(range(args.inputs))[::-1]
        bar = tqdm(total=args.inputs, desc="fuzz", unit="input", disable=args.no_progress, file=sys.stderr)
        mutations: dict[int, list[str]] = {}
        try:
            for slot in slots:
                _next_input(slot, queue, seeds, formats)
            while any(slot.index is not None for slot in slots):
                _step(slots, queue, seeds, formats, tally, mutations, bar, args, context, scratch)
        finally:
            bar.close()
            for slot in slots:
                if slot.process.is_alive():
                    slot.conn.send(None)
                    slot.process.join(10)
                    if slot.process.is_alive():
                        _kill(slot)
    if args.save_failures:
        _save_failures(args, seeds, formats, tally, mutations)
    return _summary(args, formats, tally, mutations, time.perf_counter() - started)


def _next_input(slot: Slot, queue: list[int], seeds: dict, formats: list[str]) -> None:
    slot.index, slot.reader, slot.deadline = None, None, float("inf")
    if queue:
        slot.index = queue.pop()
        slot.pending = list(seeds[formats[slot.index % len(formats)]].readers)
        slot.conn.send(slot.index)


def _step(slots: list[Slot], queue: list[int], seeds: dict, formats: list[str], tally: Tally,
          mutations: dict, bar, args: argparse.Namespace, context, scratch: str) -> None:
    """Handle the messages that arrive before the nearest deadline; kill workers past theirs."""
    busy = [slot for slot in slots if slot.index is not None]
    nearest = min(slot.deadline for slot in busy)
    ready = wait([slot.conn for slot in busy], timeout=max(0.0, min(nearest - time.monotonic(), 1.0)))
    for i, slot in enumerate(slots):
        if slot.index is None:
            continue
        fmt = formats[slot.index % len(formats)]
        if slot.conn in ready:
            try:
                message, payload = slot.conn.recv()
            except (EOFError, OSError):  # the worker died: a crash in a C library, or the OOM killer
                slot.process.join(5)
                code = slot.process.exitcode
                _lost(tally, slot, fmt, "escaped", "WorkerCrashed", f"worker exit code {code}")
                slots[i] = _replace(slot, queue, seeds, formats, tally, bar, context, args, scratch)
                continue
            if message == "begin":
                slot.reader, slot.deadline = payload, time.monotonic() + args.timeout
            elif message == "end":
                tally.add(slot.index, fmt, payload)
                slot.pending.remove(payload["reader"])
                slot.reader, slot.deadline = None, float("inf")
            elif message == "mutation_error":  # the fuzzer's own bug: counted apart, fails the run
                tally.mutation_errors.append({"input": slot.index, "format": fmt, "traceback": payload})
                _finish(slot, fmt, tally, bar)
                _next_input(slot, queue, seeds, formats)
            else:  # done
                mutations[slot.index] = payload
                _finish(slot, fmt, tally, bar)
                _next_input(slot, queue, seeds, formats)
        elif time.monotonic() > slot.deadline:
            _lost(tally, slot, fmt, "timeout", "Timeout", f"no answer within {args.timeout:g} s")
            slots[i] = _replace(slot, queue, seeds, formats, tally, bar, context, args, scratch)


def _lost(tally: Tally, slot: Slot, fmt: str, kind: str, error: str, message: str) -> None:
    """The read in progress ended as `kind`; the input's other readers are not run."""
    reader = slot.reader or (slot.pending[0] if slot.pending else "?")
    tally.add(slot.index, fmt, {"reader": reader, "kind": kind, "error": error, "message": message,
                                "seconds": tally.timeout if kind == "timeout" else 0.0})


def _finish(slot: Slot, fmt: str, tally: Tally, bar) -> None:
    tally.inputs_per_format[fmt] += 1
    bar.update(1)
    bar.set_postfix({k: v for k, v in tally.outcomes.items()}, refresh=False)


def _replace(slot: Slot, queue: list[int], seeds: dict, formats: list[str], tally: Tally, bar, context,
             args: argparse.Namespace, scratch: str) -> Slot:
    _finish(slot, formats[slot.index % len(formats)], tally, bar)
    _kill(slot)
    fresh = _spawn(context, seeds, formats, args, scratch)
    _next_input(fresh, queue, seeds, formats)
    return fresh


def _save_failures(args: argparse.Namespace, seeds: dict, formats: list[str], tally: Tally,
                   mutations: dict) -> None:
    """Each failing input's files (rebuilt from the run seed and its index) and failure.json."""
    from mmcardio.fuzz import input_rng, materialize, mutate
    from mmcardio.io import write_json

    by_input: dict[int, list[dict]] = defaultdict(list)
    for failure in tally.failures:
        by_input[failure["input"]].append(failure)
    for index, failures in by_input.items():
        seed = seeds[formats[index % len(formats)]]
        files, applied = mutate(seed, input_rng(args.seed, index))  # the worker built it, so this does too
        folder = args.save_failures / f"{index}-{seed.name}"
        materialize(files, folder)
        write_json(folder / "failure.json", {
            "input": index, "run_seed": args.seed, "format": seed.name, "entry": seed.entry,
            "readers": list(seed.readers), "mutations": applied, "failures": failures,
            "replay": f"python scripts/fuzz.py --replay {folder}"})
        for failure in failures:
            failure["saved_to"] = str(folder)


def _summary(args: argparse.Namespace, formats: list[str], tally: Tally, mutations: dict,
             wall: float) -> dict:
    bad = sum(n for kind, n in tally.outcomes.items() if kind not in GOOD) + len(tally.mutation_errors)
    for failure in tally.failures:
        failure["mutations"] = mutations.get(failure["input"], [])
        failure.pop("details", None)
    return {
        "inputs": sum(tally.inputs_per_format.values()), "reads": sum(tally.outcomes.values()),
        "seed": args.seed, "workers": args.workers, "timeout_s": args.timeout,
        "memory_limit_mb": args.memory_limit_mb, "wall_seconds": round(wall, 1),
        "outcomes": {kind: tally.outcomes.get(kind, 0) for kind in ("ok", "mmcardio_error", "escaped", "timeout",
                                                                   "memory")},
        "formats": {f: {"inputs": tally.inputs_per_format[f], "outcomes": dict(tally.formats[f])} for f in formats},
        "readers": {r: {"reads": sum(c.values()), "outcomes": dict(c),
                        "mean_seconds": round(tally.reader_seconds[r] / max(sum(c.values()), 1), 4)}
                    for r, c in sorted(tally.readers.items())},
        "slowest_read": tally.slowest, "largest_peak_memory": tally.largest,
        "largest_rss_growth": tally.largest_rss_growth,
        "failure_kinds": dict(tally.signatures.most_common(50)), "failures": tally.failures[:100],
        "mutation_errors": tally.mutation_errors[:20],
        "ok": bad == 0,
    }


def _print_text(summary: dict) -> None:
    print(f"{summary['inputs']} inputs, {summary['reads']} reads in {summary['wall_seconds']} s "
          f"({summary['workers']} workers, seed {summary['seed']})")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in summary["outcomes"].items()))
    print(f"{'format':<20} {'inputs':>6}  outcomes")
    for fmt, row in summary["formats"].items():
        print(f"{fmt:<20} {row['inputs']:>6}  " + ", ".join(f"{k} {v}" for k, v in sorted(row["outcomes"].items())))
    slow, peak = summary["slowest_read"], summary["largest_peak_memory"]
    print(f"slowest read: {slow.get('seconds')} s ({slow.get('format')} {slow.get('reader')} input {slow.get('input')})")
    print(f"largest peak: {peak.get('peak_bytes', 0) / 1e6:.1f} MB ({peak.get('format')} {peak.get('reader')} "
          f"input {peak.get('input')})")
    for signature, count in summary["failure_kinds"].items():
        print(f"FAIL x{count}: {signature}")
    for error in summary["mutation_errors"]:
        print(f"FUZZER BUG (mutating input {error['input']}, {error['format']}):\n{error['traceback']}")


def replay(folder: Path) -> int:
    """Read a saved failing input again, here, printing each reader's outcome and traceback."""
    from mmcardio.fuzz import run_reader

    record = json.loads((folder / "failure.json").read_text())
    failed = 0
    for reader in record["readers"]:
        outcome = run_reader(reader, folder / record["entry"])
        failed += outcome.kind not in GOOD
        print(f"{reader}: {outcome.kind} {outcome.error} {outcome.message[:300]} "
              f"({outcome.seconds:.3f} s, peak {outcome.peak_bytes / 1e6:.1f} MB)")
        if "traceback" in outcome.details:
            print(outcome.details["traceback"])
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.replay:
        return replay(args.replay)
    summary = run(args)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_text(summary)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
