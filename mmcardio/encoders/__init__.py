"""Modality encoders (towers) and the registry of their JSON configs."""

from mmcardio.encoders.registry import (
    CONFIG_DIR,
    ENCODERS,
    config_path,
    create_encoder,
    encoder_config,
    get_config,
    list_configs,
)

__all__ = [
    "CONFIG_DIR",
    "ENCODERS",
    "config_path",
    "create_encoder",
    "encoder_config",
    "get_config",
    "list_configs",
]
