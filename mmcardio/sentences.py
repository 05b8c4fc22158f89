"""Report text: sentences, and the sentence sampling used as a training augmentation.

Kept apart from the image transforms so that commands which only handle text (retrieval
results) do not import MONAI.
"""
from __future__ import annotations

import re

import numpy as np

#: A sentence ends at . ! ? ; followed by a space (so "5.1 mV" stays whole), at their
#: full-width forms, and at line ends.
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])|\n+")


def report_sentences(text: str) -> list[str]:
    """The sentences of a report, in order, stripped; empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def sample_sentences(text: str, rng: np.random.Generator, keep: float = 0.5) -> str:
    """A random subset of the report's sentences (each kept with probability `keep`, at least
    one), in their order. Training augmentation: short queries and prompts name one or two
    findings, so the text tower must place a single sentence near the studies it describes,
    not only the whole report."""
    sentences = report_sentences(text)
    if len(sentences) <= 1:
        return text
    chosen = rng.random(len(sentences)) < keep
    if not chosen.any():
        chosen[rng.integers(len(sentences))] = True
    return " ".join(s for s, c in zip(sentences, chosen) if c)
