"""Encrypting every Temporal payload: AES-256-GCM with a key ring that rotates.

    ring = load_key_ring(settings)              # the key file, generated on first use
    codec = EncryptionCodec(ring)               # a temporalio PayloadCodec
    converter = encrypting_converter(ring)      # what `agentrun.temporal.connect` uses

Temporal keeps every workflow and activity input and output, every memo, query
and update answer in its history, in the clear unless a codec encrypts them on the
client side. Every agentrun client (API, worker; `agentrun.temporal.connect`) uses
this codec unless `AGENTRUN_PAYLOAD_ENCRYPTION=off`, so the Temporal server, its
database and anyone reading the raw history see ciphertext only. Operators still
read payloads through the codec server (`POST /codec/decode`, `api.routes.codec`),
which the Temporal Web UI and `temporal --codec-endpoint` call.

An encrypted payload::

    metadata: {"encoding": "binary/encrypted", "encryption-key-id": "<key id>"}
    data:     nonce (12 random bytes) || AES-256-GCM(serialized inner Payload)

The whole inner `Payload` is encrypted (its metadata too: the message type names
of our models say little, but nothing is left in the clear). The key id is the
associated data, so a payload cannot be moved under another key's id.

The key file (`AGENTRUN_PAYLOAD_KEYS_FILE`, default `<state_dir>/payload-keys.json`,
mode 0600)::

    {"current": "key-20261122-3f9a1c",
     "keys": {"key-20261122-3f9a1c": "<base64 of 32 random bytes>",
              "key-20260101-0b7e44": "<an older key, kept to read older runs>"}}

The current key encrypts; every key listed decrypts. Rotation adds a key and
makes it current, keeping the old ones (`python -m agentrun.payload_codec rotate`);
a key removed from the file makes the payloads written under it unreadable.

Design (why it looks like this):

* **Generated once, atomically.** With no `AGENTRUN_PAYLOAD_KEYS_FILE` set (the
  embedded default), the first process to start writes the file under the state
  directory: to a private temporary file, then `os.link`ed into place, so a worker
  and an API starting at the same moment end up with the same single key. A file
  named explicitly is never created: a missing one is a deployment mistake (two
  hosts would each invent their own key).
* **Plain payloads pass through on decode**: runs recorded before encryption was
  on, the committed test histories, and signals sent with the plain `temporal` CLI
  (`--input '{…}'` is `json/plain`) still read.
* **An unknown key id fails loudly** (:class:`PayloadDecryptError` naming the key
  id and the file): decoding with a guess is impossible, and a silent fallback
  would hide a lost key.

This module must not: log or put in an exception a key or a decrypted payload,
or read the environment (settings come in as :class:`~agentrun.config.Settings`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from agentrun.config import ConfigError, Settings, load_settings

__all__ = [
    "ENCRYPTED_ENCODING",
    "KEY_ID_METADATA",
    "EncryptionCodec",
    "KeyFileError",
    "KeyRing",
    "PayloadDecryptError",
    "encrypting_converter",
    "load_key_ring",
]

log = logging.getLogger("agentrun.payload_codec")

ENCRYPTED_ENCODING = b"binary/encrypted"
"""The `encoding` metadata of an encrypted payload (the name Temporal's samples use)."""
KEY_ID_METADATA = "encryption-key-id"
"""The metadata entry naming the key a payload was encrypted with."""
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce; random per payload (2^32 payloads per key is safe)
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_AAD_PREFIX = b"agentrun-payload/v1:"


class KeyFileError(Exception):
    """The key file is missing, unreadable or malformed; the message says how to fix it."""


class PayloadDecryptError(ValueError):
    """An encrypted payload cannot be decrypted: its key is not in the ring, or it was
    altered. The message names the key id, never a key."""

    def __init__(self, message: str, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


@dataclass(frozen=True)
class KeyRing:
    """Payload keys by id, and the id of the one that encrypts.

    `source` says where the ring came from (the key file), for error messages."""

    current: str
    keys: Mapping[str, bytes] = dataclasses.field(repr=False)
    source: str = "the payload key ring"

    def __post_init__(self) -> None:
        for key_id, key in self.keys.items():
            if not KEY_ID_PATTERN.match(key_id):
                raise KeyFileError(
                    f"{self.source}: key id {key_id!r} must be 1-64 letters, digits, '.', '_' "
                    "or '-'"
                )
            if len(key) != KEY_BYTES:
                raise KeyFileError(
                    f"{self.source}: key {key_id!r} is {len(key)} bytes; AES-256 needs "
                    f"{KEY_BYTES}: base64 of 32 random bytes (`openssl rand -base64 32`), or "
                    "add one with `python -m agentrun.payload_codec rotate`"
                )
        if self.current not in self.keys:
            raise KeyFileError(
                f"{self.source}: the current key {self.current!r} is not among its keys "
                f"({', '.join(sorted(self.keys)) or 'none'})"
            )

    @classmethod
    def generate(cls, source: str = "the payload key ring") -> KeyRing:
        """A ring of one new random key."""
        key_id = new_key_id()
        return cls(key_id, {key_id: AESGCM.generate_key(bit_length=256)}, source)

    @classmethod
    def from_json(cls, text: str, source: str) -> KeyRing:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"{source} is not JSON ({exc.msg}, line {exc.lineno})") from None
        if (
            not isinstance(document, dict)
            or not isinstance(document.get("current"), str)
            or not isinstance(document.get("keys"), dict)
            or not all(isinstance(v, str) for v in document["keys"].values())
        ):
            raise KeyFileError(
                f'{source} must be {{"current": "<key id>", "keys": {{"<key id>": '
                '"<base64 of 32 bytes>", …}}'
            )
        keys: dict[str, bytes] = {}
        for key_id, encoded in document["keys"].items():
            try:
                keys[key_id] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise KeyFileError(f"{source}: key {key_id!r} is not base64") from None
        return cls(document["current"], keys, source)

    def to_json(self) -> str:
        keys = {k: base64.b64encode(v).decode() for k, v in self.keys.items()}
        return json.dumps({"current": self.current, "keys": keys}, indent=2) + "\n"

    def with_new_key(self, *, activate: bool = True) -> tuple[KeyRing, str]:
        """This ring plus a new random key (current when `activate`), and its id."""
        key_id = new_key_id()
        while key_id in self.keys:  # never replace a key: its payloads would be lost
            key_id = new_key_id()
        keys = {**self.keys, key_id: AESGCM.generate_key(bit_length=256)}
        return KeyRing(key_id if activate else self.current, keys, self.source), key_id

    def activated(self, key_id: str) -> KeyRing:
        """This ring with `key_id` (already listed) as the current key."""
        if key_id not in self.keys:
            raise KeyFileError(f"{self.source} has no key {key_id!r}")
        return KeyRing(key_id, self.keys, self.source)


def new_key_id() -> str:
    """`key-<UTC date>-<6 hex>`: sorts by age and says when it was made."""
    return f"key-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3)}"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM of each payload under the ring's current key (module docstring)."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in ring.keys.items()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self.ring.current
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(
            nonce, payload.SerializeToString(), _AAD_PREFIX + key_id.encode()
        )
        return Payload(
            metadata={"encoding": ENCRYPTED_ENCODING, KEY_ID_METADATA: key_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The inner payload; a payload that is not encrypted is returned as it is."""
        if payload.metadata.get("encoding") != ENCRYPTED_ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            known = ", ".join(sorted(self._ciphers))
            raise PayloadDecryptError(
                f"the payload was encrypted with key {key_id!r}, which is not in "
                f"{self.ring.source} (it has {known}); add that key back to the file: "
                "rotation keeps old keys so that older runs stay readable",
                key_id,
            )
        data = payload.data
        try:
            plain = cipher.decrypt(
                data[:NONCE_BYTES], data[NONCE_BYTES:], _AAD_PREFIX + key_id.encode()
            )
            return Payload.FromString(plain)
        except (InvalidTag, DecodeError, ValueError):
            raise PayloadDecryptError(
                f"the payload claiming key {key_id!r} does not decrypt with that key of "
                f"{self.ring.source}: it was altered, or the key under that id changed",
                key_id,
            ) from None


def encrypting_converter(ring: KeyRing) -> DataConverter:
    """The pydantic data converter with this codec, failures included.

    Failure messages and stack traces are moved into the failure's encoded
    attributes (`DefaultFailureConverterWithEncodedAttributes`) so the codec
    encrypts them too: an error message is as likely to hold a secret as a result."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(ring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


# ------------------------------------------------------------------ the key file


def load_key_ring(settings: Settings) -> KeyRing:
    """The ring in `settings.payload_keys_path`; created there on first use when
    `AGENTRUN_PAYLOAD_KEYS_FILE` is unset (the embedded default)."""
    path = settings.payload_keys_path
    source = f"the payload key file {path} (AGENTRUN_PAYLOAD_KEYS_FILE)"
    if settings.payload_keys_file is None and not path.exists():
        _create_once(path, KeyRing.generate(source))
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KeyFileError(
            f"{source} does not exist: copy the key file every worker and API of this "
            "deployment shares, or create one with "
            f"`python -m agentrun.payload_codec rotate --keys-file {path}`"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{source} cannot be read: {exc.strerror}") from None
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users; chmod 600 it", source)
    return KeyRing.from_json(text, source)


def _create_once(path: Path, ring: KeyRing) -> None:
    """Write `ring` to `path` (mode 0600) unless a file is there; never half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".payload-keys-", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as out:
                out.write(ring.to_json())
                out.flush()
                os.fsync(out.fileno())
            # `link` refuses an existing target: the first process's key wins.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise KeyFileError(
            f"cannot create the payload key file {path}: {exc.strerror}; set "
            "AGENTRUN_STATE_DIR to a writable directory or AGENTRUN_PAYLOAD_KEYS_FILE to a "
            "key file"
        ) from None


def write_key_ring(path: Path, ring: KeyRing) -> None:
    """Replace the key file with `ring` (mode 0600, atomically)."""
    fd, tmp = tempfile.mkstemp(prefix=".payload-keys-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(ring.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------ rotation CLI


def main(argv: list[str] | None = None) -> int:
    """`python -m agentrun.payload_codec rotate|activate|show` (docs/api.md, "Key rotation")."""
    parser = argparse.ArgumentParser(
        prog="python -m agentrun.payload_codec",
        description="Manage the payload key file. Every worker and API of a deployment "
        "must share it; restart them after a change.",
    )
    parser.add_argument(
        "--keys-file",
        type=Path,
        help="the key file (default: AGENTRUN_PAYLOAD_KEYS_FILE, else "
        "<AGENTRUN_STATE_DIR>/payload-keys.json)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    rotate = commands.add_parser(
        "rotate", help="add a new key and make it current (creates the file if missing)"
    )
    rotate.add_argument(
        "--keep-current",
        action="store_true",
        help="add the key without encrypting with it yet (step 1 of a rolling rotation "
        "across hosts: distribute, restart, then `activate` it)",
    )
    activate = commands.add_parser("activate", help="make a listed key the current one")
    activate.add_argument("key_id")
    commands.add_parser("show", help="list the key ids and the current one (never the keys)")
    args = parser.parse_args(argv)
    try:
        path: Path = args.keys_file or load_settings().payload_keys_path
        source = f"the payload key file {path}"
        if args.command == "rotate" and not path.exists():
            ring = KeyRing.generate(source)
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_once(path, ring)
            print(f"created {path} with key {ring.current} (current)")
            return 0
        ring = KeyRing.from_json(_read(path), source)
        if args.command == "rotate":
            ring, key_id = ring.with_new_key(activate=not args.keep_current)
            write_key_ring(path, ring)
            state = "current" if ring.current == key_id else f"not current yet: {ring.current} is"
            print(f"added key {key_id} ({state}); restart every worker and API")
        elif args.command == "activate":
            write_key_ring(path, ring.activated(args.key_id))
            print(f"key {args.key_id} is current; restart every worker and API")
        else:
            for key_id in sorted(ring.keys):
                print(f"{key_id}{'  (current)' if key_id == ring.current else ''}")
    except (ConfigError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
