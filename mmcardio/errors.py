"""Errors that name the file, the field and what was expected.

Every failure a user can cause (a bad file, a bad manifest row, a bad config key) raises a
subclass of `MMCardioError`; the CLI prints its message and exits 2 instead of a traceback.
"""
from __future__ import annotations

from pathlib import Path


class MMCardioError(Exception):
    """A user-facing error: `path` and `field` locate the problem, `problem` says what is wrong."""

    def __init__(self, problem: str, path: str | Path | None = None, field: str | None = None):
        self.problem = problem
        self.path = str(path) if path is not None else None
        self.field = field
        where = ", ".join(x for x in (self.path, f"field {field!r}" if field else None) if x)
        super().__init__(f"{where}: {problem}" if where else problem)


class ReaderError(MMCardioError):
    """A file could not be read as the record it should hold."""


class ManifestError(MMCardioError):
    """A manifest row or column is missing, malformed or inconsistent."""


class ConfigError(MMCardioError):
    """A configuration file has an unknown key or a value of the wrong type."""
