"""The de-identification key and what it derives: pseudonyms and DICOM UIDs (keyed HMAC-SHA256).

A keyed hash, not a plain one: medical record numbers are short, so anyone holding an unkeyed
hash (or the key) re-identifies them by hashing every possible number. The key therefore lives
outside the outputs (default ~/.config/mmcardio/deid.key, mode 0600) and never in them.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from mmcardio.errors import MMCardioError

log = logging.getLogger(__name__)

#: Environment variable naming the key file (overridden by `--deid-key`).
KEY_ENV = "MMCARDIO_DEID_KEY_FILE"
DEFAULT_KEY_FILE = Path("~/.config/mmcardio/deid.key")
KEY_BYTES = 32
MIN_KEY_BYTES = 16
PSEUDONYM_HEX = 16  # 64 bits: collisions in a million-study cohort have odds ~3e-8 (and are checked)


def default_key_file() -> Path:
    """`MMCARDIO_DEID_KEY_FILE` when set, else ~/.config/mmcardio/deid.key."""
    return Path(os.environ.get(KEY_ENV) or DEFAULT_KEY_FILE).expanduser()


@dataclass(frozen=True)
class DeidKey:
    """A secret key and the pseudonyms it derives (same key -> same pseudonyms)."""

    secret: bytes

    def digest(self, domain: str, value: str) -> bytes:
        """HMAC-SHA256 of `value`, separated by `domain` so a study and a patient with the same
        original id get unrelated pseudonyms."""
        return hmac.new(self.secret, f"{domain}\0{value}".encode(), hashlib.sha256).digest()

    def study(self, study_id: str) -> str:
        return "s-" + self.digest("study", study_id).hex()[:PSEUDONYM_HEX]

    def patient(self, patient_id: str) -> str:
        return "p-" + self.digest("patient", patient_id).hex()[:PSEUDONYM_HEX]

    def uid(self, uid: str) -> str:
        """A DICOM UID in the "2.25." + 128-bit integer form (PS3.5 B.2), the same for the same
        original, so a series' slices keep one SeriesInstanceUID and their FrameOfReferenceUID."""
        return "2.25." + str(int.from_bytes(self.digest("uid", uid.strip())[:16], "big"))

    def fingerprint(self, text: str) -> str:
        """A keyed digest of anything (source fingerprints written into OUT reveal no path)."""
        return self.digest("fingerprint", text).hex()

    @property
    def key_id(self) -> str:
        """Names the key in outputs without revealing it (tells which key made a folder)."""
        return self.digest("key-id", "").hex()[:12]


def load_key(path: str | Path | None = None, create: bool = True) -> tuple[DeidKey, Path]:
    """The key in `path` (default: `default_key_file()`), created with 32 random bytes and mode
    0600 when it does not exist and `create` (the creation is logged, with where)."""
    path = Path(path).expanduser() if path else default_key_file()
    if not path.exists():
        if not create:
            raise MMCardioError("the de-identification key file does not exist", path)
        _create_key(path)
        log.warning("created a de-identification key in %s (mode 0600); keep it to get the same "
                    "pseudonyms again, and never copy it beside the de-identified data", path)
    try:
        secret = path.read_bytes()
    except OSError as err:
        raise MMCardioError(f"cannot read the de-identification key ({err.strerror})", path) from None
    if len(secret) < MIN_KEY_BYTES:
        raise MMCardioError(f"the key holds {len(secret)} bytes; expected at least {MIN_KEY_BYTES} "
                            "random bytes", path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s: the de-identification key is readable by others (mode %o); chmod 600 it",
                    path, mode)
    return DeidKey(secret), path


def _create_key(path: Path) -> None:
    """Write a new key with mode 0600 from the start (never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created the key meanwhile: keep theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
