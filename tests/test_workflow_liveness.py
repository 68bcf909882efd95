"""A dead worker is noticed quickly: every activity heartbeats or is short.

A worker killed while it holds an activity is only noticed when one of the
activity's timeouts fires. For an activity that heartbeats, that is its heartbeat
timeout (`workflows.policies.HEARTBEAT`); for the others, the whole start-to-close
timeout. So every activity that can take more than a few seconds heartbeats, and
the rest have a short start-to-close (`workflows.policies.SHORT_TIMEOUT`). The
kill itself is in `test_workflow_recovery`; here, what the workflow asks for, read
from real histories, and the two heartbeat helpers on a real worker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.heartbeat import heartbeating, heartbeating_in_background
from agentrun.contracts import ToolName
from tests.workflow_harness import finish, outcome, running_worker, scripted_spec, shell, start_run
from workflows.policies import HEARTBEAT, SHORT_TIMEOUT

BLOCK_SECONDS = 3.0
"""How long the helper tests' activities work: three times their heartbeat timeout."""
HELPER_HEARTBEAT_TIMEOUT = timedelta(seconds=1)


async def _chain_histories(client: Client, workflow_id: str, first_run: str) -> list[HistoryEvent]:
    """The events of every Temporal run of an agent run, following continue-as-new."""
    events: list[HistoryEvent] = []
    run_id: str | None = first_run
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        events.extend(history.events)
        last = history.events[-1]
        run_id = None
        if last.event_type == HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return events


@pytest.mark.docker
async def test_every_activity_of_a_run_heartbeats_or_has_a_short_timeout(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    # One sandboxed step, then continue-as-new (store_events), then finish (artifact
    # collection and sandbox removal): every kind of activity but webhooks runs.
    spec = scripted_spec(shell("echo hi"), finish(), tools=[ToolName.SHELL, ToolName.FINISH])
    async with running_worker(client, task_queue, state_dir):
        # Tool calls as normal activities, so their options are in the history too (a
        # local first attempt is bounded by its budget, at most 5 s: `Settings`).
        handle = await start_run(
            client, task_queue, spec, continue_as_new_every=1, local_tool_seconds=0
        )
        await outcome(handle)
        assert handle.first_execution_run_id is not None
        events = await _chain_histories(client, handle.id, handle.first_execution_run_id)

    options = {
        e.activity_task_scheduled_event_attributes.activity_type.name: (
            e.activity_task_scheduled_event_attributes
        )
        for e in events
        if e.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    assert set(options) == {
        "init_run",
        "call_model",
        "dispatch_tool",
        "store_events",
        "store_artifact",
        "sandbox_control",
    }
    slow_to_notice = {
        name: (o.heartbeat_timeout.ToTimedelta(), o.start_to_close_timeout.ToTimedelta())
        for name, o in options.items()
        if not timedelta(0) < o.heartbeat_timeout.ToTimedelta() <= HEARTBEAT
        and o.start_to_close_timeout.ToTimedelta() > SHORT_TIMEOUT
    }
    # (heartbeat timeout, start-to-close) of the activities a dead worker would hold
    # for longer than the heartbeat timeout:
    assert slow_to_notice == {}


@activity.defn(name="liveness_blocking_sync")
def _blocking_sync() -> int:
    """Blocks its thread (as a Docker call does), heartbeating from the background."""
    with heartbeating_in_background(every=0.2):
        time.sleep(BLOCK_SECONDS)
    return activity.info().attempt


@activity.defn(name="liveness_blocking_async")
async def _blocking_async() -> int:
    """Works without heartbeating itself (as a provider call does)."""
    async with heartbeating(every=0.2):
        await asyncio.sleep(BLOCK_SECONDS)
    return activity.info().attempt


@workflow.defn(name="LivenessProbe", sandboxed=False)
class _LivenessProbe:
    """Runs one activity with a heartbeat timeout far shorter than its work, no retries."""

    @workflow.run
    async def run(self, name: str) -> int:
        attempt: int = await workflow.execute_activity(
            name,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=HELPER_HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=1),
            result_type=int,
        )
        return attempt


@pytest.mark.parametrize("name", ["liveness_blocking_sync", "liveness_blocking_async"])
async def test_heartbeat_helpers_keep_an_activity_alive_past_its_heartbeat_timeout(
    client: Client, task_queue: str, name: str
) -> None:
    # Without the helper, the first heartbeat timeout fails the only attempt.
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[_LivenessProbe],
        activities=[_blocking_sync, _blocking_async],
        activity_executor=ThreadPoolExecutor(2),
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        attempt = await client.execute_workflow(
            _LivenessProbe.run, name, id=f"liveness-{uuid.uuid4().hex[:8]}", task_queue=task_queue
        )
    assert attempt == 1
