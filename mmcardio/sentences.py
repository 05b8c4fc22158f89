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
#: A clause ends at a comma or colon followed by a space, or at their full-width forms
#: (the punctuation stays with the clause before it).
_CLAUSE_END = re.compile(r"(?<=[,:])\s+|(?<=[，：])")
UNITS = ("sentence", "clause")


def report_sentences(text: str) -> list[str]:
    """The sentences of a report, in order, stripped; empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def report_clauses(text: str) -> list[str]:
    """The clauses of a report's sentences, in order ("Sinus rhythm," "rate 63 bpm.")."""
    return [c.strip() for s in report_sentences(text) for c in _CLAUSE_END.split(s) if c.strip()]


def sample_sentences(text: str, rng: np.random.Generator, keep: float = 0.5,
                     unit: str = "sentence") -> str:
    """A random subset of the report's sentences, or with `unit="clause"` of their clauses
    (each kept with probability `keep`, at least one), in their order. Training augmentation:
    short queries and prompts name one or two findings, often in a few words of a longer
    sentence ("PR interval prolonged"), so the text tower must place a single sentence or
    clause near the studies it describes, not only the whole report."""
    pieces = report_clauses(text) if unit == "clause" else report_sentences(text)
    if len(pieces) <= 1:
        return text
    chosen = rng.random(len(pieces)) < keep
    if not chosen.any():
        chosen[rng.integers(len(pieces))] = True
    return " ".join(s for s, c in zip(pieces, chosen) if c)
