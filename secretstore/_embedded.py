"""The embedded backend: AES-256-GCM ciphertext in the accounts database.

    store = EmbeddedSecretStore(Database(url), key)
    store.put("acme", "GITHUB_TOKEN", "ghp_…")     # SecretMeta(version=1, …)
    store.get("acme", "GITHUB_TOKEN").reveal()

Design (why it looks like this):

* **One row per version** (`accounts.models.SecretVersionRow`), like KV v2: `get`
  reads the newest or a given version; the oldest are pruned past
  :data:`KEEP_VERSIONS`; `delete` removes every version.
* **Never plaintext on disk**: each version is encrypted with a fresh random
  96-bit nonce; the additional authenticated data is `tenant \\0 name \\0 version`,
  so a row copied to another tenant, name or version fails to decrypt instead of
  handing out another secret. The key lives outside the database (`_key`).
* **Concurrent puts get distinct versions**: SQLite's write lock (`BEGIN
  IMMEDIATE`) serialises them; on PostgreSQL the primary key refuses a duplicate
  version and the put retries.

This module must not: log a value, or keep one in memory longer than a call.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from accounts.db import Database
from accounts.models import SecretVersionRow
from secretstore._errors import (
    SecretNotFound,
    SecretStoreMisconfigured,
    SecretStoreUnavailable,
)
from secretstore._key import key_id
from secretstore._model import (
    KEEP_VERSIONS,
    SecretMeta,
    SecretValue,
    check_name,
    check_tenant,
    check_value,
    missing_names,
)

_PUT_ATTEMPTS = 5
"""Tries of a put racing another put of the same secret (PostgreSQL)."""

Row = SecretVersionRow


def _aad(tenant: str, name: str, version: int) -> bytes:
    return f"agentrun-secret\x00{tenant}\x00{name}\x00{version}".encode()


class EmbeddedSecretStore:
    """Secrets encrypted with one AES-256 key, stored in the accounts database."""

    backend = "embedded"

    def __init__(self, db: Database, key: bytes, *, owns_db: bool = False) -> None:
        self._db = db
        self._aead = AESGCM(key)
        self._key_id = key_id(key)
        self._owns_db = owns_db

    def put(self, tenant: str, name: str, value: str) -> SecretMeta:
        check_tenant(tenant)
        check_name(name)
        check_value(value)
        for attempt in range(_PUT_ATTEMPTS):
            try:
                return self._put_once(tenant, name, value)
            except IntegrityError:
                if attempt == _PUT_ATTEMPTS - 1:
                    raise SecretStoreUnavailable(
                        f"secret {name!r} of tenant {tenant!r} is being written by others; retry"
                    ) from None
        raise AssertionError("unreachable")

    def _put_once(self, tenant: str, name: str, value: str) -> SecretMeta:
        now = datetime.now(UTC)
        with _translated(), self._db.session(write_lock=True) as session:
            newest = session.execute(
                select(Row.version, Row.secret_created_at)
                .where(Row.tenant_id == tenant, Row.name == name)
                .order_by(Row.version.desc())
                .limit(1)
                .with_for_update()
            ).first()
            version = newest.version + 1 if newest else 1
            first = newest.secret_created_at if newest else now
            nonce = os.urandom(12)
            session.add(
                Row(
                    tenant_id=tenant,
                    name=name,
                    version=version,
                    key_id=self._key_id,
                    nonce=nonce,
                    ciphertext=self._aead.encrypt(
                        nonce, value.encode(), _aad(tenant, name, version)
                    ),
                    secret_created_at=first,
                    created_at=now,
                )
            )
            session.flush()
            session.execute(
                delete(Row).where(
                    Row.tenant_id == tenant,
                    Row.name == name,
                    Row.version <= version - KEEP_VERSIONS,
                )
            )
        return SecretMeta(name=name, version=version, created_at=first, updated_at=now)

    def get(self, tenant: str, name: str, version: int | None = None) -> SecretValue:
        check_tenant(tenant)
        check_name(name)
        query = select(Row).where(Row.tenant_id == tenant, Row.name == name)
        if version is None:
            query = query.order_by(Row.version.desc()).limit(1)
        else:
            query = query.where(Row.version == version)
        with _translated(), self._db.session() as session:
            row = session.scalars(query).first()
        if row is None:
            which = f"version {version} of " if version is not None else ""
            raise SecretNotFound(f"tenant {tenant!r} has no {which}secret {name!r}")
        try:
            plain = self._aead.decrypt(row.nonce, row.ciphertext, _aad(tenant, name, row.version))
        except InvalidTag:
            raise SecretStoreMisconfigured(
                f"secret {name!r} of tenant {tenant!r} does not decrypt: it was written with "
                f"the key {row.key_id} and this process holds {self._key_id}; give every API "
                "and worker the same AGENTRUN_SECRETS_KEY (or key file)"
            ) from None
        return SecretValue(plain.decode(), name=name, version=row.version)

    def delete(self, tenant: str, name: str) -> None:
        check_tenant(tenant)
        check_name(name)
        with _translated(), self._db.session() as session:
            gone = session.scalars(
                delete(Row).where(Row.tenant_id == tenant, Row.name == name).returning(Row.version)
            ).all()
        if not gone:
            raise SecretNotFound(f"tenant {tenant!r} has no secret {name!r}")

    def list(self, tenant: str) -> builtins.list[SecretMeta]:
        check_tenant(tenant)
        query = (
            select(
                Row.name,
                func.max(Row.version),
                func.min(Row.secret_created_at),
                func.max(Row.created_at),
            )
            .where(Row.tenant_id == tenant)
            .group_by(Row.name)
            .order_by(Row.name)
        )
        with _translated(), self._db.session() as session:
            rows = session.execute(query).all()
        return [
            SecretMeta(
                name=name,
                version=version,
                created_at=_utc(created),
                updated_at=_utc(updated),
            )
            for name, version, created, updated in rows
        ]

    def exists(self, tenant: str, names: Sequence[str]) -> builtins.list[str]:
        check_tenant(tenant)
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return []
        with _translated(), self._db.session() as session:
            present = set(
                session.scalars(
                    select(Row.name).where(Row.tenant_id == tenant, Row.name.in_(wanted)).distinct()
                )
            )
        return missing_names(wanted, present)

    def close(self) -> None:
        if self._owns_db:
            self._db.close()


def _utc(value: datetime) -> datetime:
    # Aggregates bypass the column type: SQLite hands back naive (UTC) datetimes,
    # or even strings.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@contextmanager
def _translated() -> Iterator[None]:
    """A lost database connection is retryable (`SecretStoreUnavailable`)."""
    try:
        yield
    except OperationalError as exc:
        raise SecretStoreUnavailable(
            f"the accounts database is unreachable ({type(exc.orig).__name__}); retry"
        ) from None
