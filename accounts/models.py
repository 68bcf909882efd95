"""The accounts tables, as typed SQLAlchemy 2 classes (the migrations' target).

Design (why it looks like this):

* **One class per table, columns typed with `Mapped[...]`**, so mypy checks every
  query the stores write. `migrations/versions/*` create exactly these tables; a
  test compares the two with Alembic's `compare_metadata` on SQLite and PostgreSQL.
* **Times are stored in UTC and read back timezone-aware** (`UtcDateTime`): SQLite
  has no time zones and would hand back naive datetimes, and the audit chain hashes
  its timestamps, so they must read back exactly as written.
* **A naming convention for constraints and indexes**, so a later migration can
  name what it alters on both databases.
* **No foreign key from audit or usage rows to tenants**: the audit trail records
  refused calls that name tenants which do not exist, and both outlive anything a
  tenant's removal would delete.

This module must not: hold behaviour (the stores in `tenants.py`, `keys.py`,
`audit.py`, `usage.py`, `secretstore` do), or store a key's secret (only its
sha256) or a secret's value (only its ciphertext: `secret_versions`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

GENESIS_HASH = "0" * 64
"""`prev_hash` of the first audit entry (and the head's hash while the log is empty)."""

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (UTC).

    A naive datetime is taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive datetime is taken to be UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime}


class TenantRow(Base):
    __tablename__ = "tenants"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    quota: Mapped[dict[str, Any]] = mapped_column(JSON)
    """`accounts.tenants.Quota`, as JSON (new quota fields need no migration)."""
    created_at: Mapped[datetime]


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.tenant_id"), index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    """sha256 (hex) of the key's secret; the secret itself is never stored."""
    role: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(200))
    act_as: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class AuditRow(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "tenant_id", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(index=True)
    tenant_id: Mapped[str] = mapped_column(String(63))
    actor: Mapped[str] = mapped_column(String(200))
    on_behalf_of: Mapped[str | None] = mapped_column(String(200))
    key_id: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str] = mapped_column(String(128))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """One row (id 1): the last entry's seq and hash.

    Appends lock it (`SELECT … FOR UPDATE`; SQLite's write lock), so two API
    processes never write the same seq; `verify` compares it with the last entry,
    so deleting the newest entries is caught too.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class UsageRow(Base):
    __tablename__ = "usage_runs"
    __table_args__ = (Index(None, "tenant_id", "finished_at"),)

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float] = mapped_column(Double)
    tool_seconds: Mapped[float] = mapped_column(Double)
    sandbox_seconds: Mapped[float] = mapped_column(Double)
    finished_at: Mapped[datetime]
    recorded_at: Mapped[datetime]


class SecretVersionRow(Base):
    """One version of a tenant's secret, encrypted (`secretstore._embedded`).

    The value is AES-256-GCM ciphertext; the additional data binds it to its tenant,
    name and version, so a row copied elsewhere does not decrypt. `key_id` names the
    key that encrypted it (a fingerprint, never the key).
    """

    __tablename__ = "secret_versions"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    key_id: Mapped[str] = mapped_column(String(32))
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    secret_created_at: Mapped[datetime]
    """When the secret's first version was written (kept when old versions are pruned)."""
    created_at: Mapped[datetime]
    """When this version was written."""
