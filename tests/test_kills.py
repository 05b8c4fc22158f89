"""SIGKILL at seeded moments, then resume or re-run: nothing is lost or duplicated.

Each command runs in its own process and is killed with SIGKILL when an observable state is
reached (metrics.jsonl logged step k, a `.step_N.partial` checkpoint folder holding j files, k
progress-bar batches, a store's or an index's temporary folder, k cache files); which state is
a seeded choice. The resumed or re-run command must end exactly where an uninterrupted run of
the same command ends: `torch.equal` weights, every metrics step once, every study's vectors
and cache file once.

Importing torch, transformers and the towers takes about 7 s, more than most runs here, so
every run (killed, resumed and the uninterrupted reference) is forked from one process that
imported them once (`Launcher`) and runs `mmcardio.cli.main` as `python -m mmcardio.cli` does.

The kills per command are written to kills.json in the session's tmp folder and printed.
"""
from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mmcardio.datasets.synthetic import generate_cohort
from mmcardio.retrieval.index import Index, build_index
from mmcardio.retrieval.store import EmbeddingStore
from mmcardio.study import read_manifest, write_manifest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked processes (POSIX)")

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "configs" / "pretrain" / "tiny.yaml"
SEGMENT = REPO / "configs" / "segment" / "tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
SEED = 29
POLL_S = 0.004
LIMIT_S = 900.0  # a hung command fails the test instead of hanging the suite

#: Imports once, then forks one `mmcardio` command per request line; reports its pid and its
#: exit code (-9 when killed).
ZYGOTE = r"""
import json, os, sys, traceback
import mmcardio.cli, mmcardio.train.pretrain, mmcardio.train.segment, mmcardio.report.train
import mmcardio.retrieval.store, mmcardio.retrieval.index, mmcardio.datasets.cache
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = 1
        try:
            code = mmcardio.cli.main(job["argv"])
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.stdout.write(json.dumps({"pid": pid}) + "\n")
    sys.stdout.flush()
    sys.stdout.write(json.dumps({"rc": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}) + "\n")
    sys.stdout.flush()
"""


class Launcher:
    """`mmcardio` commands in processes forked from one that imported the stack once."""

    def __init__(self, cwd: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0, env=ENV, cwd=cwd)
        self.runs = 0

    def start(self, argv: list[str], log: Path) -> int:
        self.proc.stdin.write((json.dumps({"argv": [str(a) for a in argv], "log": str(log)}) + "\n").encode())
        self.runs += 1
        return json.loads(self.proc.stdout.readline())["pid"]

    def exit_code(self, timeout: float) -> int | None:
        """The running command's exit code once it has ended (None while it runs)."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return json.loads(self.proc.stdout.readline())["rc"] if ready else None

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def launcher():
    started = Launcher(REPO)
    yield started
    started.close()


@pytest.fixture(scope="module")
def tally(tmp_path_factory):
    """Kills per command, written to kills.json and printed at the end of the module."""
    counts: dict[str, dict] = {}
    yield counts
    path = tmp_path_factory.getbasetemp() / "kills.json"
    total = sum(c["kills"] for c in counts.values())
    path.write_text(json.dumps({"total_kills": total, "commands": counts}, indent=2) + "\n")
    print(f"\nkills: {total} in all, {json.dumps({k: c['kills'] for k, c in counts.items()})} ({path})")


def run(launcher: Launcher, argv: list, log: Path, trigger: Callable[[], bool] = lambda: False) -> bool:
    """Run `mmcardio argv`, SIGKILL it as soon as `trigger()` holds. True when it was killed;
    False when it ended first, which it must do successfully."""
    pid = launcher.start(argv, log)
    deadline = time.monotonic() + LIMIT_S
    while (code := launcher.exit_code(POLL_S)) is None:
        if trigger():
            os.kill(pid, signal.SIGKILL)  # our own child: the launcher has not reaped it yet
            code = launcher.exit_code(LIMIT_S)
            break
        assert time.monotonic() < deadline, f"{argv[0]} still running after {LIMIT_S} s: {log}"
    assert code in (0, -signal.SIGKILL), f"exit code {code}: {log.read_text()[-3000:]}"
    return code == -signal.SIGKILL


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, launcher) -> Path:
    """16 phantom studies (made while the launcher imports) and their cache, as an
    uninterrupted `mmcardio prepare` makes it with the tiny pretraining config."""
    root = tmp_path_factory.mktemp("kills")
    generate_cohort(root / "cohort", 16, seed=0, progress=False, workers=1)
    assert not run(launcher, [*PREPARE, "--manifest", manifest(root), "--out", root / "cache", "--no-deidentify"],
                   root / "cache.log")
    return root


PREPARE = ["prepare", "--config", PRETRAIN, "--json"]


def manifest(cohort: Path) -> Path:
    return cohort / "cohort" / "manifest.csv"


# --- observable states --------------------------------------------------------------------

def newer(path: Path, since_ns: int) -> bool:
    """`path` exists and was written by the run started at `since_ns`."""
    try:
        return path.stat().st_mtime_ns >= since_ns
    except FileNotFoundError:
        return False


def logged_step(out: Path, since_ns: int) -> int:
    """The last step the current run logged to metrics.jsonl (-1 before it logs)."""
    path = out / "metrics.jsonl"
    if not newer(path, since_ns):
        return -1
    lines = [ln for ln in path.read_text().split("\n")[:-1] if ln]  # whole lines only
    return json.loads(lines[-1])["step"] if lines else -1


def partial_checkpoint(out: Path, since_ns: int) -> tuple[int, int]:
    """(step, files in it) of the checkpoint the current run is writing, or (-1, 0)."""
    found = []
    for folder in (out / "checkpoints").glob(".step_*.partial"):
        try:
            if folder.stat().st_mtime_ns >= since_ns:
                found.append((int(folder.name.split("_")[1].split(".")[0]), len(os.listdir(folder))))
        except FileNotFoundError:  # renamed meanwhile
            continue
    return max(found, default=(-1, 0))


def bar_count(log: Path, desc: str) -> int:
    """How far the tqdm bar `desc` on the run's stderr has got (0 before it shows)."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return max((int(n) for n in re.findall(rf"{re.escape(desc)}:[^|]*\|[^|]*\| *(\d+)/\d+", text)), default=0)


def temporaries(folder: Path, name: str) -> list[Path]:
    """`atomic_path` work folders of `folder / name` (`.NAME.PID.RANDOM`)."""
    return [p for p in folder.glob(f".{name}.*") if p.is_dir()]


def complete_steps(out: Path) -> list[int]:
    folder = out / "checkpoints"
    return sorted(int(p.name.split("_")[1]) for p in folder.glob("step_*") if (p / "train_state.json").is_file()) \
        if folder.is_dir() else []


# --- training: pretrain, segmenter, report head -------------------------------------------

def kill_training(launcher: Launcher, argv: list, out: Path, kinds: list[str], max_steps: int, every: int,
                  rng: random.Random, logs: Path) -> list[dict]:
    """Kill a training run once per kind, resuming each time with --resume: "checkpoint" while
    it writes the next or the one after (once the folder holds a seeded number of files; if the
    write was too quick to see, two steps later), "step" at a seeded step after the next
    checkpoint (so each resume starts from a later one)."""
    events = []
    for i, kind in enumerate(kinds):
        done = max(complete_steps(out), default=0)
        assert done < max_steps, f"no room left for kill {i}: {events}"
        since = time.time_ns()
        if kind == "checkpoint" and done + every <= max_steps - 2:
            target = min(rng.choice([done + every, done + 2 * every]), max_steps - 2)
            files = rng.randint(0, 4)  # 4: the state saved, train_state.json being written or flushed

            def trigger(target=target, files=files, since=since) -> bool:
                step, n_files = partial_checkpoint(out, since)
                return (step >= target and n_files >= files) or logged_step(out, since) >= target + 2
        else:
            kind, target = "step", min(done + every + rng.randint(1, every), max_steps)

            def trigger(target=target, since=since) -> bool:
                return logged_step(out, since) >= target
        log = logs / f"{out.name}-kill{i}.log"
        assert run(launcher, [*argv, "--resume"], log, trigger), f"the run ended before its kill ({kind} {target})"
        resumed = re.findall(r"resuming from (\S+)", log.read_text())
        events.append({"kind": kind, "target": target, "complete_before": done, "resumed_from": resumed,
                       "left_partial": bool(list((out / "checkpoints").glob(".step_*.partial"))
                                            if kind == "checkpoint" else False)})
    return events


def assert_same_weights(reference: Path, resumed: Path) -> None:
    a, b = load_file(reference), load_file(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), resumed


def assert_same_log(reference: Path, resumed: Path, max_steps: int) -> None:
    """Each step logged exactly once, with the loss of the uninterrupted run."""
    ref = [json.loads(ln) for ln in (reference / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(ln) for ln in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in got] == list(range(1, max_steps + 1)) == [m["step"] for m in ref]
    assert [m["loss"] for m in got] == [m["loss"] for m in ref]


def assert_no_leftovers(out: Path, keep: list[int]) -> None:
    """Only the kept complete checkpoints remain: no partial or half-deleted folder."""
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(f"step_{s}" for s in keep)


def check_training(name: str, launcher: Launcher, cohort: Path, argv: list, reference: Path, steps: int,
                   every: int, kinds: list[str], weights: list[str], tally: dict) -> list[dict]:
    """Kill a run once per kind (seeded moments), resume it to the end and compare it with
    the uninterrupted `reference` run: its weights, its log and its checkpoints folder."""
    rng = random.Random(f"{SEED}-{name}")
    out = cohort / f"{name}-cut"
    events = kill_training(launcher, [*argv, "--out", out], out, kinds, steps, every, rng, cohort)
    assert not run(launcher, [*argv, "--out", out, "--resume"], cohort / f"{name}-final.log")
    for file in weights:
        assert_same_weights(reference / "final" / file, out / "final" / file)
    assert_same_log(reference, out, steps)
    assert_no_leftovers(out, [steps - every, steps])
    tally[name] = {"kills": len(events), "during_checkpoint_write": sum(e["left_partial"] for e in events),
                   "events": events}
    return events


def seeded_kinds(name: str, checkpoints: int, steps: int) -> list[str]:
    kinds = ["checkpoint"] * checkpoints + ["step"] * steps
    random.Random(f"{SEED}-{name}-kinds").shuffle(kinds)
    return kinds


@pytest.fixture(scope="module")
def pretrained(cohort, launcher) -> dict:
    """The uninterrupted pretraining run; its final model also feeds embed and the report head."""
    steps, every = 16, 2
    sets = ["batch_size=4", "log_every=1", "num_workers=0", "optimizer.warmup_steps=2", f"max_steps={steps}",
            f"checkpoint_every={every}", "keep_checkpoints=2"]
    argv = ["pretrain", "--config", PRETRAIN, "--manifest", manifest(cohort), "--cache", cohort / "cache"]
    for item in sets:
        argv += ["--set", item]
    assert not run(launcher, [*argv, "--out", cohort / "pretrain-ref"], cohort / "pretrain-ref.log")
    return {"argv": argv, "steps": steps, "every": every, "out": cohort / "pretrain-ref"}


def test_pretraining_killed_during_steps_and_checkpoint_writes_resumes_to_the_same_weights(
        cohort, pretrained, launcher, tally):
    events = check_training("pretrain", launcher, cohort, pretrained["argv"], pretrained["out"],
                            pretrained["steps"], pretrained["every"], seeded_kinds("pretrain", 3, 3),
                            ["model.safetensors"], tally)
    out = cohort / "pretrain-cut"
    for event in events:  # each run resumed from the latest complete checkpoint, never a partial one
        done = event["complete_before"]
        assert event["resumed_from"] == ([str(out / "checkpoints" / f"step_{done}")] if done else []), event
    assert sum(e["left_partial"] for e in events) >= 2, events  # killed while a checkpoint was written


def training_argv(command: list, sets: list[str]) -> list:
    return [*command, *(x for item in sets for x in ("--set", item))]


def test_segmenter_training_killed_and_resumed_ends_with_the_same_weights(cohort, launcher, tally):
    steps, every = 24, 3  # 18 steps an epoch: a checkpoint at its end, resumes in the next
    argv = training_argv(["segment", "train", "--config", SEGMENT, "--manifest", manifest(cohort)],
                         [f"max_steps={steps}", f"checkpoint_every={every}", "keep_checkpoints=2", "log_every=1",
                          "max_series=4"])
    assert not run(launcher, [*argv, "--out", cohort / "segment-ref"], cohort / "segment-ref.log")
    check_training("segment", launcher, cohort, argv, cohort / "segment-ref", steps, every,
                   seeded_kinds("segment", 2, 2), ["model.safetensors"], tally)


@pytest.fixture(scope="module")
def stored(cohort, launcher, pretrained) -> dict:
    """The uninterrupted embedding store of the cohort (batches of 2: several batches to kill in)."""
    argv = ["embed", "--model", pretrained["out"] / "final", "--batch-size", "2"]
    assert not run(launcher, [*argv, "--manifest", manifest(cohort), "--out", cohort / "store-ref"],
                   cohort / "store-ref.log")
    return {"argv": argv, "store": cohort / "store-ref"}


def test_report_head_training_killed_and_resumed_ends_with_the_same_weights(cohort, launcher, pretrained,
                                                                            stored, tally):
    steps, every = 24, 3  # 17 steps an epoch
    argv = training_argv(["report", "train", "--manifest", manifest(cohort)],
                         [f"clip_model={pretrained['out'] / 'final'}", f"store={stored['store']}",
                          f"max_steps={steps}", f"checkpoint_every={every}", "keep_checkpoints=2", "log_every=1",
                          "batch_size=4", "tiny.n_layer=1", "tiny.n_embd=32", "tiny.vocab_size=400", "tiny.dropout=0.1",
                          "train_splits=[train,val]"])
    assert not run(launcher, [*argv, "--out", cohort / "report-ref"], cohort / "report-ref.log")
    check_training("report", launcher, cohort, argv, cohort / "report-ref", steps, every,
                   seeded_kinds("report", 1, 2), ["model.safetensors", "lm/model.safetensors"], tally)


# --- embed, index, prepare ----------------------------------------------------------------

def kill_until_killed(launcher: Launcher, argv: list, log: Path, trigger: Callable[[], bool],
                      reset: Callable[[], None], attempts: int = 4) -> int:
    """Kill at a moment that may pass too quickly to see (a folder written in milliseconds):
    when the run ends first, `reset` puts back the state before it and the run is tried again.
    Returns the runs it took."""
    for attempt in range(1, attempts + 1):
        if run(launcher, argv, log, trigger):
            return attempt
        reset()
    pytest.fail(f"{attempts} runs ended before their kill moment: {log}")


def store_rows(folder: Path) -> tuple[dict[tuple[str, str], np.ndarray], pd.DataFrame]:
    """Each (study, key) vector of a store, which must hold each of them once, and its metadata."""
    store = EmbeddingStore.load(folder)
    pairs = list(zip(store.meta["study_id"], store.meta["modality"]))
    assert len(set(pairs)) == len(pairs), f"duplicate vectors in {folder}"
    meta = store.meta.sort_values(["study_id", "modality"]).reset_index(drop=True)
    return dict(zip(pairs, store.vectors)), meta


def assert_same_store(reference: Path, got: Path) -> None:
    (ref, ref_meta), (new, new_meta) = store_rows(reference), store_rows(got)
    assert ref.keys() == new.keys() and all(np.array_equal(ref[k], new[k]) for k in ref)
    pd.testing.assert_frame_equal(ref_meta, new_meta)


def store_studies(folder: Path) -> set[str]:
    return set(store_rows(folder)[1]["study_id"])


def test_embed_killed_midway_reruns_to_every_study_once(cohort, launcher, stored, tally):
    rng = random.Random(f"{SEED}-embed")
    studies = read_manifest(manifest(cohort))
    first = write_manifest(studies[:8], manifest(cohort).with_name("first8.csv"))
    kills, runs = 0, []
    for out, source, before in ((cohort / "store-cut", manifest(cohort), set()),
                                (cohort / "store-grow", manifest(cohort), {s.study_id for s in studies[:8]})):
        if before:  # a store of the first 8 studies, grown by the killed runs
            assert not run(launcher, [*stored["argv"], "--manifest", first, "--out", out], cohort / "grow.log")
            shutil.copytree(out, cohort / "store-grow-before")
        argv = [*stored["argv"], "--manifest", source, "--out", out]
        batches = (len(studies) - len(before)) // 2
        log = cohort / f"{out.name}-kill.log"
        since = time.time_ns()
        k = rng.randint(1, batches - 2)
        assert run(launcher, argv, log, lambda k=k, log=log: bar_count(log, "embed") >= k)
        assert (store_studies(out) if out.exists() else set()) == before  # never a half-written store
        files = rng.randint(0, 3)

        def writing(files=files, out=out, since=since) -> bool:
            return any(newer(t, since) and len(list(t.rglob("*"))) > files for t in temporaries(cohort, out.name))

        def reset(out=out, before=before) -> None:
            shutil.rmtree(out)
            if before:
                shutil.copytree(cohort / "store-grow-before", out)
        runs.append(kill_until_killed(launcher, argv, log.with_suffix(".write.log"), writing, reset))
        assert (store_studies(out) if out.exists() else set()) in (before, {s.study_id for s in studies})
        assert not run(launcher, argv, cohort / f"{out.name}-final.log")
        assert_same_store(stored["store"], out)
        kills += 2
    tally["embed"] = {"kills": kills, "runs_to_hit_the_store_write": runs}


@pytest.fixture(scope="module")
def big_store(cohort, stored) -> Path:
    """A store of 20,000 rows per key (the cohort's metadata repeated, random unit vectors):
    large enough that writing its index takes a moment a kill can land in."""
    small = EmbeddingStore.load(stored["store"])
    rows = small.meta[small.meta["modality"] == "study"].reset_index(drop=True)
    n = 20_000
    metas = []
    for key in small.keys:
        meta = rows.iloc[np.arange(n) % len(rows)].reset_index(drop=True)
        metas.append(meta.assign(study_id=[f"{s}-{i}" for i, s in enumerate(meta["study_id"])], modality=key))
    vectors = np.random.default_rng(SEED).standard_normal((n * len(metas), small.vectors.shape[1]))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return EmbeddingStore(vectors, pd.concat(metas, ignore_index=True), small.model).save(cohort / "big-store")


def assert_consistent_index(folder: Path) -> dict[str, int]:
    """The index loads whole; each key's FAISS index, index.json and metadata agree. Its counts."""
    index = Index.load(folder)
    for key in index.keys:
        rows = index.rows(key)
        assert index.indexes[key].ntotal == index.info["counts"][key] == len(rows)
        assert rows["position"].tolist() == list(range(len(rows)))
    return index.info["counts"]


def test_index_killed_midway_is_never_half_written_and_reruns_complete(cohort, launcher, stored, big_store, tally):
    rng = random.Random(f"{SEED}-index")
    out = cohort / "index-cut"
    build_index(stored["store"], cohort / "index-old")  # an index of the smaller store is replaced
    shutil.copytree(cohort / "index-old", out)
    reference = build_index(big_store, cohort / "index-ref")
    old_counts = assert_consistent_index(out)
    argv = ["index", "--store", big_store, "--out", out]
    keys = len(reference.keys)

    def reset() -> None:
        shutil.rmtree(out)
        shutil.copytree(cohort / "index-old", out)
    kills, runs = 0, []
    for moment in ("keys", "writing", "writing"):
        log, since = cohort / f"index-kill{kills}.log", time.time_ns()
        if moment == "keys":
            k = rng.randint(1, keys - 1)
            assert run(launcher, argv, log, lambda k=k, log=log: bar_count(log, "index (flat)") >= k)
        else:
            files = rng.randint(0, keys + 1)  # the FAISS files, meta.parquet, index.json

            def writing(files=files, since=since) -> bool:
                return any(newer(t, since) and len(list(t.rglob("*.*"))) > files for t in temporaries(cohort, out.name))
            runs.append(kill_until_killed(launcher, argv, log, writing, reset))
        kills += 1
        assert assert_consistent_index(out) in (old_counts, reference.info["counts"])
        reset()  # each kill replaces the old index
    assert not run(launcher, argv, cohort / "index-final.log")
    rebuilt = Index.load(out)
    assert rebuilt.info == reference.info
    pd.testing.assert_frame_equal(rebuilt.meta, reference.meta)
    for key in reference.keys:
        n = reference.indexes[key].ntotal
        assert np.array_equal(rebuilt.indexes[key].reconstruct_n(0, n), reference.indexes[key].reconstruct_n(0, n))
    tally["index"] = {"kills": kills, "runs_to_hit_the_index_write": runs}


def cache_tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    files = sorted((folder / "studies").iterdir())
    assert all(not f.name.startswith(".") for f in files), files  # no temporary left behind
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            names = fh.keys()  # safe_open is not iterable
            tensors[file.name] = {k: fh.get_tensor(k) for k in names}
    return tensors


def visible_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def test_prepare_killed_midway_reruns_to_every_study_once(cohort, launcher, tally):
    """The default prepare (a de-identified copy, then the cache) killed while it copies and
    while it caches, re-run: the same copy, manifest and cache as an uninterrupted prepare."""
    rng = random.Random(f"{SEED}-prepare")
    argv = [*PREPARE, "--manifest", manifest(cohort), "--deid-key", cohort / "deid.key"]
    reference, out = cohort / "prepared-ref", cohort / "prepared-cut"
    assert not run(launcher, [*argv, "--out", reference], cohort / "prepared-ref.log")
    studies, copies = out / "studies", out / "files"

    def count(folder: Path, pattern: str) -> int:
        return len(list(folder.glob(pattern))) if folder.is_dir() else 0
    copied_at, cached_at = rng.randint(2, 13), sorted(rng.sample(range(2, 14), 2))
    moments = [("copying", copied_at), ("caching", cached_at[0]), ("caching a file", cached_at[1])]
    for i, (moment, k) in enumerate(moments):
        since = time.time_ns()
        if moment == "copying":  # the de-identified copy of the k-th study is being written

            def trigger(k=k) -> bool:
                return count(copies, "*") >= k
        elif moment == "caching":

            def trigger(k=k) -> bool:
                return count(studies, "*.safetensors") >= k
        else:  # while a study's cache file is written (if seen in time), else one file later

            def trigger(k=k, since=since) -> bool:
                cached = count(studies, "*.safetensors")
                return (cached >= k and any(newer(t, since) for t in studies.glob(".*"))) or cached > k
        assert run(launcher, [*argv, "--out", out], cohort / f"prepare-kill{i}.log", trigger), moment
    assert not run(launcher, [*argv, "--out", out], cohort / "prepare-final.log")
    assert (out / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
    assert visible_files(copies) == visible_files(reference / "files")
    ref_index, got_index = (json.loads((folder / "index.json").read_text()) for folder in (reference, out))
    assert len(got_index["studies"]) == 16 and got_index["failed"] == ref_index["failed"] == {}
    assert {k: (e["file"], e["modalities"]) for k, e in got_index["studies"].items()} == \
        {k: (e["file"], e["modalities"]) for k, e in ref_index["studies"].items()}  # sources: their own copies
    ref_tensors, got_tensors = cache_tensors(reference), cache_tensors(out)
    assert got_tensors.keys() == ref_tensors.keys() == {Path(e["file"]).name for e in got_index["studies"].values()}
    for name, tensors in ref_tensors.items():
        assert tensors.keys() == got_tensors[name].keys()
        assert all(torch.equal(tensors[k], got_tensors[name][k]) for k in tensors), name
    tally["prepare"] = {"kills": len(moments), "moments": [m for m, _ in moments]}


def test_a_hidden_checkpoint_folder_is_never_resumed_from(tmp_path):
    """Even when a kill left it with train_state.json: it may be one being written or deleted."""
    from mmcardio.errors import MMCardioError
    from mmcardio.train.checkpoint import checkpoint_dirs, resolve_resume

    for name in (".step_4.partial", ".step_2.deleting", "step_2"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / "train_state.json").write_text("{}")
    assert checkpoint_dirs(tmp_path) == [tmp_path / "checkpoints" / "step_2"]
    assert resolve_resume(True, tmp_path) == tmp_path / "checkpoints" / "step_2"
    with pytest.raises(MMCardioError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoints" / ".step_4.partial"), tmp_path)
