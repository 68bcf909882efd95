"""API keys: random, shown once, stored only as a hash under a public key id.

A key reads `ar_<key_id>_<secret>`: `key_id` (12 lowercase hex characters) is the
public part, used to find the row and named in the audit trail and rate limit;
`secret` (32 random bytes, urlsafe base64) is never stored, only its sha256.

Design (why it looks like this):

* **sha256, not a password hash.** The secret has 256 bits of entropy, so there is
  nothing to brute-force and no need for a slow hash on every request.
* **Constant-time comparison** (`hmac.compare_digest`), and the same work for an
  unknown key id as for a wrong secret, so timing says nothing about which.
* **`authenticate` answers `None` for every failure** (malformed, unknown, wrong,
  revoked, expired): the API answers one 401 for all of them.
* **`last_used_at` is written at most once a minute per key**, so a busy key does
  not turn every request into a write.
* The clock is injectable (`clock=`), so expiry is tested without waiting.

This module must not: log, return or store a key's secret (the plaintext leaves
only through `create`'s return value), or tell callers why a key was refused.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import or_, select, update

from accounts.db import Database
from accounts.errors import InvalidInput, NotFound
from accounts.models import ApiKeyRow, TenantRow, as_utc
from accounts.principal import Principal
from accounts.roles import Role

KEY_PREFIX = "ar_"
LAST_USED_EVERY = timedelta(minutes=1)
"""`last_used_at` is refreshed at most this often per key."""

_KEY_RE = re.compile(r"^ar_(?P<key_id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_\-]{43})$")
_SUBJECT_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
_NO_SUCH_HASH = hashlib.sha256(b"no such key").hexdigest()


class KeyRecord(BaseModel):
    """A key as listed: everything but its secret and hash."""

    key_id: str
    tenant_id: str
    role: Role
    subject: str
    act_as: bool
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


def _record(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id,
        tenant_id=row.tenant_id,
        role=Role(row.role),
        subject=row.subject,
        act_as=row.act_as,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint_key(
    tenant_id: str,
    role: Role,
    subject: str,
    now: datetime,
    expires_at: datetime | None = None,
    act_as: bool = False,
) -> tuple[ApiKeyRow, str]:
    """A new key's row (holding only the secret's hash) and its plaintext."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiKeyRow(
        key_id=key_id,
        tenant_id=tenant_id,
        secret_sha256=_digest(secret),
        role=role.value,
        subject=subject,
        act_as=act_as,
        created_at=now,
        expires_at=expires_at,
        revoked_at=None,
        last_used_at=None,
    )
    return row, f"{KEY_PREFIX}{key_id}_{secret}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ApiKeys:
    """The API keys table.

    >>> record, plaintext = ApiKeys(db).create("acme", Role.OPERATOR, "ci-bot")
    >>> ApiKeys(db).authenticate(plaintext).role
    <Role.OPERATOR: 'operator'>
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._db = db
        self._clock = clock

    def create(
        self,
        tenant_id: str,
        role: Role,
        subject: str,
        *,
        expires_at: datetime | None = None,
        act_as: bool = False,
    ) -> tuple[KeyRecord, str]:
        """A new key of `tenant_id`: its record and its plaintext (shown this once).

        :class:`NotFound` for an unknown tenant; :class:`InvalidInput` for a bad
        role or subject, or an expiry in the past (a naive `expires_at` is UTC).
        """
        try:
            role = Role(role)
        except ValueError:
            raise InvalidInput(
                f"unknown role {role!r}: use one of {', '.join(r.value for r in Role)}"
            ) from None
        if (
            not isinstance(subject, str)
            or not _SUBJECT_RE.fullmatch(subject)
            or not subject.strip()
        ):
            raise InvalidInput(
                "a key's subject (its owner's name) must be 1-200 printable characters"
            )
        now = self._clock()
        if expires_at is not None:
            expires_at = as_utc(expires_at)
            if expires_at <= now:
                raise InvalidInput(f"expires_at {expires_at.isoformat()} is not in the future")
        row, plaintext = mint_key(tenant_id, role, subject, now, expires_at, act_as)
        with self._db.session() as session:
            if session.get(TenantRow, tenant_id) is None:
                raise NotFound(f"no tenant {tenant_id!r}")
            session.add(row)
        return _record(row), plaintext

    def authenticate(self, plaintext: str) -> Principal | None:
        """Who `plaintext` stands for, or None (malformed, unknown, wrong, revoked, expired)."""
        match = _KEY_RE.fullmatch(plaintext) if isinstance(plaintext, str) else None
        if match is None:
            return None
        offered = _digest(match["secret"])
        now = self._clock()
        with self._db.session() as session:
            row = session.get(ApiKeyRow, match["key_id"])
            stored = row.secret_sha256 if row is not None else _NO_SUCH_HASH
            if not hmac.compare_digest(stored, offered) or row is None:
                return None
            if row.revoked_at is not None:
                return None
            if row.expires_at is not None and row.expires_at <= now:
                return None
            principal = Principal(
                tenant_id=row.tenant_id,
                key_id=row.key_id,
                role=Role(row.role),
                subject=row.subject,
                may_act_for_users=row.act_as,
            )
            due = row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY
        if due:
            self._touch(row.key_id, now)
        return principal

    def _touch(self, key_id: str, now: datetime) -> None:
        """Record the key's use, in a transaction of its own that starts as a writer.

        Not in the read's transaction: on SQLite, a reader turning writer after
        another connection wrote fails at once (`database is locked`, the busy
        timeout does not apply), which under a burst of requests answered 500s."""
        with self._db.session(write_lock=True) as session:
            session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.key_id == key_id)
                .where(
                    or_(
                        ApiKeyRow.last_used_at.is_(None),
                        ApiKeyRow.last_used_at <= now - LAST_USED_EVERY,
                    )
                )
                .values(last_used_at=now)
            )

    def revoke(self, key_id: str, tenant_id: str | None = None) -> bool:
        """Revoke a key (of `tenant_id`, when given); False if there is no such key.

        Revoking a revoked key is a no-op that answers True (its first revocation
        time stays).
        """
        with self._db.session() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                return False
            if row.revoked_at is None:
                row.revoked_at = self._clock()
            return True

    def list(self, tenant_id: str) -> builtins.list[KeyRecord]:
        """The tenant's keys, revoked ones included, oldest first (never a hash)."""
        with self._db.session() as session:
            rows = session.scalars(
                select(ApiKeyRow)
                .where(ApiKeyRow.tenant_id == tenant_id)
                .order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
            ).all()
            return [_record(row) for row in rows]

    def get(self, key_id: str) -> KeyRecord | None:
        with self._db.session() as session:
            row = session.get(ApiKeyRow, key_id)
            return None if row is None else _record(row)
