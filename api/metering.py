"""Usage per run and per tenant: recording finished runs into the usage ledger.

    await record_view(accounts, view)              # a run view the API just built
    await reconcile(client, settings, accounts, tenant, since)   # before any sum

A run's usage (tokens in and out, the estimated cost from the deployment's price
table, keyed by the run's `model`, `provider:name` or just `name`, and the tool and
sandbox seconds the workflow measured) is written to
`accounts.usage.UsageLedger` once the run has ended: one row per run, replaced
when written again (idempotent).

Design (why it looks like this):

* **It cannot miss a run.** The ledger is written when the API first sees a run
  ended (a run view with a terminal status), and :func:`reconcile` runs before every
  sum (`GET /v1/usage`, a budget check at launch): it lists the tenant's ended runs
  in the period from Temporal visibility and records each the ledger lacks, from
  the result the run recorded. The sums are therefore those of the runs, whoever
  looked at them.
* **Seconds come from the run's own result** (`Usage.tool_seconds`, each tool
  call's wall time as its activity measured it; `Usage.sandbox_seconds`, workflow
  time from the first sandbox tool call to the container's removal). Runs that
  ended before they were measured recorded 0, and are counted so.
* Runs still in progress are not counted until they end (their usage can still
  grow); a budget therefore stops new launches, not runs already going.

This module must not: count anything but what the runs recorded.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from temporalio.client import Client

from agentrun.config import Settings
from agentrun.contracts import Usage
from agentrun.search_attributes import SA_MODEL, SA_TENANT
from api.accounts_conn import AccountsConnection
from api.launcher import run_handle
from api.schemas import RunView
from api.service import recorded_result

__all__ = ["reconcile", "record_view"]

log = logging.getLogger("agentrun.api")

LIST_TIMEOUT = timedelta(seconds=10)


def _cost(accounts: AccountsConnection, model: str | None, usage: Usage) -> float:
    """Priced by the run's `provider:name`, else by its `name` alone."""
    label = model or ""
    prices = accounts.prices.root
    key = label if label in prices else label.split(":", 1)[-1]
    return accounts.prices.cost(key, usage)


async def _record(
    accounts: AccountsConnection,
    tenant: str,
    run_id: str,
    model: str | None,
    usage: Usage,
    finished_at: datetime,
) -> None:
    await asyncio.to_thread(
        accounts.usage.record_run,
        tenant,
        run_id,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=_cost(accounts, model, usage),
        tool_seconds=usage.tool_seconds,
        sandbox_seconds=usage.sandbox_seconds,
        finished_at=finished_at,
    )


async def record_view(accounts: AccountsConnection, view: RunView) -> None:
    """Record an ended run's usage from its view (nothing for a run still going)."""
    if not view.status.terminal or view.finished_at is None:
        return
    try:
        await _record(
            accounts, view.tenant_id, view.run_id, view.model, view.usage, view.finished_at
        )
    except Exception:  # a read must not fail because the ledger did; reconcile catches up
        log.exception("could not record the usage of run %s", view.run_id)


async def reconcile(
    client: Client,
    settings: Settings,
    accounts: AccountsConnection,
    tenant: str,
    since: datetime | None,
) -> int:
    """Record every ended run of `tenant` (closed at or after `since`) the ledger lacks;
    returns how many were added."""
    known = {
        r.run_id
        for r in await asyncio.to_thread(accounts.usage.by_run, tenant, since, None, limit=10**6)
    }
    # A continued-as-new execution is closed while its run goes on in the next one.
    query = (
        f"{SA_TENANT.name} = '{tenant}' AND ExecutionStatus != 'Running' "
        "AND ExecutionStatus != 'ContinuedAsNew'"
    )
    if since is not None:
        query += f" AND CloseTime >= '{since.isoformat()}'"
    added = 0
    async for wf in client.list_workflows(query, rpc_timeout=LIST_TIMEOUT):
        run_id = wf.id.split("/", 2)[-1]
        if run_id in known or wf.close_time is None:
            continue
        known.add(run_id)
        handle = run_handle(client, tenant, run_id)
        try:
            desc = await handle.describe()
            result = await recorded_result(handle, desc, settings.api_query_timeout_seconds)
        except Exception as err:  # unreadable: counted as no usage, said in the log
            log.warning("cannot read the result of run %s for usage: %s", run_id, err)
            result = None
        usage = result.usage if result is not None else Usage()
        model = wf.typed_search_attributes.get(SA_MODEL)
        await _record(accounts, tenant, run_id, model, usage, wf.close_time)
        added += 1
    return added
