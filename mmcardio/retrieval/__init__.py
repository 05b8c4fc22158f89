"""Embedding store, FAISS indexes and study retrieval by report text or by example study.

Exported lazily: the command-line parsers import this package for its names (`keys`), and
torch and FAISS load only when a command runs."""
from __future__ import annotations

from mmcardio.lazy import lazy_getattr
from mmcardio.retrieval.keys import KINDS, STORE_KEYS

_EXPORTS = {
    **dict.fromkeys(("Hit", "Index", "IndexParams", "Retriever", "build_index"), "mmcardio.retrieval.index"),
    **dict.fromkeys(("EmbeddingStore", "embed_manifest", "model_fingerprint"), "mmcardio.retrieval.store"),
}
__all__ = ["KINDS", "STORE_KEYS"] + list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
