"""A run's data: the training studies, their decoded cache, this rank's loader, and the text
vocabulary learned from (or extended by) the training reports.

A study that fails to decode into the cache is left out of the run with its reason (never
replaced), under the run's `max_failed_fraction` (`mmcardio.failures`)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mmcardio.datasets.cache import CACHE_CONFIG, StudyCache, prepare_cache
from mmcardio.datasets.cohort import StudyDataset, make_loader
from mmcardio.datasets.preprocess_config import PreprocessConfig
from mmcardio.datasets.sampler import ModalityBalancedSampler
from mmcardio.datasets.text_views import TextViews
from mmcardio.errors import ConfigError, MMCardioError
from mmcardio.failures import log_failures
from mmcardio.io import atomic_path, write_json
from mmcardio.model_config import TOKENIZER_DIR
from mmcardio.processor import CardioProcessor
from mmcardio.sentences import report_sentences
from mmcardio.study import Study, read_manifest
from mmcardio.train.config import PretrainConfig

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """The studies, the cache and the per-rank loader of a run; `failed`: {study_id: reason}
    of the studies left out because they cannot be decoded."""

    studies: list[Study]
    cache_dir: Path
    preprocess: PreprocessConfig
    failed: dict[str, str]
    dataset: StudyDataset
    sampler: ModalityBalancedSampler
    loader: Any


def prepare_data(cfg: PretrainConfig, accelerator, model: nn.Module, manifest: str | Path,
                 cache_dir: Path, out: Path, progress: bool) -> RunData:
    """Prepare missing studies into the cache (main process), then open this rank's loader.
    Studies that fail to decode are left out (each logged with its reason); when more than
    `cfg.max_failed_fraction` of the run's studies fail, every rank stops with the list."""
    modalities = ["ecg"] if cfg.stage == "mae" else list(model.modalities)
    preprocess = PreprocessConfig.from_dict(model.config.preprocess)
    processor = CardioProcessor(preprocess, modalities)
    studies = read_manifest(manifest)
    if (cache_dir / CACHE_CONFIG).is_file():
        StudyCache(cache_dir, preprocess, modalities)  # every rank refuses a foreign cache, none waits
    if accelerator.is_main_process:
        eval_studies = [s for s in studies if s.split in cfg.eval_splits] if cfg.stage == "mae" else []
        used = _studies_for_run(cfg, studies, modalities) + eval_studies
        write_json(out / "prepare.json", prepare_cache(used, cache_dir, processor, progress=progress,
                                                       num_workers=cfg.num_workers))
    accelerator.wait_for_everyone()
    prepared = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
    failed = dict(sorted(prepared["failed"].items()))
    if accelerator.is_main_process:
        log_failures(failed, "prepare")
    # every study the run reads: decoded now, reused from the cache, or failed
    cfg.failure_policy.check(failed, prepared["prepared"] + prepared["reused"] + len(failed), manifest)
    train_studies = [s for s in _studies_for_run(cfg, studies, modalities) if s.study_id not in failed]
    dataset = _training_dataset(cfg, model, train_studies, processor, cache_dir)
    sampler = _rank_sampler(cfg, accelerator, dataset)
    if sampler.num_samples < cfg.batch_size:
        raise ConfigError(f"each of {accelerator.num_processes} processes gets {sampler.num_samples} "
                          f"studies per epoch, fewer than batch_size {cfg.batch_size}", field="batch_size")
    loader = make_loader(dataset, cfg.batch_size, sampler, cfg.num_workers, cfg.seed)
    return RunData(studies, cache_dir, preprocess, failed, dataset, sampler, loader)


def _training_dataset(cfg: PretrainConfig, model: nn.Module, studies: list[Study], processor: CardioProcessor,
                      cache_dir: Path) -> StudyDataset:
    text_views = TextViews(sample_sentences=cfg.sample_sentences, text_unit=cfg.text_unit,
                           translations=cfg.train_on_translations, view_translations=cfg.translation_views,
                           report_views=cfg.stage == "align" and model.config.report_views)
    return StudyDataset(studies, processor, cache_dir=cache_dir, train=True, text_views=text_views)


def _rank_sampler(cfg: PretrainConfig, accelerator, dataset: StudyDataset) -> ModalityBalancedSampler:
    """This rank's shard of the training studies, rare modalities and languages oversampled."""
    return ModalityBalancedSampler(dataset.study_modalities(), num_replicas=accelerator.num_processes,
                                   rank=accelerator.process_index, seed=cfg.seed,
                                   balance=cfg.balance_modalities, samples_per_epoch=cfg.samples_per_epoch,
                                   report_langs=[s.report_lang for s in dataset.studies],
                                   language_balance=cfg.balance_languages)


def _studies_for_run(cfg: PretrainConfig, studies: list[Study], modalities: list[str]) -> list[Study]:
    keep = [s for s in studies if s.split in cfg.train_splits
            and any(str(m) in modalities for m in s.modalities())]
    if cfg.stage == "align":
        keep = [s for s in keep if s.report.strip()]  # the text is the anchor: no report, no pair
    if not keep:
        raise MMCardioError(f"no {'/'.join(cfg.train_splits)} study has {modalities}"
                            + (" and a report" if cfg.stage == "align" else ""), field="split")
    return keep


def training_reports(cfg: PretrainConfig, manifest: str | Path) -> list[str]:
    """Whole and exam reports of the training studies (in every language with
    `train_on_translations` or `translation_views`)."""
    studies = [s for s in read_manifest(manifest) if s.split in cfg.train_splits]
    if cfg.train_on_translations or cfg.translation_views:
        studies = [s.in_language(lang) for s in studies for lang in s.languages()]
    return [t for s in studies for t in (s.report, *s.reports.values()) if t]


def training_sentences(cfg: PretrainConfig, manifest: str | Path) -> list[str]:
    """The distinct sentences of the training reports, sorted (the same on every run)."""
    return sorted({s for t in training_reports(cfg, manifest) for s in report_sentences(t)})


def fit_text_tokenizer(accelerator, model: nn.Module, cfg: PretrainConfig, manifest: str | Path,
                       out: Path) -> None:
    """A scratch text tower's vocabulary: the tokenizer of `init_from` when it has one (its
    weights were trained with it), else learned from the training reports on the main process
    and saved to OUT/tokenizer, which every rank (and a resumed run) then loads."""
    inherited = Path(cfg.init_from) / TOKENIZER_DIR if cfg.init_from else None
    if inherited is not None and (inherited / "tokenizer.json").is_file():
        model.text.load_tokenizer(inherited)
        return
    source = out / TOKENIZER_DIR
    if accelerator.is_main_process and not (source / "tokenizer.json").is_file():
        size = model.text.fit_tokenizer(training_reports(cfg, manifest))
        with atomic_path(source) as tmp:
            model.text.save_tokenizer(tmp)
        log.info("text vocabulary: %d WordPiece tokens learned from the training reports", size)
    accelerator.wait_for_everyone()  # on every rank, whoever wrote the folder
    model.text.load_tokenizer(source)


def extend_text_vocabulary(model: nn.Module, cfg: PretrainConfig, manifest: str | Path) -> None:
    """Give the text tower tokens for the training reports' words it reads only as [UNK]
    (deterministic, so every rank and a resumed run build the same vocabulary)."""
    added = model.text.extend_vocabulary(training_reports(cfg, manifest))
    if added:
        log.info("text vocabulary: %d new tokens from the training reports (e.g. %s)",
                 len(added), " ".join(added[:10]))
