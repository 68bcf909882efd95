"""Helpers for workflow tests: a real worker on a fresh task queue, scripted turns.

The scripted model is the only test double; Temporal, Docker and the artifact
store are the real ones. Runs start through the production launcher
(`api.launcher.start_run`), so tests see the workflow ids, search attributes, memo
and id policies that the API and the CLI give every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter
from temporalio.api.testservice.v1 import LockTimeSkippingRequest, UnlockTimeSkippingRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from agentrun.config import Settings, load_settings
from agentrun.contracts import (
    Actor,
    ApprovalDecision,
    EventPayload,
    EventsPage,
    EventsQuery,
    EventType,
    ModelRef,
    RunEvent,
    RunResult,
    RunSpec,
    RunStatusView,
    ScriptedToolCall,
    ScriptedTurn,
    run_ref_from_workflow_id,
)
from api import launcher
from api.service import recorded_result
from store.artifacts import LocalArtifactStore, get_bytes
from tests.conftest import temporal_cli
from worker import build_worker
from workflows.agent_run import AgentRunWorkflow

P = TypeVar("P", bound=EventPayload)

TENANT = "test"
ALICE = Actor(subject="alice@example.com", kind="engineer")
WEBHOOK_SECRET = "test-webhook-secret"


def worker_settings(state_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "default_provider": "scripted",
        "webhook_secret": WEBHOOK_SECRET,
        # Test receivers listen on loopback, which webhooks may reach only when allowed.
        "webhook_allow_networks": ["127.0.0.1/32"],
        # Tests stop their workers mid-call on purpose (a worker that goes away); the
        # drain on SIGTERM is tests/test_worker_drain.py's.
        "worker_drain_seconds": 0,
        "sandbox_pool_size": 0,
        # A namespace per worker: the janitor and pool of one never touch another's.
        "sandbox_namespace": f"t-{uuid.uuid4().hex[:10]}",
    }
    values.update(overrides)
    return load_settings(**values)


_STARTED: dict[str, list[WorkflowHandle[Any, Any]]] = {}
"""The runs `start_run` started, by task queue (see `running_worker`)."""


async def _terminate_open_runs(task_queue: str) -> None:
    for handle in _STARTED.pop(task_queue, []):
        # Best effort: never hide the failure that left the run open behind a new one.
        with contextlib.suppress(RPCError):
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("the test ended before the run did")


@asynccontextmanager
async def running_worker(
    client: Client, task_queue: str, state_dir: Path, **overrides: Any
) -> AsyncIterator[Settings]:
    """A worker on `task_queue`; runs the harness started there and left open end with it.

    A run left open by a failing test would otherwise wake up later with no worker,
    and on the time-skipping server its pending workflow task would hold the shared
    clock, hanging every later test that waits on a timer.
    """
    settings = worker_settings(state_dir, **overrides)
    worker = build_worker(client, settings, task_queue=task_queue)
    async with worker:
        try:
            yield settings
        finally:
            await _terminate_open_runs(task_queue)


SUGGEST_CONTINUE_AS_NEW_AFTER = 40
"""History events after which `early_continue_as_new_args` servers suggest continue-as-new."""


def early_continue_as_new_args(events: int) -> list[str]:
    """Dev-server flags: Temporal suggests continue-as-new past `events` history events.

    Its default (4,096) takes hundreds of tool calls to reach; lowered, a test-sized
    turn crosses it between two of its calls. The threshold is server configuration,
    so such tests start a dev server of their own.
    """
    return ["--dynamic-config-value", f"limit.historyCount.suggestContinueAsNew={events}"]


def call(name: str, **arguments: Any) -> ScriptedToolCall:
    return ScriptedToolCall(name=name, arguments=arguments)


def turn(*calls: ScriptedToolCall, **kw: Any) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=list(calls), **kw)


def shell(command: str, **kw: Any) -> ScriptedTurn:
    return turn(call("shell", command=command), **kw)


def finish(answer: str = "done", **kw: Any) -> ScriptedTurn:
    return turn(call("finish", answer=answer), **kw)


def scripted_spec(*turns: ScriptedTurn, **kw: Any) -> RunSpec:
    return RunSpec(
        goal=kw.pop("goal", "test goal"),
        model=ModelRef(provider="scripted", script=list(turns)),
        **kw,
    )


async def start_run(
    client: Client,
    task_queue: str,
    spec: RunSpec,
    *,
    continue_as_new_every: int = 200,
    idle_stop_seconds: float | None = None,
    local_tool_seconds: float | None = None,
) -> WorkflowHandle[Any, Any]:
    """Start a run for `TENANT` as `ALICE` through the launcher, on the test's queue.

    The handle follows the run across continue-as-new; its `first_execution_run_id`
    names the first Temporal run (whose history `record_histories` keeps).
    `idle_stop_seconds` overrides `AGENTRUN_SANDBOX_IDLE_STOP_SECONDS` (0: never),
    `local_tool_seconds` `AGENTRUN_LOCAL_TOOL_CALL_SECONDS` (0: no local tool calls).
    """
    extra: dict[str, float] = {}
    if idle_stop_seconds is not None:
        extra["sandbox_idle_stop_seconds"] = idle_stop_seconds
    if local_tool_seconds is not None:
        extra["local_tool_call_seconds"] = local_tool_seconds
    settings = load_settings(
        task_queue=task_queue, continue_as_new_after_steps=continue_as_new_every, **extra
    )
    started = await launcher.start_run(client, settings, TENANT, spec, ALICE, task_queue=task_queue)
    described = await client.get_workflow_handle(started.workflow_id).describe()
    first_run = described.raw_description.workflow_execution_info.first_run_id or described.run_id
    handle: WorkflowHandle[AgentRunWorkflow, RunResult] = client.get_workflow_handle_for(
        AgentRunWorkflow.run, started.workflow_id, first_execution_run_id=first_run
    )
    _STARTED.setdefault(task_queue, []).append(handle)
    return handle


@asynccontextmanager
async def skipping_time(env: WorkflowEnvironment) -> AsyncIterator[None]:
    """Let the time-skipping server's clock jump to the next timer while inside.

    The server skips only while nothing is in flight (a workflow task or an activity
    holds the clock), so timers fire at once and real work still runs in real time.
    The SDK unlocks the clock by itself only while a handle *it* returned from
    `start_workflow` awaits its result; the launcher keeps that handle, so tests
    unlock it here, around the part of the test that waits on timers.
    """
    await env.client.test_service.unlock_time_skipping(UnlockTimeSkippingRequest())
    try:
        yield
    finally:
        await env.client.test_service.lock_time_skipping(LockTimeSkippingRequest())


async def outcome(handle: WorkflowHandle[Any, Any]) -> RunResult:
    """Wait for the run to end and read its `RunResult` as the API does (whatever
    Temporal status it ended with: `api.service.recorded_result`)."""
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    # The handle names no Temporal run: describe and read the latest (the one that ended).
    result = await recorded_result(handle, await handle.describe(), 30.0)
    assert result is not None, f"run {handle.id} recorded no result"
    return result


async def temporal(client: Client, *args: str) -> tuple[int, str]:
    """Run the real `temporal` CLI against `client`'s server, as an engineer would
    (`temporal workflow signal …`); its exit code and its output."""
    proc = await asyncio.create_subprocess_exec(
        temporal_cli(),
        *args,
        "--address",
        client.service_client.config.target_host,
        "--namespace",
        client.namespace,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def status(handle: WorkflowHandle[Any, Any]) -> RunStatusView:
    return await handle.query(AgentRunWorkflow.status)


async def approve_pending(
    handle: WorkflowHandle[Any, Any], view: RunStatusView, actor: Actor = ALICE
) -> None:
    """Approve the call `view` shows waiting for an approval, as an engineer does."""
    pending = view.pending_approval
    assert pending is not None, view
    await handle.execute_update(
        AgentRunWorkflow.approve,
        ApprovalDecision(
            approval_id=pending.approval_id,
            arguments_digest=pending.call.arguments_digest,
            actor=actor,
        ),
    )


async def wait_for(
    handle: WorkflowHandle[Any, Any],
    predicate: Callable[[RunStatusView], bool],
    timeout: float = 60.0,
) -> RunStatusView:
    """Poll the status query until `predicate` holds (bounded; fails with the last view)."""
    deadline = asyncio.get_running_loop().time() + timeout
    view: RunStatusView | None = None
    while True:
        try:
            # Queries need a worker; one still starting (or just killed) is not an error.
            view = await handle.query(AgentRunWorkflow.status, rpc_timeout=timedelta(seconds=5))
        except RPCError:
            view = None
        if view is not None and predicate(view):
            return view
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s; last status: {view}")
        await asyncio.sleep(0.1)


_SEGMENT: TypeAdapter[list[RunEvent]] = TypeAdapter(list[RunEvent])


async def all_events(
    handle: WorkflowHandle[Any, Any], store_root: Path | None = None
) -> list[RunEvent]:
    """Every event of the run: flushed segments (from the run's tenant's view of the
    local store at `store_root`) then in-memory ones."""
    page: EventsPage = await handle.query(
        AgentRunWorkflow.events, EventsQuery(after_seq=0, limit=5000)
    )
    events: list[RunEvent] = []
    if page.segments:
        assert store_root is not None, "segments present: pass the artifact store root"
        tenant, _ = run_ref_from_workflow_id(handle.id)
        store = LocalArtifactStore(store_root).for_tenant(tenant)
        for seg in page.segments:
            events.extend(_SEGMENT.validate_json(get_bytes(store, seg.digest)))
    events.extend(page.events)
    return events


def types(events: list[RunEvent]) -> list[EventType]:
    return [e.type for e in events]


def payloads(events: list[RunEvent], kind: type[P]) -> list[P]:
    """The payloads of one event type, typed (events are read by attribute, never by key)."""
    return [e.payload for e in events if isinstance(e.payload, kind)]
