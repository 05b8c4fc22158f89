"""Studies as torch data: the dataset of model inputs, the collate function and the DataLoader.

`StudyDataset` reads each study through a `CardioProcessor` (from a cache made by
`prepare_cache`, or decoding its files) and draws its report texts by a `TextViews` policy;
`ModalityBalancedSampler` (sampler.py) picks the keys in training. `SkipUnreadable` and
`collate_readable` let a pass over a cohort (embedding) go on past a study that cannot be
read: it is reported with its reason, never replaced.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mmcardio.datasets.cache import StudyCache
from mmcardio.datasets.text_views import TextViews
from mmcardio.errors import MMCardioError
from mmcardio.failures import failure_reason
from mmcardio.modality import ECHO_VIEWS
from mmcardio.processor import MODALITY_NAMES, CardioProcessor, wanted_modalities
from mmcardio.study import Study


class StudyDataset(Dataset):
    """Studies as model inputs: items {study_id, text (the report), <modality>: {tensors,
    "report": that modality's exam report (the whole report when the study has none)}} and,
    with `text_views.report_views`, "text_view".

    studies: Study records (e.g. `read_manifest(...)`); those with none of the processor's
        modalities are left out. processor: reads the studies (its preprocessing, for its
        modalities: e.g. only "ecg" for the ECG MAE stage).
    cache_dir: a folder from `prepare_cache` made with the same preprocessing (else files are
        decoded on every access). split: keep only studies of this split (or these splits).
    train: random windows (ECG crop, echo clip start) and report texts drawn by `text_views`
        (default: the study's reports as they are) when the key carries a seed.

    A key is an index (center windows) or an (index, seed) pair as `ModalityBalancedSampler`
    yields, so random windows are reproducible and independent of DataLoader workers.
    """

    def __init__(self, studies: Sequence[Study], processor: CardioProcessor,
                 cache_dir: str | Path | None = None, split: str | Sequence[str] | None = None,
                 train: bool = True, text_views: TextViews | None = None):
        self.processor, self.train, self.text_views = processor, train, text_views or TextViews()
        self.modalities = processor.modalities
        splits = {split} if isinstance(split, str) else set(split) if split is not None else None
        self.studies = [s for s in studies if (splits is None or s.split in splits)
                        and wanted_modalities(s, self.modalities)]
        self.cache = StudyCache(cache_dir, processor.preprocess, self.modalities) if cache_dir is not None else None
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
            prepared = self.processor.prepare(study)
        rng = np.random.default_rng(seed) if self.train and seed is not None else None
        text_rng = np.random.default_rng([seed, 1]) if rng is not None else None  # apart from the windows' draws
        inputs = self.processor.sample(prepared, rng)
        text, exams, view = self.text_views.draw(study, [m for m in MODALITY_NAMES if m in inputs], text_rng)
        item = {"study_id": study.study_id, "text": text, **inputs}
        if view is not None:
            item["text_view"] = view
        for m, report in exams.items():
            item[m]["report"] = report
        return item


#: The key of an item `SkipUnreadable` gives for a study it cannot read.
READ_ERROR = "read_error"


class SkipUnreadable(Dataset):
    """A `StudyDataset` whose studies that cannot be read come out as {"study_id", READ_ERROR:
    the reason} instead of raising, in the process (or DataLoader worker) that reads them;
    batch with `collate_readable`."""

    def __init__(self, dataset: StudyDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        try:
            return self.dataset[key]
        except Exception as err:  # noqa: BLE001 - any failed read is reported with its reason, never fatal here
            index = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
            return {"study_id": self.dataset.studies[index].study_id, READ_ERROR: failure_reason(err)}


def collate_readable(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`collate_studies` of the items that were read, and "failed": {study_id: reason} of the
    others (the batch has no study when all failed)."""
    batch = collate_studies([it for it in items if READ_ERROR not in it])
    batch["failed"] = {it["study_id"]: it[READ_ERROR] for it in items if READ_ERROR in it}
    return batch


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


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler | None = None,
                num_workers: int = 0, seed: int = 0, drop_last: bool = True,
                collate_fn: Callable[[Sequence[dict[str, Any]]], dict[str, Any]] = collate_studies) -> DataLoader:
    """The DataLoader for study batches: worker processes (persistent across epochs), pinned
    memory only when CUDA is there, and its own generator so creating it never draws from the
    global RNG (which resumed runs restore). `collate_readable` with `SkipUnreadable`."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                      num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed))

