"""The embedded store's key: from `AGENTRUN_SECRETS_KEY`, or a key file made once.

    key = load_key(settings)   # 32 bytes; creates <state_dir>/secrets.key (0600) once

Design (why it looks like this):

* **The key never sits beside the ciphertext in the database**: it comes from the
  environment (`AGENTRUN_SECRETS_KEY`, base64 of 32 bytes, e.g. from the
  orchestrator's secret mechanism) or from a key file, by default in the state
  directory. The API and the workers must read the same key.
* **Created once, atomically, mode 0600**: written to a temporary file (0600 from
  its creation) and hard-linked into place, so two processes starting together
  end up with the same key and a reader never sees a half-written file.
* **A key file others may read is refused**: the message says `chmod 600`.

This module must not: log or put the key (or any part of it) in an error message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets as stdlib_secrets
import stat
from pathlib import Path

from agentrun.config import Settings
from secretstore._errors import SecretStoreMisconfigured

KEY_BYTES = 32
"""AES-256."""


def key_file_path(settings: Settings) -> Path:
    return settings.secrets_key_file or (settings.state_dir / "secrets.key")


def key_id(key: bytes) -> str:
    """A fingerprint naming the key in each row (16 hex digits; not the key)."""
    return hashlib.sha256(b"agentrun-secretstore-key-id\x00" + key).hexdigest()[:16]


def decode_key(text: str, where: str) -> bytes:
    """32 bytes from base64 (standard or URL-safe, padding optional)."""
    raw = text.strip().replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SecretStoreMisconfigured(
            f"{where} must be base64 of {KEY_BYTES} random bytes, e.g. "
            "`python -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())'`"
        )
    return key


def load_key(settings: Settings) -> bytes:
    """The embedded store's AES-256 key (see the module docstring)."""
    if settings.secrets_key is not None:
        return decode_key(settings.secrets_key, "AGENTRUN_SECRETS_KEY")
    path = key_file_path(settings)
    if not path.exists():
        _create_key_file(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretStoreMisconfigured(
            f"the secrets key file {path} may be read by other users (mode "
            f"{stat.S_IMODE(mode):o}): run `chmod 600 {path}`"
        )
    return decode_key(path.read_text(), f"the secrets key file {path}")


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = base64.b64encode(stdlib_secrets.token_bytes(KEY_BYTES)).decode() + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{stdlib_secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(tmp, path)  # atomic
    finally:
        tmp.unlink(missing_ok=True)
