"""Studies as torch data: preprocessing per study, an on-disk cache, the dataset, the
modality-balanced distributed sampler, the collate function and the DataLoader.

A study is decoded once (`prepare_study`: readers + the deterministic transforms) into a flat
dict of tensors, which `prepare_cache` stores as one .safetensors file per study beside the
preprocess config that made it. `sample_study` then cuts the fixed-size windows the model
takes (centered, or random in training with a seed the sampler draws), so reading from the
cache and decoding on the fly give the same tensors.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Sampler

from mmcardio.datasets.transforms import (
    PreprocessConfig,
    choose_views,
    prepare_ecg,
    prepare_echo,
    preprocess_cmr,
    preprocess_ct,
    random_shift,
    sample_cmr,
    sample_ecg,
    sample_echo,
    view_id,
)
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.io import atomic_path, write_json
from mmcardio.modality import ECHO_VIEWS, STUDY_MODALITIES
from mmcardio.sentences import UNITS, sample_sentences
from mmcardio.study import Study, read_manifest

CACHE_CONFIG, CACHE_INDEX, CACHE_STUDIES = "preprocess.json", "index.json", "studies"
#: Modality keys in the order batches, samplers and caches list them.
MODALITY_NAMES = tuple(str(m) for m in STUDY_MODALITIES)


def as_preprocess(cfg: PreprocessConfig | dict) -> PreprocessConfig:
    return cfg if isinstance(cfg, PreprocessConfig) else PreprocessConfig.from_dict(cfg)


# ------------------------------------------------------------------------------- per study

def prepare_study(study: Study, cfg: PreprocessConfig, modalities: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Read the study's files and run the deterministic transforms.

    Returns a flat dict (what the cache stores): "ecg.signal" [12, L], "ecg.lead_mask" [12],
    "echo.clip{i}" [N_i, H, W] with "echo.view_ids" [V], "cmr.cine" [T, Z, H, W],
    "ct.volume" [1, D, H, W]; only for the modalities the study has (and `modalities` asks for).
    """
    from mmcardio.datasets.readers import read_ecg, read_video, read_volume  # heavy imports

    have = wanted_modalities(study, modalities)
    out: dict[str, torch.Tensor] = {}
    if "ecg" in have:
        out.update({f"ecg.{k}": v for k, v in prepare_ecg(read_ecg(study.ecg), cfg.ecg).items()})
    if "echo" in have:
        views = [clip.view for clip in study.echo]
        keep = choose_views(views, cfg.echo.max_views)
        for i, clip_index in enumerate(keep):
            out[f"echo.clip{i}"] = prepare_echo(read_video(study.echo[clip_index].path), cfg.echo)
        out["echo.view_ids"] = torch.tensor([view_id(views[i]) for i in keep], dtype=torch.long)
    if "cmr" in have:
        out["cmr.cine"] = preprocess_cmr(read_volume(study.cmr, modality="cmr"), cfg.cmr)
    if "ct" in have:
        out["ct.volume"] = preprocess_ct(read_volume(study.ct, modality="ct"), cfg.ct)
    return out


def sample_study(prepared: dict[str, torch.Tensor], cfg: PreprocessConfig,
                 rng: np.random.Generator | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Model inputs per modality from a prepared study: center windows, or with `rng` random
    windows and the training augmentations (shifts, CMR phase roll)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    if "ecg.signal" in prepared:
        out["ecg"] = sample_ecg({"signal": prepared["ecg.signal"], "lead_mask": prepared["ecg.lead_mask"]},
                                cfg.ecg, rng)
    if "echo.view_ids" in prepared:
        view_ids = prepared["echo.view_ids"]
        clips = [prepared[f"echo.clip{i}"] for i in range(len(view_ids))]
        out["echo"] = sample_echo(clips, view_ids, cfg.echo, rng)
    if "cmr.cine" in prepared:
        out["cmr"] = {"cine": sample_cmr(prepared["cmr.cine"], cfg.cmr, rng)}
    if "ct.volume" in prepared:
        out["ct"] = {"volume": random_shift(prepared["ct.volume"], cfg.ct.max_shift_vox, rng)}
    return out


def preprocess_study(study: Study, cfg: PreprocessConfig | dict, rng: np.random.Generator | None = None,
                     modalities: Iterable[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Model inputs per modality for one study (unbatched), e.g. ecg: {signal [12, S],
    lead_mask [12]}; echo: {frames [V, T, H, W], view_ids [V], view_mask [V]}; cmr: {cine};
    ct: {volume}. `cfg` is a `PreprocessConfig` or its dict (a model's config.preprocess).
    modalities: those to read (default: those `cfg` gives model sizes for, i.e. the model's)."""
    cfg = as_preprocess(cfg)
    modalities = cfg.sized_modalities() if modalities is None else list(map(str, modalities))
    cfg.require(wanted_modalities(study, modalities), study.study_id)
    return sample_study(prepare_study(study, cfg, modalities), cfg, rng)


# ----------------------------------------------------------------------------------- cache

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
            return {k: fh.get_tensor(k) for k in fh.keys() if wanted is None or k.startswith(wanted)}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise MMCardioError(f"cannot read JSON: {err}", path) from None


def wanted_modalities(study: Study, modalities: Iterable[str] | None = None) -> list[str]:
    """The study's modalities, restricted to `modalities` when given."""
    allowed = None if modalities is None else set(map(str, modalities))
    return [str(m) for m in study.modalities() if allowed is None or str(m) in allowed]


class _PrepareJobs(Dataset):
    """Decodes and writes one study per item, so a DataLoader's workers run them in parallel."""

    def __init__(self, jobs: list[tuple[Study, list[str]]], folder: Path, cfg: PreprocessConfig):
        self.jobs, self.folder, self.cfg = jobs, folder, cfg

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> tuple[str, dict]:
        study, modalities = self.jobs[i]
        fingerprint = source_fingerprint(study)
        try:
            tensors = prepare_study(study, self.cfg, modalities)
        except Exception as err:  # one bad study must not stop the cohort; it is listed in the index
            problem = str(err) if isinstance(err, MMCardioError) else f"{type(err).__name__}: {err}"
            return study.study_id, {"error": problem, "sources": fingerprint}
        name = f"{CACHE_STUDIES}/{cache_file_name(study.study_id)}"
        with atomic_path(self.folder / name) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"study_id": study.study_id})
        modalities = sorted({k.split(".", 1)[0] for k in tensors}, key=MODALITY_NAMES.index)
        return study.study_id, {"file": name, "modalities": modalities, "sources": fingerprint}


def _identity(item: Any) -> Any:
    return item


def prepare_cache(manifest: str | Path | Sequence[Study], out: str | Path, cfg: PreprocessConfig | dict,
                  progress: bool = True, num_workers: int = 0, modalities: Iterable[str] | None = None) -> dict:
    """Decode every study once into `out` (one .safetensors per study, `preprocess.json`,
    `index.json`). Studies already cached with unchanged files are kept, so re-running on a
    grown manifest only processes the new ones. A study whose files fail to decode is listed
    under "failed" (with the reader's message) instead of stopping the run. `modalities`
    limits what is decoded (e.g. ["ecg"] for the MAE stage); a later run asking for more adds
    them. `num_workers` processes decode in parallel.

    Returns {"cache", "studies", "prepared", "reused", "failed": {study_id: problem}, "seconds"};
    studies with none of `modalities` are neither prepared nor reused.
    """
    start = time.perf_counter()
    cfg = as_preprocess(cfg)
    studies = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    cfg.require(sorted({m for s in studies for m in wanted_modalities(s, modalities)}, key=MODALITY_NAMES.index))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / CACHE_CONFIG).is_file():
        StudyCache(folder, cfg, modalities)  # refuses a folder made with another config
    else:
        write_json(folder / CACHE_CONFIG, cfg.to_dict())
    index = _read_json(folder / CACHE_INDEX) if (folder / CACHE_INDEX).is_file() else {}
    entries: dict[str, dict] = index.get("studies", {})
    todo, n_wanted = [], 0
    for study in studies:
        entry, wanted = entries.get(study.study_id), wanted_modalities(study, modalities)
        n_wanted += bool(wanted)
        if wanted and not _still_valid(entry, study, folder, wanted):
            todo.append((study, sorted(set(wanted) | set((entry or {}).get("modalities", [])))))
    failed: dict[str, dict] = {}
    loader = DataLoader(_PrepareJobs(todo, folder, cfg), batch_size=None, num_workers=num_workers,
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
        if done % 200 == 0:  # a crash loses at most 200 index lines (their files are redone)
            write_json(folder / CACHE_INDEX, {"studies": entries, "failed": failed})
    write_json(folder / CACHE_INDEX, {"studies": entries, "failed": failed})
    return {"cache": str(folder), "studies": len(studies), "prepared": len(todo) - len(failed),
            "reused": n_wanted - len(todo), "failed": {k: v["error"] for k, v in failed.items()},
            "seconds": round(time.perf_counter() - start, 3)}


def _still_valid(entry: dict | None, study: Study, folder: Path, modalities: list[str]) -> bool:
    return bool(entry) and set(modalities) <= set(entry["modalities"]) \
        and (folder / entry["file"]).is_file() and entry["sources"] == source_fingerprint(study)


# --------------------------------------------------------------------------------- dataset

class StudyDataset(Dataset):
    """Studies as model inputs: items {study_id, text (the report), <modality>: {tensors,
    "report": that modality's exam report (the whole report when the study has none)}}.

    studies: Study records (e.g. `read_manifest(...)`). cfg: the preprocess config (or dict).
    cache_dir: a folder from `prepare_cache` made with the same config (else files are decoded
        on every access). split: keep only studies of this split (or these splits).
    train: random windows (ECG crop, echo clip start) when the key carries a seed.
    sample_sentences: in training with a seed, each report is a random subset of its sentences
        (of their clauses with `text_unit="clause"`, see `sentences.sample_sentences`).
    report_views: with sample_sentences, items also carry "text_view", a second independent
        subset of the report's sentences (for the model's `report_views` loss term).
    translations: in training with a seed, each item's reports (and apart from them its
        text_view) are in a language drawn uniformly from the study's report language and its
        `translations`, so every study teaches the text tower each language it has.
    view_translations: the same draw for the text_view alone; the reports aligned with the
        study towers stay in the study's own language.
    modalities: load only these (e.g. ["ecg"] for the ECG MAE stage); studies with none of
        them are left out.

    A key is an index (center windows) or an (index, seed) pair as `ModalityBalancedSampler`
    yields, so random windows are reproducible and independent of DataLoader workers.
    """

    def __init__(self, studies: Sequence[Study], cfg: PreprocessConfig | dict,
                 cache_dir: str | Path | None = None, split: str | Sequence[str] | None = None,
                 train: bool = True, modalities: Sequence[str] | None = None,
                 sample_sentences: bool = False, report_views: bool = False, text_unit: str = "sentence",
                 translations: bool = False, view_translations: bool = False):
        self.cfg = as_preprocess(cfg)
        self.sample_sentences, self.report_views = sample_sentences, report_views
        self.translations, self.view_translations = translations, view_translations
        if text_unit not in UNITS:
            raise ConfigError(f"expected one of {UNITS}, got {text_unit!r}", field="text_unit")
        self.text_unit = text_unit
        if report_views and not sample_sentences:
            raise ConfigError("report_views needs sample_sentences: the two views of a report are "
                              "two random subsets of its sentences", field="sample_sentences")
        self.modalities = list(MODALITY_NAMES if modalities is None else map(str, modalities))
        splits = {split} if isinstance(split, str) else set(split) if split is not None else None
        self.studies = [s for s in studies if (splits is None or s.split in splits)
                        and wanted_modalities(s, self.modalities)]
        self.cfg.require(sorted({m for mods in self.study_modalities() for m in mods}, key=MODALITY_NAMES.index))
        self.train = train
        self.cache = StudyCache(cache_dir, self.cfg, self.modalities) if cache_dir is not None else None
        if self.cache is not None:
            missing = self.cache.missing(self.studies, self.modalities)
            if missing:
                raise MMCardioError(f"{len(missing)} studies are not in the cache with all of their "
                                    f"{self.modalities} (e.g. {missing[:3]}); run `mmcardio prepare` "
                                    "with this manifest", cache_dir)

    def study_modalities(self) -> list[list[str]]:
        """The loaded modalities of every study, in dataset order (for the sampler)."""
        return [wanted_modalities(s, self.modalities) for s in self.studies]

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), None)
        study = self.studies[index]
        if self.cache is not None:
            prepared = self.cache.load(study.study_id, self.modalities)
        else:
            prepared = prepare_study(study, self.cfg, self.modalities)
        rng = np.random.default_rng(seed) if self.train and seed is not None else None
        text_rng = np.random.default_rng([seed, 1]) if rng is not None else None  # apart from the windows' draws
        reported = self._in_drawn_language(study, text_rng, self.translations)
        item = {"study_id": study.study_id, "text": reported.report, **sample_study(prepared, self.cfg, rng)}
        modalities = [m for m in MODALITY_NAMES if m in item]
        texts = {m: reported.report_for(m) for m in modalities}
        if text_rng is not None and self.sample_sentences:
            shuffled = {t: sample_sentences(t, text_rng, unit=self.text_unit)
                        for t in dict.fromkeys([reported.report, *texts.values()])}
            item["text"], texts = shuffled[reported.report], {m: shuffled[t] for m, t in texts.items()}
            if self.report_views:
                viewed = self._in_drawn_language(study, text_rng, self.translations or self.view_translations)
                item["text_view"] = sample_sentences(viewed.report, text_rng, unit=self.text_unit)
        for m in modalities:
            item[m]["report"] = texts[m]
        return item

    @staticmethod
    def _in_drawn_language(study: Study, rng: np.random.Generator | None, draw: bool) -> Study:
        if rng is None or not draw or not study.translations:
            return study
        languages = study.languages()
        return study.in_language(languages[rng.integers(len(languages))])


def collate_studies(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items: study_id and text lists; per modality the present rows stacked with their
    `rows` (index into the batch) and `report` list. A modality no item has is an absent key.
    Echo studies with fewer clips than the batch's most are padded and masked in view_mask."""
    batch: dict[str, Any] = {"study_id": [it["study_id"] for it in items], "text": [it["text"] for it in items]}
    if all("text_view" in it for it in items):
        batch["text_view"] = [it["text_view"] for it in items]
    for modality in MODALITY_NAMES:
        rows = [i for i, it in enumerate(items) if modality in it]
        if not rows:
            continue
        parts = [{k: v for k, v in items[i][modality].items() if k != "report"} for i in rows]
        if modality == "echo":
            batch[modality] = _collate_echo(parts)
        else:
            batch[modality] = {k: torch.stack([p[k] for p in parts]) for k in parts[0]}
        batch[modality]["rows"] = torch.tensor(rows, dtype=torch.long)
        reports = [items[i][modality].get("report") for i in rows]
        if all(r is not None for r in reports):
            batch[modality]["report"] = reports
    return batch


def _collate_echo(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    n_views = max(len(p["view_ids"]) for p in parts)
    clip_shape = parts[0]["frames"].shape[1:]
    frames = torch.zeros(len(parts), n_views, *clip_shape)
    view_ids = torch.full((len(parts), n_views), ECHO_VIEWS.index("OTHER"), dtype=torch.long)
    view_mask = torch.zeros(len(parts), n_views, dtype=torch.bool)
    for i, p in enumerate(parts):
        k = len(p["view_ids"])
        frames[i, :k], view_ids[i, :k], view_mask[i, :k] = p["frames"], p["view_ids"], p["view_mask"]
    return {"frames": frames, "view_ids": view_ids, "view_mask": view_mask}


# --------------------------------------------------------------------------------- sampler

class ModalityBalancedSampler(Sampler):
    """Distributed, epoch-seeded sampler that oversamples studies of rare modalities (and,
    optionally, of rare report languages).

    Each epoch draws `num_samples * num_replicas` studies with replacement, study i with weight
    max over its modalities m of count(m) ** -balance (balance=1: every modality gets about
    the same share of draws, so each appears in most batches; 0: uniform), times
    count(language of its report) ** -language_balance when `report_langs` are given (1: each
    language's reports are drawn about equally often, so a text tower trained on a cohort with
    few Chinese reports still sees them in every batch), from a generator
    seeded by (seed, epoch); rank r takes draws r, r + R, ... Every rank computes the same
    draws, so no communication is needed. It yields (index, seed) keys: the seed fixes the
    item's random windows. `set_epoch(epoch, start)` skips the first `start` keys of the
    rank's share (resuming mid-epoch without loading the skipped items).
    """

    def __init__(self, study_modalities: Sequence[Sequence[str]], num_replicas: int | None = None,
                 rank: int | None = None, seed: int = 0, balance: float = 1.0,
                 samples_per_epoch: int | None = None, report_langs: Sequence[str] | None = None,
                 language_balance: float = 0.0):
        dist = torch.distributed
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        if not study_modalities or not all(study_modalities):
            raise ValueError("every study needs at least one modality to be sampled")
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        counts = Counter(m for mods in study_modalities for m in mods)
        self.weights = torch.tensor([max(counts[m] ** -balance for m in mods) for mods in study_modalities],
                                    dtype=torch.float64)
        if report_langs is not None:
            if len(report_langs) != len(study_modalities):
                raise ValueError(f"{len(report_langs)} report languages for {len(study_modalities)} studies")
            per_lang = Counter(report_langs)
            self.weights *= torch.tensor([per_lang[lang] ** -language_balance for lang in report_langs],
                                         dtype=torch.float64)
        total = samples_per_epoch or len(study_modalities)
        self.num_samples = math.ceil(total / num_replicas)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _draws(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.num_samples * self.num_replicas
        indices = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        seeds = torch.randint(0, 2**31 - 1, (total,), generator=generator)
        return indices[self.rank::self.num_replicas], seeds[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, seeds = self._draws()
        return iter(list(zip(indices.tolist(), seeds.tolist()))[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler | None = None,
                num_workers: int = 0, seed: int = 0, drop_last: bool = True) -> DataLoader:
    """The DataLoader for study batches: worker processes (persistent across epochs), pinned
    memory only when CUDA is there, and its own generator so creating it never draws from the
    global RNG (which resumed runs restore)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_studies,
                      num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed))

