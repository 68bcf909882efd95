"""Reading and steering runs through Temporal: the logic behind the run routes.

Everything here goes through typed references on `AgentRunWorkflow` (queries and
updates) or Temporal's describe/visibility APIs; nothing mutates run state
directly. Temporal failures are translated to `api.errors` exceptions here, so
routes and the SSE stream only deal with outcomes.

Reads prefer the live `status`/`events` queries (a worker answers them, also for
ended runs, by replaying history). When no worker answers in time, a run view is
rebuilt from what Temporal recorded: the run's `RunResult` for an ended run (the
workflow's result, its failure's details or its memo: `recorded_result`), else its
search attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from agentrun.config import Settings
from agentrun.contracts import (
    ConflictType,
    EventsPage,
    EventsQuery,
    RunEvent,
    RunResult,
    RunStatus,
    RunStatusView,
    TerminalReason,
    run_ref_from_workflow_id,
)
from agentrun.search_attributes import (
    SA_AGENT,
    SA_CREATED_BY,
    SA_LABELS,
    SA_MODEL,
    SA_STATUS,
    SA_STEPS,
    SA_TRACE_ID,
)
from api.errors import ApiError, Conflict, NotFound, UpstreamTimeout
from api.launcher import MEMO_GOAL, run_handle
from api.schemas import RunLinks, RunSummary, RunView
from store.artifacts import BlobNotFound, TenantStores, get_bytes
from workflows.agent_run import AgentRunWorkflow
from workflows.outcome import MEMO_RESULT, result_from_failure

log = logging.getLogger("agentrun.api")

Handle = WorkflowHandle[Any, Any]

_CLOSED_STATUS = {
    WorkflowExecutionStatus.COMPLETED: RunStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED: RunStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED: RunStatus.FAILED,
    WorkflowExecutionStatus.TIMED_OUT: RunStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: RunStatus.CANCELLED,
}
CONFLICT_TYPES: dict[str, str] = {
    ConflictType.INVALID_TRANSITION: "invalid-transition",
    ConflictType.APPROVAL_MISMATCH: "approval-mismatch",
}
"""The workflow's rejected-control error types → the 409 problem's kind."""
_SEGMENT: TypeAdapter[list[RunEvent]] = TypeAdapter(list[RunEvent])
"""A flushed segment: a JSON array of events (`StoreEventsInput.events`)."""


class RunNotAnswering(Exception):
    """No worker answered the query in time (or the run is between two Temporal runs)."""


def effective_status(
    sa_status: str | None, exec_status: WorkflowExecutionStatus | None
) -> RunStatus:
    """The run's status from visibility data: the workflow's own status attribute,
    unless Temporal itself ended the execution (terminated, timed out …)."""
    recorded = _parse_status(sa_status)
    if exec_status in (None, WorkflowExecutionStatus.RUNNING):
        return recorded or RunStatus.QUEUED
    if exec_status == WorkflowExecutionStatus.COMPLETED and recorded and recorded.terminal:
        return recorded
    return _CLOSED_STATUS.get(exec_status, recorded or RunStatus.FAILED)


def _parse_status(value: str | None) -> RunStatus | None:
    try:
        return RunStatus(value) if value else None
    except ValueError:
        return None


def _labels(values: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, _, val = item.partition("=")
        out[key] = val
    return out


def summary_from_execution(run_id: str, wf: WorkflowExecution, goal: str | None) -> RunSummary:
    sa = wf.typed_search_attributes
    return RunSummary(
        run_id=run_id,
        workflow_id=wf.id,
        status=effective_status(sa.get(SA_STATUS), wf.status),
        agent=sa.get(SA_AGENT),
        model=sa.get(SA_MODEL),
        labels=_labels(sa.get(SA_LABELS)),
        created_by=sa.get(SA_CREATED_BY),
        steps=sa.get(SA_STEPS) or 0,
        goal=goal,
        created_at=wf.start_time,
        closed_at=wf.close_time,
        links=RunLinks.for_run(run_id),
    )


async def describe(handle: Handle) -> WorkflowExecution:
    try:
        return await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"run {_run_id(handle)} does not exist") from None
        raise


def _run_id(handle: Handle) -> str:
    return handle.id.split("/", 2)[-1]


async def query_status(handle: Handle, wait_seconds: float) -> RunStatusView:
    """The live status; :class:`RunNotAnswering` when no worker answers in time."""
    with _query_errors(handle):
        async with asyncio.timeout(wait_seconds):
            view: RunStatusView = await handle.query(
                AgentRunWorkflow.status, rpc_timeout=timedelta(seconds=wait_seconds)
            )
    return view


@contextlib.contextmanager
def _query_errors(handle: Handle) -> Iterator[None]:
    """Query failures → NotFound (no such run), RunNotAnswering (no worker answered in
    time, or the query was rejected); Temporal itself unavailable propagates (503).

    Callers bound the whole query with `asyncio.timeout` as well as its `rpc_timeout`:
    the SDK retries some RPC failures on its own, each retry with a fresh
    `rpc_timeout`, so only an overall deadline bounds what the client waits."""
    try:
        yield
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"run {_run_id(handle)} does not exist") from None
        if err.status == RPCStatusCode.UNAVAILABLE:
            raise
        raise RunNotAnswering(str(err)) from None
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError, TimeoutError) as err:
        raise RunNotAnswering(str(err)) from None


async def run_view(client: Client, settings: Settings, tenant: str, run_id: str) -> RunView:
    handle = run_handle(client, tenant, run_id)
    desc = await describe(handle)
    sa = desc.typed_search_attributes
    goal = await memo_goal(desc)
    common: dict[str, Any] = {
        "run_id": run_id,
        "workflow_id": handle.id,
        "tenant_id": tenant,
        "created_at": desc.start_time,
        "goal": goal,
        "agent": sa.get(SA_AGENT),
        "model": sa.get(SA_MODEL),
        "labels": _labels(sa.get(SA_LABELS)),
        "created_by": sa.get(SA_CREATED_BY),
        "trace_id": sa.get(SA_TRACE_ID),
        "links": RunLinks.for_run(run_id),
    }
    try:
        live = await query_status(handle, settings.api_query_timeout_seconds)
    except RunNotAnswering as err:
        log.info("status query for %s not answered (%s); using recorded state", run_id, err)
    else:
        data = live.model_dump()
        data.pop("run_id", None)
        data.pop("tenant_id", None)
        # The first run's start time is the run's creation time (continue-as-new
        # starts later Temporal runs under the same workflow id).
        common["created_at"] = live.started_at or desc.start_time
        return RunView(**data, **common, source="query")
    status = effective_status(sa.get(SA_STATUS), desc.status)
    if desc.status in _RECORDED_OUTCOME:
        try:
            result = await recorded_result(handle, desc, settings.api_query_timeout_seconds)
        except Exception as err:  # a recorded result that cannot be read: degrade
            log.warning("cannot read the result of %s: %s", run_id, err)
            result = None
        if result is not None:
            return RunView(
                status=result.status,
                reason=result.reason,
                steps=result.steps,
                usage=result.usage,
                final_answer=result.final_answer,
                error=result.error,
                artifacts=result.artifacts,
                finished_at=desc.close_time,
                **common,
                source="result",
            )
    reason: TerminalReason | None = None
    error: str | None = None
    if desc.status not in (None, WorkflowExecutionStatus.RUNNING):
        if status == RunStatus.CANCELLED:
            reason = TerminalReason.CANCELLED
        elif status == RunStatus.FAILED:
            reason = TerminalReason.ERROR
            error = f"the workflow execution ended as {desc.status.name.lower()}"
    return RunView(
        status=status,
        reason=reason,
        error=error,
        steps=sa.get(SA_STEPS) or 0,
        finished_at=desc.close_time,
        **common,
        source="visibility",
    )


_RECORDED_OUTCOME = frozenset(
    {
        WorkflowExecutionStatus.COMPLETED,
        WorkflowExecutionStatus.FAILED,
        WorkflowExecutionStatus.CANCELED,
    }
)
"""Closed statuses whose run recorded its `RunResult` (`workflows.outcome`)."""


async def recorded_result(
    handle: Handle, desc: WorkflowExecution, wait_seconds: float
) -> RunResult | None:
    """The `RunResult` an ended run recorded: the workflow's result when it completed,
    its failure's details when it failed, its memo when it was cancelled (see
    `workflows.outcome`). None when the run recorded none (a Temporal cancel before
    runs recorded one, a failure the workflow did not end with)."""
    if desc.status == WorkflowExecutionStatus.CANCELED:
        memo: RunResult | None = await desc.memo_value(MEMO_RESULT, None, type_hint=RunResult)
        return memo
    try:
        result: RunResult = await handle.result(
            follow_runs=False, rpc_timeout=timedelta(seconds=wait_seconds)
        )
    except WorkflowFailureError as err:
        return result_from_failure(err.cause)
    return result


async def memo_goal(wf: WorkflowExecution) -> str | None:
    """The goal preview kept in the memo (None when absent or undecodable)."""
    try:
        goal = await wf.memo_value(MEMO_GOAL, None)
    except Exception:  # an undecodable memo must not break reads
        return None
    return goal if isinstance(goal, str) else None


class SegmentReader:
    """Reads flushed event segments from the run's tenant's view of the artifact store
    (cached by tenant and digest: they never change, and a tenant reads only its own)."""

    def __init__(self, store: TenantStores, capacity: int = 64) -> None:
        self._stores = store
        self._cache: OrderedDict[tuple[str, str], list[RunEvent]] = OrderedDict()
        self._capacity = capacity

    async def read(self, tenant: str, digest: str) -> list[RunEvent]:
        key = (tenant, digest)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        store = self._stores.for_tenant(tenant)
        try:
            raw = await asyncio.to_thread(get_bytes, store, digest)
        except BlobNotFound:
            log.error("event segment %s is missing from the artifact store", digest)
            raise ApiError(
                "an event segment of this run is missing from the artifact store; "
                "check that the API and the workers share AGENTRUN_ARTIFACT_DIR (or, with "
                "AGENTRUN_ARTIFACT_STORE=s3, AGENTRUN_S3_BUCKET and AGENTRUN_S3_PREFIX)"
            ) from None
        events = _SEGMENT.validate_json(raw)
        self._cache[key] = events
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return events


async def fetch_events(
    handle: Handle, reader: SegmentReader, after: int, limit: int, wait_seconds: float
) -> tuple[list[RunEvent], EventsPage]:
    """Events with `seq > after`, in order, at most `limit`: flushed segments first
    (read as the run's tenant, whose id the workflow id holds), then the run's
    in-memory events. Raises :class:`RunNotAnswering`."""
    tenant, _ = run_ref_from_workflow_id(handle.id)
    with _query_errors(handle):
        async with asyncio.timeout(wait_seconds):
            page: EventsPage = await handle.query(
                AgentRunWorkflow.events,
                EventsQuery(after_seq=after, limit=limit),
                rpc_timeout=timedelta(seconds=wait_seconds),
            )
    merged: dict[int, RunEvent] = {}
    for segment in sorted(page.segments, key=lambda s: s.first_seq):
        if len(merged) >= limit:
            break
        for event in await reader.read(tenant, segment.digest):
            if event.seq > after:
                merged.setdefault(event.seq, event)
    for event in page.events:
        merged.setdefault(event.seq, event)
    ordered = [merged[seq] for seq in sorted(merged)][:limit]
    # Guarantee no gap: stop at the first missing seq (the rest comes next poll).
    contiguous: list[RunEvent] = []
    expected = after + 1
    for event in ordered:
        if event.seq != expected:
            break
        contiguous.append(event)
        expected += 1
    return contiguous, page


async def execute_control(
    handle: Handle, update: Any, arg: Any, wait_seconds: float, action: str
) -> Any:
    """Run a control update, answered within `wait_seconds` whatever Temporal does.

    Invalid transitions become 409 with the run's status; an update no worker
    completed in time becomes 504.

    The bound is an `asyncio.timeout` around the whole call, not only its
    `rpc_timeout`: while no worker accepts an update, Temporal answers it with an
    empty "admitted" response after its long-poll interval (20 s by default), and
    the SDK sends the update again until a worker accepts it. With an `rpc_timeout`
    longer than that interval (30 s by default) the call would never return.
    """
    try:
        async with asyncio.timeout(wait_seconds):
            return await handle.execute_update(
                update, arg, rpc_timeout=timedelta(seconds=wait_seconds)
            )
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type in CONFLICT_TYPES:
            details = cause.details[0] if cause.details else {}
            run_status = details.get("status") if isinstance(details, dict) else None
            raise Conflict(
                cause.message, kind=CONFLICT_TYPES[cause.type], run_status=run_status
            ) from None
        raise
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        # Either the run never existed, or it already ended (updates need a live run).
        desc = await describe(handle)
        status = effective_status(desc.typed_search_attributes.get(SA_STATUS), desc.status)
        raise Conflict(
            f"cannot {action} a run that is {status.value}",
            kind="invalid-transition",
            run_status=status.value,
        ) from None
    except (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError):
        # The SDK turns the timeout's cancellation into its own error: both mean the
        # deadline passed.
        raise UpstreamTimeout(
            f"no worker completed the request to {action} the run within {wait_seconds:g}s "
            "(AGENTRUN_API_UPDATE_TIMEOUT_SECONDS): is an agentrun worker running and polling "
            "the run's task queue? Temporal keeps the request, so a worker may still apply it "
            f"when it picks the run up: check GET /v1/runs/{_run_id(handle)} before retrying"
        ) from None
