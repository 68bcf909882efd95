"""Helpers for workflow tests: a real worker on a fresh task queue, scripted turns.

The scripted model is the only test double; Temporal, Docker and the artifact
store are the real ones.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from agentrun.config import Settings, load_settings
from agentrun.contracts import (
    Actor,
    EventsPage,
    EventsQuery,
    EventType,
    ModelRef,
    RunEvent,
    RunInput,
    RunSpec,
    RunStatusView,
    ScriptedToolCall,
    ScriptedTurn,
    workflow_id_for,
)
from worker import build_worker
from workflows.agent_run import AgentRunWorkflow

TENANT = "test"
ALICE = Actor(subject="alice@example.com", kind="engineer")
WEBHOOK_SECRET = "test-webhook-secret"


def worker_settings(state_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "default_provider": "scripted",
        "webhook_secret": WEBHOOK_SECRET,
        "sandbox_pool_size": 0,
        # A namespace per worker: the janitor and pool of one never touch another's.
        "sandbox_namespace": f"t-{uuid.uuid4().hex[:10]}",
    }
    values.update(overrides)
    return load_settings(**values)


@asynccontextmanager
async def running_worker(
    client: Client, task_queue: str, state_dir: Path, **overrides: Any
) -> AsyncIterator[Settings]:
    settings = worker_settings(state_dir, **overrides)
    worker = build_worker(client, settings, task_queue=task_queue)
    async with worker:
        yield settings


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
    run_id: str | None = None,
) -> WorkflowHandle[Any, Any]:
    run_id = run_id or uuid.uuid4().hex[:16]
    return await client.start_workflow(
        AgentRunWorkflow.run,
        RunInput(
            run_id=run_id,
            tenant_id=TENANT,
            spec=spec,
            created_by=ALICE,
            continue_as_new_every=continue_as_new_every,
        ),
        id=workflow_id_for(TENANT, run_id),
        task_queue=task_queue,
    )


async def status(handle: WorkflowHandle[Any, Any]) -> RunStatusView:
    return await handle.query(AgentRunWorkflow.status)


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


async def all_events(
    handle: WorkflowHandle[Any, Any], store_root: Path | None = None
) -> list[RunEvent]:
    """Every event of the run: flushed segments (from the store) then in-memory ones."""
    from activities.artifact_store import LocalArtifactStore, get_bytes

    page: EventsPage = await handle.query(
        AgentRunWorkflow.events, EventsQuery(after_seq=0, limit=5000)
    )
    events: list[RunEvent] = []
    if page.segments:
        assert store_root is not None, "segments present: pass the artifact store root"
        store = LocalArtifactStore(store_root)
        import json

        for seg in page.segments:
            events.extend(
                RunEvent.model_validate(e) for e in json.loads(get_bytes(store, seg.digest))
            )
    events.extend(page.events)
    return events


def types(events: list[RunEvent]) -> list[EventType]:
    return [e.type for e in events]
