"""`/metrics`: the API process's series in the Prometheus text format.

    GET /metrics   → text/plain; version=0.0.4   (`agentrun_*`, `temporal_*` client series)

What the series are: `telemetry.metrics` (a table of every one). The worker serves
its own on `AGENTRUN_WORKER_METRICS_PORT`; a deployment scrapes both.

Design (why it looks like this):

* **Who may read it.** The series hold no tenant, run or user names (the
  telemetry module refuses such labels), but they are the whole deployment's
  totals (how many runs, which models, how many approvals wait), which is not one
  tenant's business: by default the route needs an admin key of the *system*
  tenant, like tenant management and the codec server. Prometheus sends one with
  `authorization: {credentials_file: …}`. `AGENTRUN_METRICS_PUBLIC=true` drops the
  key, the usual set-up where the API listens on a private network and the
  scraper cannot hold a secret; the rule is `api.auth.METRICS`.
* **Not rate limited**: a scraper calls every 15 s forever, from one key.
* **Pending approvals are counted at scrape time** by a visibility query (runs
  whose `AgentRunStatus` is `awaiting_approval`), not kept by a counter: a counter
  in a worker is lost with the worker, the visibility store is not. When Temporal
  does not answer in time the gauge keeps its last value and the scrape answers.

This module must not: add a per-tenant or per-run series, or fail a scrape because
Temporal is slow.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from temporalio.service import RPCError

from agentrun.contracts import RunStatus
from agentrun.search_attributes import SA_STATUS, WORKFLOW_TYPE
from api.auth import call_record
from api.deps import SettingsDep, StateDep, TemporalConnection
from api.errors import ApiError, Forbidden, problems
from api.routes.admin import is_system_admin
from telemetry.metrics import PROMETHEUS_CONTENT_TYPE, instruments, render_prometheus

__all__ = ["PENDING_APPROVALS_QUERY", "router"]

log = logging.getLogger("agentrun.api")

router = APIRouter(tags=["observability"])

PENDING_APPROVALS_QUERY = (
    f'WorkflowType = "{WORKFLOW_TYPE}" AND ExecutionStatus = "Running" '
    f'AND {SA_STATUS.name} = "{RunStatus.AWAITING_APPROVAL.value}"'
)
COUNT_TIMEOUT = 2.0


@router.get(
    "/metrics",
    summary="Prometheus metrics of this API process",
    description="The Prometheus text exposition (version 0.0.4) of the API's series: "
    "runs' approvals pending, SSE followers, the Temporal client's `temporal_*` series. "
    "Needs an admin key of the system tenant unless `AGENTRUN_METRICS_PUBLIC=true`.",
    response_class=Response,
    responses={
        200: {
            "description": "The series, in the Prometheus text format",
            "content": {PROMETHEUS_CONTENT_TYPE: {"schema": {"type": "string"}}},
        },
        **problems(403),
    },
)
async def metrics(request: Request, settings: SettingsDep, state: StateDep) -> Response:
    if not settings.metrics_public:
        principal = call_record(request).principal
        if principal is None or not is_system_admin(principal, settings):
            raise Forbidden(
                "the metrics are the whole deployment's: they need an admin key of the "
                "system tenant (or AGENTRUN_METRICS_PUBLIC=true for a private network)"
            )
    await _count_pending_approvals(state.temporal)
    return Response(render_prometheus(), media_type=PROMETHEUS_CONTENT_TYPE)


async def _count_pending_approvals(temporal: TemporalConnection) -> None:
    """Set `agentrun_approvals_pending` from the visibility store; keep it on failure."""
    try:
        client = await asyncio.wait_for(temporal.get(), COUNT_TIMEOUT)
        count = await asyncio.wait_for(
            client.count_workflows(PENDING_APPROVALS_QUERY), COUNT_TIMEOUT
        )
    except (ApiError, RPCError, TimeoutError, RuntimeError) as exc:
        # Temporal down or slow: the scrape still answers, the gauge keeps its value.
        log.warning("metrics: cannot count the runs awaiting approval: %s", exc)
        return
    instruments().approvals_pending.set(count.count)
