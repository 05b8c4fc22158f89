"""Names the command-line parsers offer as choices, apart from the modules that load torch and
FAISS (so `mmcardio --help` does not import either)."""

#: Keys a store can hold: the study modalities, the fused study embedding and the report text.
STORE_KEYS = ("ecg", "echo", "cmr", "ct", "study", "text")

#: FAISS index kinds: exact inner product, inverted lists, HNSW graph.
KINDS = ("flat", "ivf", "hnsw")
