"""The on-disk cache of prepared studies: `prepare_cache` decodes every study once (a
processor's `prepare`: readers + the deterministic transforms) into one .safetensors file per
study beside the preprocess config that made it; `StudyCache` reads them back, refusing a
cache made with other preprocessing. The windows are cut afterwards (`CardioProcessor.sample`),
so reading from the cache and decoding on the fly give the same tensors.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from mmcardio.datasets.preprocess_config import PreprocessConfig
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.io import atomic_path, remove_stale_temporaries, write_json
from mmcardio.processor import MODALITY_NAMES, CardioProcessor, wanted_modalities
from mmcardio.study import Study, read_manifest

CACHE_CONFIG, CACHE_INDEX, CACHE_STUDIES = "preprocess.json", "index.json", "studies"


def cache_file_name(study_id: str) -> str:
    """A file name that is safe on every file system and unique per study id."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", study_id)[:60]
    return f"{readable}-{hashlib.sha1(study_id.encode()).hexdigest()[:10]}.safetensors"


def source_fingerprint(study: Study) -> str:
    """Changes when a file the study points to (or an echo view label) changes."""
    parts = []
    for column, path in study.files():
        if column.startswith("masks."):
            continue
        parts.append(f"{column}|{path}|{_stat_signature(Path(path))}")
    parts += [f"view|{clip.path}|{clip.view}" for clip in study.echo]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def _stat_signature(path: Path) -> str:
    """Size and modification time of a file, or of every file in a DICOM series folder."""
    try:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    except OSError:
        return "missing"


class StudyCache:
    """A folder written by `prepare_cache`, opened for reading with the run's preprocess config.

    Refuses a cache whose preprocess.json differs from `cfg` for the `modalities` read (default
    all): its tensors would not be what the model is trained (or evaluated) on. Window lengths
    (ECG samples, echo frames) may differ: they are cut from the cached tensors.
    """

    def __init__(self, folder: str | Path, cfg: PreprocessConfig, modalities: Iterable[str] | None = None):
        self.folder = Path(folder)
        config_file = self.folder / CACHE_CONFIG
        if not config_file.is_file():
            raise MMCardioError(f"not a prepared cache (no {CACHE_CONFIG}); run `mmcardio prepare "
                                f"--manifest M --out {self.folder}` first", self.folder)
        stored = PreprocessConfig.from_dict(_read_json(config_file), str(config_file))
        diffs = stored.differences(cfg, modalities, windows=False)
        if diffs:
            raise ConfigError("the cache was prepared with a different preprocess config ("
                              + "; ".join(f"cache {d}" for d in diffs[:5])
                              + "); prepare a new cache with this run's config", config_file, "preprocess")
        index = _read_json(self.folder / CACHE_INDEX) if (self.folder / CACHE_INDEX).is_file() else {}
        self.entries: dict[str, dict] = index.get("studies", {})
        self.failed: dict[str, dict] = index.get("failed", {})

    def missing(self, studies: Iterable[Study], modalities: Iterable[str] | None = None) -> list[str]:
        """Ids of studies not cached with all their `modalities` (default: all they have)."""
        return [s.study_id for s in studies
                if not set(wanted_modalities(s, modalities)) <= set(self.entries.get(s.study_id, {}).get("modalities", []))]

    def load(self, study_id: str, modalities: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        entry = self.entries.get(study_id)
        if entry is None:
            reason = self.failed.get(study_id, {}).get("error", "not prepared")
            raise MMCardioError(f"study {study_id!r} is not in the cache ({reason}); run "
                                "`mmcardio prepare` with this manifest", self.folder)
        wanted = None if modalities is None else tuple(f"{m}." for m in modalities)
        path = self.folder / entry["file"]
        with safe_open(str(path), framework="pt") as fh:
            names = fh.keys()  # safe_open is not iterable
            return {k: fh.get_tensor(k) for k in names if wanted is None or k.startswith(wanted)}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise MMCardioError(f"cannot read JSON: {err}", path) from None


class _PrepareJobs(Dataset):
    """Decodes and writes one study per item, so a DataLoader's workers run them in parallel."""

    def __init__(self, jobs: list[tuple[Study, list[str]]], folder: Path, processor: CardioProcessor):
        self.jobs, self.folder, self.processor = jobs, folder, processor

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> tuple[str, dict]:
        study, modalities = self.jobs[i]
        fingerprint = source_fingerprint(study)
        try:
            tensors = self.processor.prepare(study, modalities)
        except Exception as err:  # noqa: BLE001 - one bad study must not stop the cohort; it is listed
            problem = str(err) if isinstance(err, MMCardioError) else f"{type(err).__name__}: {err}"
            return study.study_id, {"error": problem, "sources": fingerprint}
        name = f"{CACHE_STUDIES}/{cache_file_name(study.study_id)}"
        modalities = sorted({k.split(".", 1)[0] for k in tensors}, key=MODALITY_NAMES.index)
        entry = {"file": name, "modalities": modalities, "sources": fingerprint}
        with atomic_path(self.folder / name) as tmp:  # the file carries its own index entry
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"study_id": study.study_id, "entry": json.dumps(entry)})
        return study.study_id, entry


def _identity(item: Any) -> Any:
    return item


def prepare_cache(manifest: str | Path | Sequence[Study], out: str | Path, processor: CardioProcessor,
                  progress: bool = True, num_workers: int = 0) -> dict:
    """Decode every study once into `out` (one .safetensors per study, `preprocess.json`,
    `index.json`) with `processor` (its preprocessing, for its modalities: e.g. only "ecg" for
    the MAE stage; a later run with more modalities adds them). Studies already cached with
    unchanged files are kept, so re-running on a grown manifest only processes the new ones. A
    study whose files fail to decode is listed under "failed" (with the reader's message)
    instead of stopping the run. `num_workers` processes decode in parallel.

    Returns {"cache", "studies", "prepared", "reused", "failed": {study_id: problem}, "seconds"};
    studies with none of the modalities are neither prepared nor reused.
    """
    start = time.perf_counter()
    cfg, modalities = processor.preprocess, processor.modalities
    studies = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / CACHE_CONFIG).is_file():
        StudyCache(folder, cfg, modalities)  # refuses a folder made with another config
    else:
        write_json(folder / CACHE_CONFIG, cfg.to_dict())
    remove_stale_temporaries(folder / CACHE_STUDIES)  # of a run killed while writing
    index = _read_json(folder / CACHE_INDEX) if (folder / CACHE_INDEX).is_file() else {}
    entries: dict[str, dict] = index.get("studies", {})
    todo, n_wanted = [], 0
    for study in studies:
        entry, wanted = entries.get(study.study_id), wanted_modalities(study, modalities)
        if wanted and not _still_valid(entry, study, folder, wanted):
            entry = _entry_in_file(folder, study)  # written before a kill could save the index
            entries.update({study.study_id: entry} if entry else {})
        n_wanted += bool(wanted)
        if wanted and not _still_valid(entry, study, folder, wanted):
            todo.append((study, sorted(set(wanted) | set((entry or {}).get("modalities", [])))))
    failed: dict[str, dict] = {}
    loader = DataLoader(_PrepareJobs(todo, folder, processor), batch_size=None, num_workers=num_workers,
                        collate_fn=_identity)
    if progress and todo:
        from tqdm import tqdm
        loader = tqdm(loader, total=len(todo), desc="prepare", unit="study")
    for done, (study_id, entry) in enumerate(loader, 1):
        if "error" in entry:
            failed[study_id] = entry
            entries.pop(study_id, None)
        else:
            entries[study_id] = entry
        if done % 200 == 0:  # saves re-reading file headers after a crash (see _entry_in_file)
            write_json(folder / CACHE_INDEX, {"studies": entries, "failed": failed})
    write_json(folder / CACHE_INDEX, {"studies": entries, "failed": failed})
    return {"cache": str(folder), "studies": len(studies), "prepared": len(todo) - len(failed),
            "reused": n_wanted - len(todo), "failed": {k: v["error"] for k, v in failed.items()},
            "seconds": round(time.perf_counter() - start, 3)}


def _entry_in_file(folder: Path, study: Study) -> dict | None:
    """The index entry a study's cache file carries in its header (None when there is no
    readable file): a run killed before it saved index.json loses no finished study."""
    path = folder / CACHE_STUDIES / cache_file_name(study.study_id)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        return json.loads(metadata["entry"]) if metadata.get("study_id") == study.study_id else None
    except (OSError, KeyError, ValueError, SafetensorError):  # an old or damaged file: redone
        return None


def _still_valid(entry: dict | None, study: Study, folder: Path, modalities: list[str]) -> bool:
    return bool(entry) and set(modalities) <= set(entry["modalities"]) \
        and (folder / entry["file"]).is_file() and entry["sources"] == source_fingerprint(study)
