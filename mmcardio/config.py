"""Dataclass configs with YAML/JSON in and out.

`load_config(path, Cls)` refuses unknown keys and wrong types with an error that names the
file and the field, so a typo in a run config fails at start, not after an hour of training.
`parse_overrides` and `deep_merge` layer command-line `--set key=value` items over a file.
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmcardio.errors import ConfigError
from mmcardio.io import write_text

T = TypeVar("T")

#: A float in exponent form, with or without a dot ("1e-3", "1.0e3"): YAML 1.2 reads it as a
#: float, YAML 1.1 (which PyYAML implements) as a string unless it has a dot and a signed exponent.
EXPONENT_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader that reads exponent floats as floats."""


class _YamlDumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes strings `_YamlLoader` would read as floats."""


for _cls in (_YamlLoader, _YamlDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+.0123456789"))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_YamlDumper, sort_keys=False)


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
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", source, name)
        return float(value)
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
        data = json.loads(text) if path.suffix == ".json" else load_yaml(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}", path)
    return data or {}


def load_config(path: str | Path, cls: type[T], overrides: dict | None = None) -> T:
    data = read_mapping(path)
    data.update(overrides or {})
    return from_dict(cls, data, str(path))


def load_run_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """A run config from YAML/JSON (or the defaults), `--set key=value` items on top."""
    data = read_mapping(path) if path else {}
    return from_dict(cls, deep_merge(data, parse_overrides(overrides)), str(path or "<defaults>"))


def check_fields(obj: Any, checks: Sequence[tuple[str, bool, str]]) -> None:
    """Refuse the first (field, ok, what was expected) check that fails, naming the field and its value."""
    for name, ok, problem in checks:
        if not ok:
            raise ConfigError(f"{problem}, got {getattr(obj, name)!r}", field=name)


def save_config(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    data = to_dict(obj)
    return write_text(path, json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else dump_yaml(data))


def parse_overrides(items: Sequence[str]) -> dict:
    """["a.b=1", "c=[1, 2]"] -> {"a": {"b": 1}, "c": [1, 2]} (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {item!r}", field="--set")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = load_yaml(value)
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    """`base` updated by `extra`, recursing into nested mappings (inputs unchanged)."""
    merged = dict(base)
    for key, value in extra.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if nested else value
    return merged
