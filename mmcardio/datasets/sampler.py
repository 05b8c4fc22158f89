"""The training sampler: distributed, epoch-seeded and balanced over modalities (and report
languages), yielding the (index, seed) keys `StudyDataset` takes."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


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

    def __init__(self, study_modalities: Sequence[Sequence[str]], *, num_replicas: int | None = None,
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
