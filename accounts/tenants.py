"""Tenants and their quotas.

A tenant is the unit of isolation: its runs, artifacts, keys, usage and audit
entries are its own, and another tenant's are invisible to it. Each has a quota
the API enforces at launch.

Design (why it looks like this):

* **Tenant ids follow `agentrun.contracts.NAME_PATTERN`**: they become part of
  workflow ids, search attributes and sandbox names, so they must be safe there.
* **The quota is one JSON column** read into :class:`Quota`: a new quota field is a
  default on the model, not a migration. `None` means "no limit".

This module must not: enforce quotas (the API does, at launch), or delete a tenant
(its audit trail and usage outlive it).
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from accounts.db import Database
from accounts.errors import Conflict, InvalidInput, NotFound
from accounts.models import TenantRow
from agentrun.contracts import NAME_RULE, is_name


class Quota(BaseModel):
    """What a tenant may use; every limit `None` (the default) means unlimited."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent_runs: int | None = Field(default=None, ge=1)
    """Runs of the tenant running at once; a launch over it answers 429 (or queues)."""
    max_steps_per_run: int | None = Field(default=None, ge=1)
    """A spec asking for more steps is refused at launch (422)."""
    max_tokens_per_run: int | None = Field(default=None, ge=1)
    """A spec asking for a larger token budget is refused at launch (422)."""
    token_budget: int | None = Field(default=None, ge=0)
    """Tokens (in + out) the tenant's runs may use per `budget_period`."""
    cost_budget_usd: float | None = Field(default=None, ge=0)
    """Estimated cost (USD, from the price table) per `budget_period`."""
    budget_period: Literal["day", "month"] = "month"
    """The calendar period (UTC) the budgets count over."""
    queue_when_busy: bool = False
    """At `max_concurrent_runs`, queue a launch instead of refusing it with 429."""


class TenantRecord(BaseModel):
    tenant_id: str
    name: str
    quota: Quota
    created_at: datetime


def _record(row: TenantRow) -> TenantRecord:
    return TenantRecord(
        tenant_id=row.tenant_id,
        name=row.name,
        quota=Quota.model_validate(row.quota),
        created_at=row.created_at,
    )


def check_tenant_id(tenant_id: str) -> str:
    """`tenant_id` if it is a valid tenant id; :class:`InvalidInput` otherwise."""
    if not is_name(tenant_id):
        raise InvalidInput(f"invalid tenant id {tenant_id!r}: use {NAME_RULE}")
    return tenant_id


class Tenants:
    """The tenants table.

    >>> tenants = Tenants(db)
    >>> tenants.create("acme", quota=Quota(max_concurrent_runs=5))
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(
        self, tenant_id: str, name: str | None = None, quota: Quota | None = None
    ) -> TenantRecord:
        """Create a tenant; :class:`Conflict` if it exists, :class:`InvalidInput` for a bad id."""
        check_tenant_id(tenant_id)
        if name is not None and not 0 < len(name.strip()) <= 200:
            raise InvalidInput("a tenant's name must be 1-200 characters")
        row = TenantRow(
            tenant_id=tenant_id,
            name=name.strip() if name else tenant_id,
            quota=(quota or Quota()).model_dump(mode="json"),
            created_at=datetime.now(UTC),
        )
        try:
            with self._db.session() as session:
                if session.get(TenantRow, tenant_id) is not None:
                    raise Conflict(f"tenant {tenant_id!r} exists already")
                session.add(row)
        except IntegrityError:  # created by another process between the check and insert
            raise Conflict(f"tenant {tenant_id!r} exists already") from None
        return _record(row)

    def get(self, tenant_id: str) -> TenantRecord | None:
        with self._db.session() as session:
            row = session.get(TenantRow, tenant_id)
            return None if row is None else _record(row)

    def list(self) -> builtins.list[TenantRecord]:
        """Every tenant, by id."""
        with self._db.session() as session:
            rows = session.scalars(select(TenantRow).order_by(TenantRow.tenant_id)).all()
            return [_record(row) for row in rows]

    def set_quota(self, tenant_id: str, quota: Quota) -> TenantRecord:
        """Replace the tenant's quota; :class:`NotFound` if there is no such tenant."""
        with self._db.session() as session:
            row = session.get(TenantRow, tenant_id)
            if row is None:
                raise NotFound(f"no tenant {tenant_id!r}")
            row.quota = quota.model_dump(mode="json")
            return _record(row)
