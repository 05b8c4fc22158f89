"""Datasets' "Key: value" info files (ACDC's Info.cfg, CAMUS's Info_2CH.cfg), read with the
standard library's configparser; errors name the file and the key."""
from __future__ import annotations

import configparser
from collections.abc import Mapping
from pathlib import Path

from mmcardio.errors import ReaderError


def read_info_cfg(path: Path) -> dict[str, str]:
    """A "Key: value" file per line (ACDC's Info.cfg, CAMUS's Info_2CH.cfg) as a dict."""
    if not path.is_file():
        raise ReaderError("expected the dataset's info file here", path)
    parser = configparser.ConfigParser(delimiters=(":",), interpolation=None)
    parser.optionxform = str  # keep the keys' case ("ED", "NbFrame")
    try:
        parser.read_string("[info]\n" + path.read_text(encoding="utf-8", errors="replace"))
    except configparser.Error as err:
        raise ReaderError(f"not a 'Key: value' info file ({err})", path) from None
    return dict(parser["info"])


def info_number(info: Mapping[str, str], key: str, path: Path) -> float:
    """A numeric field of an info file; an error names the file and the key."""
    if key not in info:
        raise ReaderError(f"missing; the file has {sorted(info)}", path, key)
    try:
        return float(info[key])
    except ValueError:
        raise ReaderError(f"expected a number, got {info[key]!r}", path, key) from None
