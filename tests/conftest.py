"""Session-wide test settings."""
from __future__ import annotations

import os
import shutil
import tempfile

_KEY_ENV = "MMCARDIO_DEID_KEY_FILE"


def pytest_configure(config):
    """`mmcardio prepare` de-identifies by default and creates its key file on first use: the
    tests' key (and that of every command they start) lives in a temporary folder, never in
    the user's ~/.config. Set before collection, as test modules copy the environment."""
    folder = tempfile.mkdtemp(prefix="mmcardio-test-key-")
    config._deid_key_folder = folder
    os.environ[_KEY_ENV] = os.path.join(folder, "deid.key")


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_deid_key_folder", ""), ignore_errors=True)
