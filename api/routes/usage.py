"""`GET /v1/usage`: the caller's tenant's usage over a period, in total and per run.

The totals are the sums of the per-run rows (`api.metering` records every ended
run, reconciling with Temporal before it answers), so they add up to the runs
listed. Tool and sandbox seconds are those the runs measured (`agentrun.contracts.Usage`).

This module must not: count a run of another tenant.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import AccountsDep, ClientDep, SettingsDep, TenantDep
from api.errors import problems
from api.metering import reconcile
from api.queries import Timestamp

router = APIRouter(prefix="/v1/usage", tags=["usage"])

TOOL_SECONDS = "Wall time of the tool calls, as the tool activity measured each"
SANDBOX_SECONDS = (
    "Time a sandbox was held: from the first sandbox tool call to the container's "
    "removal, paused time included (0 for a run that used no sandbox tool)"
)


class RunUsageView(BaseModel):
    run_id: str
    input_tokens: int
    output_tokens: int
    cost_usd: float = Field(description="Estimated from AGENTRUN_PRICE_TABLE (0: unpriced)")
    tool_seconds: float = Field(description=TOOL_SECONDS)
    sandbox_seconds: float = Field(description=SANDBOX_SECONDS)
    finished_at: datetime


class UsageReport(BaseModel):
    tenant_id: str
    since: datetime | None
    until: datetime | None
    runs: int = Field(description="Runs that ended in the period")
    input_tokens: int
    output_tokens: int
    cost_usd: float
    tool_seconds: float = Field(description=TOOL_SECONDS)
    sandbox_seconds: float = Field(description=SANDBOX_SECONDS)
    by_run: list[RunUsageView] = Field(description="The runs summed, newest first")


def _utc(value: datetime | None) -> datetime | None:
    """A time without a zone is UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@router.get(
    "",
    response_model=UsageReport,
    summary="Usage of the caller's tenant (runs that ended in the period)",
    responses=problems(422, 503),
)
async def get_usage(
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    accounts: AccountsDep,
    since: Annotated[
        Timestamp | None, Query(description="Ended at or after (UTC when no zone is given)")
    ] = None,
    until: Annotated[Timestamp | None, Query(description="Ended before")] = None,
) -> UsageReport:
    since, until = _utc(since), _utc(until)
    await reconcile(client, settings, accounts, tenant, since)
    totals = await asyncio.to_thread(accounts.usage.totals, tenant, since, until)
    runs = await asyncio.to_thread(accounts.usage.by_run, tenant, since, until, limit=10**6)
    return UsageReport(
        tenant_id=tenant,
        since=since,
        until=until,
        runs=totals.runs,
        input_tokens=totals.input_tokens,
        output_tokens=totals.output_tokens,
        cost_usd=totals.cost_usd,
        # Sums of millisecond values, without the float noise of adding them.
        tool_seconds=round(totals.tool_seconds, 3),
        sandbox_seconds=round(totals.sandbox_seconds, 3),
        by_run=[
            RunUsageView(
                run_id=r.run_id,
                input_tokens=r.input_tokens,
                output_tokens=r.output_tokens,
                cost_usd=r.cost_usd,
                tool_seconds=r.tool_seconds,
                sandbox_seconds=r.sandbox_seconds,
                finished_at=r.finished_at,
            )
            for r in runs
        ],
    )
