"""A tenant's quota, checked at launch: concurrent runs, steps, tokens and budgets.

    slots = await check_launch(client, settings, accounts, tenant, spec)  # raises, or
    await start_run(..., slots=slots)        # the concurrency quota the start applies

What a launch over each limit answers (the limits are the tenant's `Quota`, set by
a system admin, `PUT /v1/admin/tenants/{tenant}/quota`):

| limit                  | over it                                             |
|------------------------|-----------------------------------------------------|
| `max_steps_per_run`    | 422 naming the quota (`limits.max_steps` over it)   |
| `max_tokens_per_run`   | 422 (`limits.max_tokens` unset or over it)           |
| `token_budget`,        | 429 `budget-exhausted`, `Retry-After` = the seconds  |
| `cost_budget_usd`      | until the period (`budget_period`, UTC) starts again |
| `max_concurrent_runs`  | 429 `quota-exceeded`, `Retry-After`; with           |
|                        | `queue_when_busy`, 202: the run waits, `queued`     |

Design (why it looks like this):

* **Refuse, do not clamp** (as `api.admission`): a run given fewer steps than it
  asked for fails later and somewhere else.
* **Concurrent runs are counted by the tenant's slots workflow**
  (`workflows.tenant_slots`, through `api.slots` and `api.launcher.start_run`),
  an exact semaphore every API process shares: of N launches racing for k free
  slots, exactly k start. Visibility (which lags a second) would let them all pass.
  `check_launch` only reads the quota; the start acquires the slot, as it needs the
  run's workflow id (a retried launch then takes no second slot).
* **Budgets count ended runs** (`api.metering`, reconciled first), so a budget
  stops new launches, not the runs already going.
* **Queueing** (`queue_when_busy`): at the limit, the run starts `queued` and waits
  in the tenant's queue (first in, first out) until a run ends; it can be cancelled
  while it waits. Its deadline counts from when it leaves the queue.

This module must not: start, stop or change runs.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

from temporalio.client import Client

from accounts.tenants import Quota
from accounts.usage import period_start
from agentrun.config import Settings
from agentrun.contracts import RunSpec
from api.accounts_conn import AccountsConnection
from api.errors import BadRequest, TooManyRequests
from api.metering import reconcile
from api.slots import SlotLimit, SlotRefused

__all__ = ["BUSY_RETRY_SECONDS", "busy", "check_launch", "spec_refusals"]

BUSY_RETRY_SECONDS = 10
"""`Retry-After` when the tenant runs its maximum of concurrent runs: a run's steps
take seconds, so a slot rarely frees sooner."""


def spec_refusals(quota: Quota, spec: RunSpec) -> list[dict[str, object]]:
    """The field errors of a spec over the tenant's per-run limits (empty: none)."""
    errors: list[dict[str, object]] = []
    steps = quota.max_steps_per_run
    if steps is not None and spec.limits.max_steps > steps:
        errors.append(
            {
                "loc": ["body", "limits", "max_steps"],
                "msg": f"limits.max_steps={spec.limits.max_steps} exceeds this tenant's "
                f"quota max_steps_per_run={steps}; ask for at most {steps}",
                "type": "quota_exceeded",
            }
        )
    tokens = quota.max_tokens_per_run
    if tokens is not None and (spec.limits.max_tokens is None or spec.limits.max_tokens > tokens):
        asked = "unset" if spec.limits.max_tokens is None else str(spec.limits.max_tokens)
        errors.append(
            {
                "loc": ["body", "limits", "max_tokens"],
                "msg": f"limits.max_tokens is {asked}, but this tenant's quota "
                f"max_tokens_per_run={tokens} needs it set to at most {tokens}",
                "type": "quota_exceeded",
            }
        )
    return errors


def _period_end(start: datetime, period: str) -> datetime:
    if period == "day":
        return start + timedelta(days=1)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


async def check_launch(
    client: Client, settings: Settings, accounts: AccountsConnection, tenant: str, spec: RunSpec
) -> SlotLimit | None:
    """Raise the problem a launch of `spec` by `tenant` gets from its quota, if any;
    otherwise the concurrency quota its start must apply (None: unlimited)."""
    record = await asyncio.to_thread(accounts.tenants.get, tenant)
    if record is None:
        return None  # a tenant without a row (auth off, dev tenant): no quota
    quota = record.quota
    errors = spec_refusals(quota, spec)
    if errors:
        raise BadRequest("; ".join(str(e["msg"]) for e in errors), errors=errors)
    if quota.token_budget is not None or quota.cost_budget_usd is not None:
        await _check_budget(client, settings, accounts, tenant, quota)
    if quota.max_concurrent_runs is None:
        return None
    return SlotLimit(quota.max_concurrent_runs, wait=quota.queue_when_busy)


def busy(refused: SlotRefused) -> TooManyRequests:
    """The 429 of a launch the tenant's slots refused."""
    return TooManyRequests(
        f"this tenant runs {refused.holders} runs, its quota max_concurrent_runs="
        f"{refused.limit}; retry when one has ended (or have a system admin set "
        "queue_when_busy to queue launches instead)",
        kind="quota-exceeded",
        retry_after=BUSY_RETRY_SECONDS,
    )


async def _check_budget(
    client: Client, settings: Settings, accounts: AccountsConnection, tenant: str, quota: Quota
) -> None:
    now = datetime.now(UTC)
    start = period_start(quota.budget_period, now)
    await reconcile(client, settings, accounts, tenant, start)
    totals = await asyncio.to_thread(accounts.usage.totals, tenant, start, None)
    spent: str | None = None
    if quota.token_budget is not None and totals.tokens >= quota.token_budget:
        spent = f"{totals.tokens} tokens of its token_budget={quota.token_budget}"
    elif quota.cost_budget_usd is not None and totals.cost_usd >= quota.cost_budget_usd:
        spent = f"{totals.cost_usd:.4f} USD of its cost_budget_usd={quota.cost_budget_usd}"
    if spent is not None:
        retry = max(1, math.ceil((_period_end(start, quota.budget_period) - now).total_seconds()))
        raise TooManyRequests(
            f"this tenant has spent {spent} this {quota.budget_period} (UTC); "
            "new runs start again when the period does",
            kind="budget-exhausted",
            retry_after=retry,
        )
