"""Registry of JSON encoder and model configs (open_clip's `model_configs/` idea).

`encoders/configs/<name>.json` holds either one tower's settings (`ecg-tiny`, `text-base`,
...) or a whole CardioCLIP (`cardioclip-tiny`, ...) that names a tower config per modality.
Wherever a name is accepted, a path to the user's own JSON file works too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from mmcardio.config import from_dict, read_mapping
from mmcardio.encoders.cmr import CMREncoder, CMREncoderConfig
from mmcardio.encoders.ct import CTEncoder, CTEncoderConfig
from mmcardio.encoders.ecg import ECGEncoder, ECGEncoderConfig
from mmcardio.encoders.echo import EchoEncoder, EchoEncoderConfig
from mmcardio.encoders.text import TextEncoder, TextEncoderConfig
from mmcardio.errors import ConfigError
from mmcardio.modality import Modality

CONFIG_DIR = Path(__file__).with_name("configs")

#: modality -> (encoder class, its config dataclass)
ENCODERS = MappingProxyType(
    {
        Modality.ECG: (ECGEncoder, ECGEncoderConfig),
        Modality.ECHO: (EchoEncoder, EchoEncoderConfig),
        Modality.CMR: (CMREncoder, CMREncoderConfig),
        Modality.CT: (CTEncoder, CTEncoderConfig),
        Modality.TEXT: (TextEncoder, TextEncoderConfig),
    }
)


def list_configs() -> list[str]:
    """Names of the built-in configs (encoder and model)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def config_path(name_or_path: str | Path) -> Path:
    """The JSON file for a built-in name or a user path."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ConfigError("config file does not exist", path)
        return path
    builtin = CONFIG_DIR / f"{name_or_path}.json"
    if not builtin.is_file():
        raise ConfigError(
            f"unknown config {str(name_or_path)!r}; built-in configs: "
            f"{', '.join(list_configs())} (or give a path to a .json file)"
        )
    return builtin


def get_config(name_or_path: str | Path) -> dict[str, Any]:
    """A fresh copy of a config's dict, by built-in name or JSON path."""
    return copy.deepcopy(read_mapping(config_path(name_or_path)))


def encoder_config(
    modality: str, spec: str | Path | dict, source: str = "<dict>", prefix: str = ""
):
    """The config dataclass of a `modality` tower from a name, a path or a dict.

    Unknown keys raise ConfigError naming the source and the key.
    """
    _, config_cls = _classes(modality, source, prefix)
    if not isinstance(spec, dict):
        source, spec = str(config_path(spec)), get_config(spec)
    try:
        return from_dict(config_cls, spec, source, prefix)
    except ConfigError as err:
        if err.path:
            raise
        # Raised in the dataclass's own checks, which do not know the file or the prefix.
        field = f"{prefix}{err.field}" if err.field else prefix.rstrip(".") or None
        raise ConfigError(err.problem, source, field) from None


def create_encoder(modality: str, config: str | Path | dict | Any, **kwargs) -> nn.Module:
    """Build a `modality` tower from a config dataclass, a dict, a built-in name or a JSON path."""
    encoder_cls, config_cls = _classes(modality)
    if not isinstance(config, config_cls):
        config = encoder_config(modality, config)
    return encoder_cls(config, **kwargs)


def _classes(modality: str, source: str = "<dict>", prefix: str = "") -> tuple[type, type]:
    try:
        return ENCODERS[Modality(modality)]
    except ValueError:
        raise ConfigError(
            f"unknown modality {modality!r}; expected one of {[str(m) for m in ENCODERS]}",
            source,
            prefix.rstrip(".") or None,
        ) from None
