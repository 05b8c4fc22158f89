"""Atomic writes leave the old file intact when the write fails."""
from __future__ import annotations

import pytest

from mmcardio.io import atomic_path, write_json


def test_failed_write_keeps_old_content(tmp_path):
    target = write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
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
