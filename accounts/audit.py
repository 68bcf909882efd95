"""The audit trail: an append-only, hash-chained log of every mutating call.

Each entry records who (actor, on whose behalf, with which key), in which tenant,
did what to what, when, with what outcome, under which request id. Entry `n`
stores `hash = sha256(prev_hash + canonical_json(entry incl. seq and at))`, with
`prev_hash` the hash of entry `n-1` (64 zeros for the first), so altering,
removing or reordering any entry breaks the chain from there on, and
:meth:`AuditLog.verify` names the first entry that does not hold.

Design (why it looks like this):

* **Appends are serialised in the database**, not in the process: the append locks
  the one `audit_head` row (`SELECT … FOR UPDATE` on PostgreSQL; SQLite's write
  lock, taken at `BEGIN IMMEDIATE`), reads the last seq and hash there, and writes
  the entry and the new head in the same transaction. Several API processes never
  fork the chain.
* **The head row also closes the tail**: `verify` compares it with the last entry,
  so deleting the newest entries is caught, not only gaps in the middle.
* **Canonical JSON** (`agentrun.contracts.canonical_json`) of the entry, `at` in UTC
  ISO 8601, so the hash does not depend on the database that stored it.

A chain only proves what its hashes cover: someone who can rewrite the whole table
*and* the head can forge a consistent history. Ship `verify`'s head hash elsewhere
(a log, a ticket) to anchor it.

This module must not: update or delete an entry, or record a secret.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import Select, select

from accounts.db import Database
from accounts.models import GENESIS_HASH, AuditHeadRow, AuditRow, as_utc
from agentrun.contracts import canonical_json

MAX_QUERY_LIMIT = 1000
"""Most entries one `query` returns; page with `after_seq`."""


class AuditEntry(BaseModel):
    """One thing that happened, as the API records it."""

    at: datetime
    """When (stored and hashed in UTC; a naive time is taken to be UTC)."""
    tenant_id: str = Field(max_length=63)
    actor: str = Field(max_length=200)
    """The key's subject (or the dev actor with auth off)."""
    on_behalf_of: str | None = Field(default=None, max_length=200)
    """The end user an `act_as` key acted for."""
    key_id: str | None = Field(default=None, max_length=32)
    action: str = Field(max_length=64)
    """e.g. `run.create`, `run.cancel`, `approval.approve`, `key.create`, `tenant.create`."""
    target: str = Field(max_length=2000)
    """e.g. a run id or a key id."""
    outcome: str = Field(max_length=2000)
    """`ok`, or the HTTP status / problem type of a refusal."""
    request_id: str = Field(max_length=128)

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)


class AuditRecord(AuditEntry):
    """An entry as stored: its place in the chain and its hashes."""

    seq: int
    prev_hash: str
    hash: str


_ENTRY_FIELDS = tuple(AuditEntry.model_fields)


def entry_hash(prev_hash: str, seq: int, entry: AuditEntry) -> str:
    """`sha256(prev_hash + canonical_json(entry fields, seq))`, hex."""
    fields: dict[str, Any] = entry.model_dump(mode="python", include=set(_ENTRY_FIELDS))
    fields["at"] = as_utc(entry.at).isoformat()
    fields["seq"] = seq
    return hashlib.sha256(prev_hash.encode() + canonical_json(fields)).hexdigest()


def _entry(row: AuditRow) -> AuditEntry:
    return AuditEntry.model_validate({name: getattr(row, name) for name in _ENTRY_FIELDS})


def _record(row: AuditRow) -> AuditRecord:
    return AuditRecord.model_validate(
        {name: getattr(row, name) for name in (*_ENTRY_FIELDS, "seq", "prev_hash", "hash")}
    )


class AuditLog:
    """The audit table.

    >>> log = AuditLog(db)
    >>> log.append(AuditEntry(at=now, tenant_id="acme", actor="alice", action="run.cancel",
    ...                       target="r1", outcome="ok", request_id="req-1")).seq
    1
    >>> log.verify() is None
    True
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def append(self, entry: AuditEntry) -> AuditRecord:
        """Add `entry` at the end of the chain (serialised across processes)."""
        with self._db.session(write_lock=True) as session:
            head = session.scalars(
                select(AuditHeadRow).where(AuditHeadRow.id == 1).with_for_update()
            ).one()
            seq = head.seq + 1
            digest = entry_hash(head.hash, seq, entry)
            row = AuditRow(
                seq=seq,
                prev_hash=head.hash,
                hash=digest,
                **entry.model_dump(mode="python", include=set(_ENTRY_FIELDS)),
            )
            session.add(row)
            head.seq, head.hash = seq, digest
            return _record(row)

    def query(
        self,
        tenant_id: str | None,
        *,
        action: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_seq: int = 0,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Entries oldest first; `tenant_id=None` for every tenant's.

        `since` is inclusive, `until` exclusive; `after_seq` pages (pass the last
        seq seen); `limit` is capped at :data:`MAX_QUERY_LIMIT`.
        """
        stmt: Select[AuditRow] = select(AuditRow).where(AuditRow.seq > after_seq)
        if tenant_id is not None:
            stmt = stmt.where(AuditRow.tenant_id == tenant_id)
        if action is not None:
            stmt = stmt.where(AuditRow.action == action)
        if actor is not None:
            stmt = stmt.where(AuditRow.actor == actor)
        if since is not None:
            stmt = stmt.where(AuditRow.at >= as_utc(since))
        if until is not None:
            stmt = stmt.where(AuditRow.at < as_utc(until))
        stmt = stmt.order_by(AuditRow.seq).limit(max(1, min(limit, MAX_QUERY_LIMIT)))
        with self._db.session() as session:
            return [_record(row) for row in session.scalars(stmt)]

    def verify(self) -> int | None:
        """The seq of the first entry that breaks the chain, or None when it holds.

        An entry breaks it when its stored hash is not the hash of its fields, or
        its `prev_hash` (or seq) does not follow the entry before it: after a
        deleted entry, the next one is named. Entries missing at the end are
        named by the first missing seq (the head row remembers the last one).
        """
        prev, last = GENESIS_HASH, 0
        with self._db.session() as session:
            rows = session.scalars(
                select(AuditRow).order_by(AuditRow.seq).execution_options(yield_per=1000)
            )
            for row in rows:
                if row.seq != last + 1 or row.prev_hash != prev:
                    return row.seq
                if entry_hash(prev, row.seq, _entry(row)) != row.hash:
                    return row.seq
                prev, last = row.hash, row.seq
            head = session.get(AuditHeadRow, 1)
            if head is None or head.seq > last:
                return last + 1  # the newest entries were removed
            if head.seq < last:
                return head.seq + 1  # entries written past the chain's head
            if head.hash != prev:
                return last  # the last entry was rewritten, hash and all
        return None
