"""Atomic writes leave the old file intact when the write fails, swap folders in one step,
repair what a kill between two renames left, and flush what they wrote to disk."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmcardio import io
from mmcardio.io import atomic_path, write_json


def test_failed_write_keeps_old_content(tmp_path):
    target = write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{partial")
        raise RuntimeError("crash mid-write")
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_folder_is_replaced_whole(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.bin").write_text("x")
    with atomic_path(tmp_path / "model") as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_folder_swap_is_one_exchange_on_linux(tmp_path, monkeypatch):
    """The folder never goes missing: one renameat2 exchange, no rename of the old one aside."""
    if sys.platform != "linux":
        pytest.skip("renameat2 is Linux's")
    (tmp_path / "index").mkdir()
    renames = []
    monkeypatch.setattr(io.os, "replace", lambda a, b: renames.append((a, b)))
    with atomic_path(tmp_path / "index") as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("1")
    assert renames == [] and (tmp_path / "index" / "new").read_text() == "1"


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_kill_between_two_renames_is_repaired_by_the_next_write(tmp_path):
    """The two-rename fallback killed after moving the old folder aside: the next write of the
    path puts the complete new folder in place before it starts, and removes the temporary."""
    work = tmp_path / f".store.{dead_pid()}.abc123"
    (work / "store.old").mkdir(parents=True)
    (work / "store").mkdir()
    (work / "store" / "vectors.npy").write_text("new")
    write_json(tmp_path / "store.json", {})  # any write beside it leaves it alone
    assert work.exists() and not (tmp_path / "store").exists()
    with atomic_path(tmp_path / "store") as tmp:
        assert (tmp_path / "store" / "vectors.npy").read_text() == "new"
        tmp.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "store.json"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    stale = tmp_path / f".final.{dead_pid()}.xyz"
    (stale / "final").mkdir(parents=True)  # killed mid-write: no .old, nothing to finish
    live = tmp_path / f".final.{io.os.getpid()}.live"
    live.mkdir()  # this process's own: another write may be using it
    with atomic_path(tmp_path / "final") as tmp:
        tmp.mkdir()
    assert not stale.exists() and live.exists()
    assert not (tmp_path / "final" / "final").exists()


def traced_calls(script: str, tmp_path) -> list[tuple[str, list[str]]]:
    """(system call, paths) of each fsync and rename `script` makes, in order, as strace sees them."""
    if sys.platform != "linux" or shutil.which("strace") is None:
        pytest.skip("observes the system calls with strace (Linux)")
    trace = tmp_path / "trace.txt"
    done = subprocess.run(["strace", "-f", "-y", "-e", "trace=fsync,rename,renameat,renameat2", "-o", str(trace),
                           sys.executable, "-c", script], check=False, capture_output=True, text=True)
    if done.returncode and "ptrace" in done.stderr:  # a sandbox that forbids tracing
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    calls = []
    for line in trace.read_text().splitlines():
        found = re.match(r"\d+\s+(fsync|rename|renameat|renameat2)\((.*)\)\s+=\s+0", line)
        if found:
            name, args = found.groups()
            calls.append((name, re.findall(r"\d+<([^>]*)>", args) if name == "fsync" else re.findall(r'"([^"]*)"', args)))
    return calls


def renamed_to(calls: list[tuple[str, list[str]]], target: str) -> int:
    """Position of the call that renamed something to `target`."""
    return next(i for i, (name, paths) in enumerate(calls) if name != "fsync" and paths[-1] == target)


def test_a_completed_folder_write_is_flushed_before_and_after_its_rename(tmp_path):
    root = tmp_path / "out"
    calls = traced_calls(f"""
from pathlib import Path
from mmcardio.io import atomic_path
root = Path({str(root)!r})
(root / "model").mkdir(parents=True)  # replaced: the swap
for name in ("model", "fresh"):  # and created: a plain rename
    with atomic_path(root / name) as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "weights.bin").write_bytes(b"w")
        (tmp / "sub" / "config.json").write_text("{{}}")
""", tmp_path)
    for name in ("model", "fresh"):
        at = renamed_to(calls, str(root / name))
        before = {Path(p).relative_to(root) for call, paths in calls[:at] if call == "fsync" for p in paths
                  if Path(p).is_relative_to(root) and f".{name}." in p}
        work = {p.parts[0] for p in before}
        assert len(work) == 1, before  # one temporary folder, all its files and folders flushed:
        assert {p.relative_to(next(iter(work))) for p in before} == \
            {Path(name), Path(name, "weights.bin"), Path(name, "sub"), Path(name, "sub", "config.json")}
        assert calls[at + 1] == ("fsync", [str(root)])  # the rename itself, in the parent folder


def test_a_checkpoint_is_flushed_before_it_is_named_complete(tmp_path):
    out = tmp_path / "run"
    calls = traced_calls(f"""
from pathlib import Path
import torch
from accelerate import Accelerator
from mmcardio.train.checkpoint import TrainState, save_checkpoint
accelerator = Accelerator(cpu=True)
model = torch.nn.Linear(2, 2)
optimizer = torch.optim.AdamW(model.parameters())
model, optimizer = accelerator.prepare(model, optimizer)
for step in (1, 2):
    save_checkpoint(accelerator, Path({str(out)!r}), TrainState(step=step), keep=1)
""", tmp_path)
    checkpoints = out / "checkpoints"
    at = renamed_to(calls, str(checkpoints / "step_2"))
    partial = checkpoints / ".step_2.partial"
    flushed = {Path(p).relative_to(partial) for call, paths in calls[:at] if call == "fsync" for p in paths
               if Path(p).is_relative_to(partial)}
    assert {Path("train_state.json"), Path("model.safetensors"), Path("optimizer.bin"), Path(".")} <= flushed
    assert len(flushed) >= len(list((checkpoints / "step_2").rglob("*"))) + 1  # every file and the folder
    assert calls[at + 1] == ("fsync", [str(checkpoints)])
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_2"]  # step_1 deleted, nothing half-way


def test_stale_temporaries_of_every_file_in_a_folder_are_removed(tmp_path):
    """A kill after a file's rename leaves its emptied temporary; no later write of that file
    comes to remove it, so the folder is swept."""
    (tmp_path / "a.safetensors").write_bytes(b"done")
    stale = tmp_path / f".a.safetensors.{dead_pid()}.k1ll3d"
    stale.mkdir()
    live = tmp_path / f".b.safetensors.{io.os.getpid()}.busy"
    live.mkdir()
    io.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.safetensors", live.name])
