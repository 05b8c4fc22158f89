"""mmcardio: cardiology multimodal foundation models.

The main API is imported lazily, so `import mmcardio` (and the CLI's start-up) does not pull
in torch, transformers and open_clip until they are used.
"""
from __future__ import annotations

from mmcardio.lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "CardioCLIP": "mmcardio.model", "CardioCLIPConfig": "mmcardio.model_config",
    "create_model": "mmcardio.model", "CardioProcessor": "mmcardio.processor",
    "CardioCLIPLoss": "mmcardio.losses",
    "list_configs": "mmcardio.encoders", "get_config": "mmcardio.encoders",
    "Study": "mmcardio.study", "read_manifest": "mmcardio.study", "write_manifest": "mmcardio.study",
    "read": "mmcardio.datasets.readers", "read_ecg": "mmcardio.datasets.readers",
    "read_video": "mmcardio.datasets.readers", "read_volume": "mmcardio.datasets.readers",
    "Retriever": "mmcardio.retrieval.index",
}
__all__ = ["__version__"] + list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
