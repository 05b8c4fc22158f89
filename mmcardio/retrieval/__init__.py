"""Embedding store, FAISS indexes and study retrieval by report text or by example study."""
from mmcardio.retrieval.index import KINDS, Hit, Index, IndexParams, Retriever, build_index
from mmcardio.retrieval.store import EmbeddingStore, embed_manifest, model_fingerprint

__all__ = ["KINDS", "EmbeddingStore", "Hit", "Index", "IndexParams", "Retriever", "build_index",
           "embed_manifest", "model_fingerprint"]
