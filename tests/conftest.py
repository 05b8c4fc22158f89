"""Session-wide test settings."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def deid_key_outside_home(tmp_path_factory):
    """`mmcardio prepare` de-identifies by default and creates its key file on first use: the
    tests' key lives in a temporary folder, never in the user's ~/.config."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MMCARDIO_DEID_KEY_FILE", str(tmp_path_factory.mktemp("deid-key") / "deid.key"))
    yield
    mp.undo()
