"""Embedding store: every study's modality and fused embeddings and its report embedding.

A store is a folder:
    vectors.npy    float32 [N, D], L2-normalised rows
    meta.parquet   N rows: study_id, patient_id, modality ("ecg"/"echo"/"cmr"/"ct"/"study"/
                   "text"), view, split, report, report_lang, age, sex, labels (JSON),
                   measurements (JSON {name: value})
    model.json     which model made the vectors: sha256 of config.json and model.safetensors,
                   their combined fingerprint, the model folder and the embedding size
    skipped.json   {study_id: reason} of the studies that could not be read when last tried
                   (they hold no vector)
Re-embedding a grown manifest appends only studies whose study_id is not stored yet (skipped
studies are tried again: once their files are fixed, they are embedded and leave
skipped.json). Every write replaces the whole folder atomically, so a crash never leaves
vectors and metadata out of step.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from mmcardio.errors import MMCardioError
from mmcardio.failures import DEFAULT_MAX_FAILED_FRACTION, FailurePolicy, log_failures
from mmcardio.io import atomic_path
from mmcardio.retrieval.keys import STORE_KEYS
from mmcardio.study import Study, read_manifest

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.json"
META_COLUMNS = ("study_id", "patient_id", "modality", "view", "split", "report", "report_lang",
                "age", "sex", "labels", "measurements")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(model_folder: str | Path, ecg_leads: Sequence[str] | None = None) -> dict[str, Any]:
    """sha256 of the folder's config.json and model.safetensors, and their combination (with
    the ECG lead subset the model is given, when one is: its embeddings are another model's)."""
    folder = Path(model_folder)
    files = {name: folder / name for name in ("config.json", "model.safetensors")}
    for name, path in files.items():
        if not path.is_file():
            raise MMCardioError(f"not a CardioCLIP model folder: {name} is missing", folder)
    config_sha, weights_sha = _sha256(files["config.json"]), _sha256(files["model.safetensors"])
    subset = "" if ecg_leads is None else ":ecg_leads=" + ",".join(ecg_leads)
    combined = hashlib.sha256(f"{config_sha}:{weights_sha}{subset}".encode()).hexdigest()
    return {"fingerprint": combined, "config_sha256": config_sha, "weights_sha256": weights_sha,
            "model_path": str(folder.resolve()), **({"ecg_leads": list(ecg_leads)} if ecg_leads else {})}


def check_same_model(recorded: dict, actual: dict, what: str | Path) -> None:
    """Refuse to mix embeddings of two models; the error names both models."""
    if recorded["fingerprint"] != actual["fingerprint"]:
        raise MMCardioError(
            f"embeddings were made by model {recorded.get('model_path')} (fingerprint "
            f"{recorded['fingerprint'][:12]}) but model {actual.get('model_path')} has fingerprint "
            f"{actual['fingerprint'][:12]}; embeddings of different models cannot be mixed — "
            f"use a new output folder or the original model", what, "fingerprint")


@dataclass
class EmbeddingStore:
    """Vectors [N, D] with one metadata row each, the fingerprint of the model, and the
    studies that could not be read ({study_id: reason}; they have no rows)."""

    vectors: np.ndarray
    meta: pd.DataFrame
    model: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path) -> EmbeddingStore:
        folder = Path(folder)
        needed = [folder / n for n in ("vectors.npy", "meta.parquet", "model.json")]
        missing = [p.name for p in needed if not p.is_file()]
        if missing:
            raise MMCardioError(f"not an embedding store (missing {missing}); create one with "
                                "`mmcardio embed`", folder)
        try:
            vectors = np.load(needed[0], allow_pickle=False)  # an object array would unpickle code
        except ValueError as err:
            raise MMCardioError(f"not a float vector array: {err}", needed[0]) from None
        meta = pd.read_parquet(needed[1])
        if len(meta) != len(vectors):
            raise MMCardioError(f"{len(vectors)} vectors but {len(meta)} metadata rows", folder)
        skipped_file = folder / SKIPPED_FILE  # absent in stores made before it was recorded
        skipped = json.loads(skipped_file.read_text(encoding="utf-8")) if skipped_file.is_file() else {}
        return cls(vectors, meta, json.loads(needed[2].read_text(encoding="utf-8")), skipped)

    def save(self, folder: str | Path) -> Path:
        """Write the store folder atomically (replacing any previous one)."""
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            np.save(tmp / "vectors.npy", self.vectors.astype(np.float32))
            self.meta.to_parquet(tmp / "meta.parquet", index=False)
            (tmp / "model.json").write_text(json.dumps(self.model, indent=2) + "\n", encoding="utf-8")
            (tmp / SKIPPED_FILE).write_text(json.dumps(self.skipped, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
        return Path(folder)

    @property
    def keys(self) -> list[str]:
        present = set(self.meta["modality"])
        return [k for k in STORE_KEYS if k in present]

    def select(self, key: str, study_ids: Sequence[str] | None = None,
               split: str | None = None) -> tuple[np.ndarray, pd.DataFrame]:
        """Vectors and metadata of `key`, optionally for some studies or one split."""
        mask = self.meta["modality"] == key
        if study_ids is not None:
            mask &= self.meta["study_id"].isin(list(study_ids))
        if split is not None and split != "all":
            mask &= self.meta["split"] == split
        rows = np.flatnonzero(mask.to_numpy())
        return self.vectors[rows], self.meta.iloc[rows].reset_index(drop=True)

    def subset(self, study_ids: Sequence[str]) -> EmbeddingStore:
        """The rows of `study_ids` only (e.g. one manifest's studies in a shared store)."""
        rows = np.flatnonzero(self.meta["study_id"].isin(list(study_ids)).to_numpy())
        wanted = set(study_ids)
        return EmbeddingStore(self.vectors[rows], self.meta.iloc[rows].reset_index(drop=True), self.model,
                              {k: v for k, v in self.skipped.items() if k in wanted})

    def append(self, vectors: np.ndarray, meta: pd.DataFrame, skipped: dict[str, str] | None = None) -> EmbeddingStore:
        """The store with these rows added and `skipped` as its unreadable studies (default: as before)."""
        return EmbeddingStore(np.concatenate([self.vectors, vectors.astype(np.float32)]),
                              pd.concat([self.meta, meta], ignore_index=True), self.model,
                              self.skipped if skipped is None else skipped)


def labels_of(row: pd.Series | dict) -> dict[str, int]:
    """The labels dict of a metadata row."""
    return {k: int(v) for k, v in json.loads(row["labels"] or "{}").items()}


def labelled(vectors: np.ndarray, meta: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Rows stating finding `name`: their vectors, 0/1 labels and metadata."""
    labels = [labels_of(r).get(name) for _, r in meta.iterrows()]
    keep = np.array([v is not None for v in labels], dtype=bool)
    y = np.array([v for v in labels if v is not None], dtype=int)
    return vectors[keep], y, meta[keep].reset_index(drop=True)


def measurements_of(row: pd.Series | dict) -> dict[str, float]:
    return {k: float(v) for k, v in json.loads(row["measurements"] or "{}").items()}


def _meta_row(study: Study, key: str) -> dict[str, Any]:
    views = ";".join(c.view for c in study.echo) if key == "echo" else ""
    return {
        "study_id": study.study_id, "patient_id": study.patient_id, "modality": key,
        "view": views, "split": study.split,
        "report": study.report if key in ("study", "text") else study.report_for(key),  # its own exam's
        "report_lang": study.report_lang, "age": study.age, "sex": study.sex,
        "labels": json.dumps(study.labels),
        "measurements": json.dumps({k: m.value for k, m in study.measurements.items()}),
    }


def load_model(model_folder: str | Path, device: torch.device | str = "cpu"):
    """CardioCLIP from its folder, in eval mode on `device`."""
    from mmcardio.model import CardioCLIP  # heavy import, only when a model is needed

    return CardioCLIP.from_pretrained(model_folder).to(device).eval()


def _normalise(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.detach().float(), dim=-1).cpu().numpy()


@torch.inference_mode()
def embed_studies(model, studies: Sequence[Study], batch_size: int = 8, progress: bool = True,
                  num_workers: int = 0, cache: str | Path | None = None,
                  ecg_leads: Sequence[str] | None = None,
                  max_failures: int | None = None) -> tuple[np.ndarray, pd.DataFrame, dict[str, str]]:
    """Embed every modality, the fused study embedding and the report of each study, read by
    the model's `CardioProcessor` (its stored preprocessing, centred windows) and encoded by
    `model.encode_studies`. Studies held by `cache` (a `mmcardio prepare` folder, refused if
    made with other preprocessing) are read from it, the others decoded from their files.
    ecg_leads: give the ECG tower only these leads (a 12-lead model run as a 1-lead one).

    A study that cannot be read gets no vector and is returned in {study_id: reason} (third
    element); reading stops early once more than `max_failures` studies failed (the caller's
    `FailurePolicy` refuses the run then anyway)."""
    from torch.utils.data import ConcatDataset
    from tqdm import tqdm

    from mmcardio.datasets.cache import StudyCache
    from mmcardio.datasets.cohort import SkipUnreadable, StudyDataset, collate_readable, make_loader
    from mmcardio.processor import CardioProcessor

    by_id = {s.study_id: s for s in studies}
    processor = CardioProcessor.from_model(model, ecg_leads)
    modalities = processor.modalities
    to_decode = (set(StudyCache(cache, processor.preprocess, modalities).missing(studies, modalities))
                 if cache else {s.study_id for s in studies})
    parts = [StudyDataset([s for s in studies if (s.study_id in to_decode) == decode], processor, train=False,
                          cache_dir=None if decode else cache)
             for decode in (False, True)]
    readable = [SkipUnreadable(p) for p in parts if len(p)]
    if not readable:
        return np.zeros((0, 0), np.float32), pd.DataFrame(columns=list(META_COLUMNS)), {}
    loader = make_loader(ConcatDataset(readable), batch_size, num_workers=num_workers, drop_last=False,
                         collate_fn=collate_readable)
    vectors: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for batch in tqdm(loader, desc="embed", unit="batch", disable=not progress):
        failed |= batch.pop("failed")
        if max_failures is not None and len(failed) > max_failures:
            break
        if not batch["study_id"]:
            continue
        for key, ids, vecs in _batch_vectors(model, _to_device(batch, model.device)):
            vectors.append(vecs)
            rows += [_meta_row(by_id[i], key) for i in ids]
    if not vectors:
        return np.zeros((0, 0), np.float32), pd.DataFrame(columns=list(META_COLUMNS)), failed
    return np.concatenate(vectors), pd.DataFrame(rows, columns=list(META_COLUMNS)), failed


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _batch_vectors(model, batch: dict) -> list[tuple[str, list[str], np.ndarray]]:
    """(key, study_ids, vectors) for each modality, the fused study and the whole report."""
    ids = list(batch["study_id"])
    features, rows, _ = model.encode_studies(batch, len(ids))
    result = [(str(key), [ids[r] for r in rows[key].tolist()], _normalise(feats))
              for key, feats in features.items()]
    with_text = [i for i, t in enumerate(batch["text"]) if t]
    if with_text:
        text = model.encode_text([batch["text"][i] for i in with_text])
        result.append(("text", [ids[i] for i in with_text], _normalise(text)))
    return result


def launched_accelerator() -> Accelerator | None:
    """An Accelerator when the process was started by `accelerate launch` (or torchrun) with
    several processes, else None; CPU-only machines get gloo (`cpu=True`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def embed_manifest(model_folder: str | Path, manifest: str | Path, out_store: str | Path,
                   batch_size: int = 8, progress: bool = True,
                   accelerator: Accelerator | None = None, cache: str | Path | None = None,
                   ecg_leads: Sequence[str] | None = None,
                   max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION) -> dict[str, Any]:
    """Embed every study of `manifest` that `out_store` does not hold yet and save the store
    (reading prepared studies from `cache` when given, and giving the ECG tower only
    `ecg_leads` when given, see `embed_studies`).

    A study that cannot be read is logged with its reason, gets no vector and is recorded in
    the store's skipped.json and the summary's "skipped_studies" ({study_id: reason}); a later
    run tries it again. When more than `max_failed_fraction` of the manifest's studies cannot
    be read, nothing is written and an `MMCardioError` lists them.

    Under `accelerate launch` each rank embeds its shard of the new studies and the main
    process merges and writes; every rank returns the same summary.
    """
    start = time.perf_counter()
    policy = FailurePolicy(max_failed_fraction, "--max-failed-fraction {value}")
    out_store = Path(out_store)
    fingerprint = model_fingerprint(model_folder, ecg_leads)
    existing = EmbeddingStore.load(out_store) if out_store.exists() else None
    if existing is not None:
        check_same_model(existing.model, fingerprint, out_store)
    done = set(existing.meta["study_id"]) if existing is not None else set()
    studies = read_manifest(manifest)
    if not studies:
        raise MMCardioError("the manifest has no studies", manifest)
    new = [s for s in studies if s.study_id not in done]
    added, failed = 0, {}
    if new:
        # one process can stop reading as soon as the run is lost; ranks must all reach the gather
        limit = policy.allowed(len(studies)) if accelerator is None else None
        vectors, meta, failed = _embed_distributed(model_folder, new, batch_size, progress, accelerator, cache,
                                                   ecg_leads, limit)
        main = accelerator is None or accelerator.is_main_process
        if main:
            log_failures(failed, "embed")
        # the share of the whole manifest, on every rank; a single process stopped reading past the limit
        policy.check(failed, len(studies), manifest, read_all=limit is None)
        added = int(meta["study_id"].nunique())
        if main and added + len(failed) < len(new):
            log.warning("%d of %d new studies have no modality this model encodes; not stored",
                        len(new) - added - len(failed), len(new))
        if main:
            _save_new(out_store, existing, vectors, meta, failed, new, {**fingerprint, "dim": int(vectors.shape[-1])})
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if not out_store.exists():
        raise MMCardioError("no study of the manifest has a modality this model encodes"
                            + (" and can be read" if failed else ""), manifest)
    store = EmbeddingStore.load(out_store)
    return {"store": str(out_store), "model": fingerprint["model_path"],
            "fingerprint": fingerprint["fingerprint"], "new_studies": added,
            "studies": int(store.meta["study_id"].nunique()), "vectors": len(store.vectors),
            "per_key": {k: int((store.meta["modality"] == k).sum()) for k in store.keys},
            "skipped_studies": dict(sorted(failed.items())), "max_failed_fraction": max_failed_fraction,
            "seconds": round(time.perf_counter() - start, 3)}


def _save_new(out_store: Path, existing: EmbeddingStore | None, vectors: np.ndarray, meta: pd.DataFrame,
              failed: dict[str, str], tried: list[Study], model_info: dict[str, Any]) -> None:
    """The store with the new rows; its skipped studies are the ones that failed now, and
    those of other manifests (not tried now) as they were."""
    tried_ids = {s.study_id for s in tried}
    skipped = {**{k: v for k, v in (existing.skipped if existing else {}).items() if k not in tried_ids}, **failed}
    skipped = dict(sorted(skipped.items()))
    if len(meta):
        store = existing.append(vectors, meta, skipped) if existing else EmbeddingStore(vectors, meta, model_info,
                                                                                       skipped)
    elif existing is not None and existing.skipped != skipped:
        store = EmbeddingStore(existing.vectors, existing.meta, existing.model, skipped)
    else:
        return
    store.save(out_store)
    log.info("embedded %d new studies into %s", meta["study_id"].nunique(), out_store)


def _embed_distributed(model_folder: str | Path, studies: list[Study], batch_size: int,
                       progress: bool, accelerator: Accelerator | None, cache: str | Path | None,
                       ecg_leads: Sequence[str] | None = None, max_failures: int | None = None,
                       ) -> tuple[np.ndarray, pd.DataFrame, dict[str, str]]:
    """Embed `studies`; with several processes each embeds a shard and all shards (and their
    failures) are gathered."""
    if accelerator is None:
        return embed_studies(load_model(model_folder), studies, batch_size, progress, cache=cache,
                             ecg_leads=ecg_leads, max_failures=max_failures)
    from accelerate.utils import gather_object

    model = load_model(model_folder, accelerator.device)
    with accelerator.split_between_processes(studies) as shard:
        vectors, meta, failed = embed_studies(model, shard, batch_size,
                                              progress and accelerator.is_local_main_process, cache=cache,
                                              ecg_leads=ecg_leads)
    shards = gather_object([(vectors, meta, failed)])  # one (vectors, meta, failed) per rank, in rank order
    failed = {k: v for _, _, f in shards for k, v in f.items()}
    shards = [(v, m) for v, m, _ in shards if len(m)] or [shards[0][:2]]
    return (np.concatenate([v for v, _ in shards]), pd.concat([m for _, m in shards], ignore_index=True),
            failed)
