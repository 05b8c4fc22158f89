"""A pickle that runs code when unpickled: what a hostile checkpoint would carry."""
from __future__ import annotations

from pathlib import Path


class Payload:
    """Unpickling this writes `marker`; tests check the file never appears."""

    def __init__(self, marker: str | Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)
