"""Embedding store, FAISS indexes and study retrieval by report text or by example study."""
from __future__ import annotations

import importlib
from typing import Any

from mmcardio.retrieval.keys import KINDS, STORE_KEYS

_LAZY = {"Hit": "index", "Index": "index", "IndexParams": "index", "Retriever": "index",
         "build_index": "index", "EmbeddingStore": "store", "embed_manifest": "store",
         "model_fingerprint": "store"}

__all__ = ["KINDS", "STORE_KEYS", "EmbeddingStore", "Hit", "Index", "IndexParams", "Retriever",
           "build_index", "embed_manifest", "model_fingerprint"]


def __getattr__(name: str) -> Any:
    # Lazy: the command-line parsers import this package for its names; torch and FAISS load
    # only when a command runs.
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
