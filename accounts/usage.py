"""Usage per run and per tenant, and what it costs.

One row per finished run (tokens in/out, estimated cost, tool seconds, sandbox
seconds, when it finished); a tenant's usage over a period is the sum of its runs'
rows, so `GET /v1/usage`'s totals and its per-run list always agree.

Design (why it looks like this):

* **One row per run, written by upsert** (`record_run` keyed by tenant and run id):
  recording a run again (a retried activity, a replayed finish) replaces its row
  instead of counting it twice.
* **Cost is an estimate from a configurable price table** (`PriceTable`, USD per
  million input/output tokens per model; `AGENTRUN_PRICE_TABLE`); a model the table
  does not name costs 0, so an unpriced local model never trips a cost budget.
* **Periods are calendar periods in UTC** (`period_start`), the ones quota budgets
  count over.

This module must not: enforce budgets (the API does), or read the environment.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.dialects import postgresql, sqlite

from accounts.db import Database
from accounts.errors import InvalidInput
from accounts.models import UsageRow, as_utc
from accounts.tenants import check_tenant_id
from agentrun.contracts import Usage


class ModelPrice(BaseModel):
    """USD per one million tokens."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class PriceTable(RootModel[dict[str, ModelPrice]]):
    """Model name → price, e.g. `{"gpt-4o": {"input": 2.5, "output": 10}}`."""

    root: dict[str, ModelPrice] = Field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> PriceTable:
        """The table `AGENTRUN_PRICE_TABLE` holds (empty when unset)."""
        if not text:
            return cls()
        try:
            return cls.model_validate(json.loads(text))
        except (ValueError, ValidationError) as exc:
            raise InvalidInput(
                'the price table must be JSON like {"model": {"input": 2.5, "output": 10}} '
                f"(USD per million tokens): {exc}"
            ) from None

    def cost(self, model: str, usage: Usage) -> float:
        """Estimated USD for `usage` on `model`; 0 for a model the table does not price."""
        price = self.root.get(model)
        if price is None:
            return 0.0
        return (usage.input_tokens * price.input + usage.output_tokens * price.output) / 1e6


class RunUsage(BaseModel):
    tenant_id: str
    run_id: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    tool_seconds: float
    sandbox_seconds: float
    finished_at: datetime


class UsageTotals(BaseModel):
    """A tenant's usage over `[since, until)` (None: unbounded), summed over its runs."""

    tenant_id: str
    since: datetime | None
    until: datetime | None
    runs: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    tool_seconds: float
    sandbox_seconds: float

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def period_start(period: Literal["day", "month"], now: datetime) -> datetime:
    """Start (UTC) of the calendar day or month holding `now`: where budgets reset."""
    now = as_utc(now)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return start.replace(day=1) if period == "month" else start


class UsageLedger:
    """The per-run usage table.

    >>> ledger = UsageLedger(db)
    >>> ledger.record_run("acme", "r1", input_tokens=10, output_tokens=5, cost_usd=0.0,
    ...                   tool_seconds=1.5, sandbox_seconds=3.0, finished_at=now)
    >>> ledger.totals("acme").runs
    1
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def record_run(
        self,
        tenant_id: str,
        run_id: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float,
        tool_seconds: float,
        sandbox_seconds: float,
        finished_at: datetime,
    ) -> None:
        """Record (or replace) the run's usage: idempotent per run."""
        check_tenant_id(tenant_id)
        if not 0 < len(run_id) <= 128:
            raise InvalidInput("a run id must be 1-128 characters")
        counts = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": cost_usd,
            "tool_seconds": tool_seconds,
            "sandbox_seconds": sandbox_seconds,
        }
        negative = [name for name, value in counts.items() if value < 0]
        if negative:
            raise InvalidInput(f"usage cannot be negative: {', '.join(negative)}")
        values = {
            **counts,
            "finished_at": as_utc(finished_at),
            "recorded_at": datetime.now(UTC),
        }
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = insert(UsageRow).values(tenant_id=tenant_id, run_id=run_id, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["tenant_id", "run_id"], set_=values)
        with self._db.session() as session:
            session.execute(stmt)

    def totals(
        self, tenant_id: str, since: datetime | None = None, until: datetime | None = None
    ) -> UsageTotals:
        """The tenant's runs finished in `[since, until)`, summed."""
        stmt = select(
            func.count(),
            func.coalesce(func.sum(UsageRow.input_tokens), 0),
            func.coalesce(func.sum(UsageRow.output_tokens), 0),
            func.coalesce(func.sum(UsageRow.cost_usd), 0.0),
            func.coalesce(func.sum(UsageRow.tool_seconds), 0.0),
            func.coalesce(func.sum(UsageRow.sandbox_seconds), 0.0),
        ).where(*_window(tenant_id, since, until))
        with self._db.session() as session:
            runs, tin, tout, cost, tool, sandbox = session.execute(stmt).one()
        return UsageTotals(
            tenant_id=tenant_id,
            since=since,
            until=until,
            runs=int(runs),
            input_tokens=int(tin),
            output_tokens=int(tout),
            cost_usd=float(cost),
            tool_seconds=float(tool),
            sandbox_seconds=float(sandbox),
        )

    def by_run(
        self,
        tenant_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        limit: int = 1000,
    ) -> list[RunUsage]:
        """The tenant's runs finished in `[since, until)`, newest first (at most `limit`)."""
        stmt = select(UsageRow).where(*_window(tenant_id, since, until))
        stmt = stmt.order_by(UsageRow.finished_at.desc(), UsageRow.run_id).limit(max(1, limit))
        with self._db.session() as session:
            return [
                RunUsage(
                    tenant_id=row.tenant_id,
                    run_id=row.run_id,
                    input_tokens=row.input_tokens,
                    output_tokens=row.output_tokens,
                    cost_usd=row.cost_usd,
                    tool_seconds=row.tool_seconds,
                    sandbox_seconds=row.sandbox_seconds,
                    finished_at=row.finished_at,
                )
                for row in session.scalars(stmt)
            ]


def _window(
    tenant_id: str, since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    """The conditions selecting the tenant's runs finished in `[since, until)`."""
    conditions = [UsageRow.tenant_id == tenant_id]
    if since is not None:
        conditions.append(UsageRow.finished_at >= as_utc(since))
    if until is not None:
        conditions.append(UsageRow.finished_at < as_utc(until))
    return conditions
