"""Dataclass configs with YAML/JSON in and out.

`load_config(path, Cls)` refuses unknown keys and wrong types with an error that names the
file and the field, so a typo in a run config fails at start, not after an hour of training.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmcardio.errors import ConfigError
from mmcardio.io import write_text

T = TypeVar("T")


def from_dict(cls: type[T], data: dict, source: str = "<dict>", prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclass fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", source, prefix or None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; expected some of {sorted(fields)}",
                          source, prefix.rstrip(".") or None)
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(hints[k], v, source, f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, source: str, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, source, name) if len(non_none) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, name + ".")
    if origin is dict and args and dataclasses.is_dataclass(args[1]):
        return {k: from_dict(args[1], v, source, f"{name}.{k}.") for k, v in value.items()}
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        return origin(value)
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"expected a number, got {value!r}", source, name) from None
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"expected {tp.__name__}, got {value!r}", source, name)
    return value


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def read_mapping(path: str | Path) -> dict:
    """Read a YAML or JSON file into a dict, naming the file on any error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file does not exist", path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}", path)
    return data or {}


def load_config(path: str | Path, cls: type[T], overrides: dict | None = None) -> T:
    data = read_mapping(path)
    data.update(overrides or {})
    return from_dict(cls, data, str(path))


def save_config(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    data = to_dict(obj)
    text = json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    return write_text(path, text)
