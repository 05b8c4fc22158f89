"""Atomic writes leave the old file intact when the write fails, swap folders in one step, and
repair what a kill between two renames left."""
from __future__ import annotations

import subprocess
import sys

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
