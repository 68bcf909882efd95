"""Crash recovery: SIGKILL the worker mid-run; a new worker finishes the same run.

Proof that no completed tool call runs twice and none is lost: every shell step
appends one line to a file in the run's workspace, and the final file holds each
line exactly once. And a worker that dies holding an activity is noticed within
the activity's heartbeat timeout, not its (much longer) start-to-close timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.api.enums.v1 import PendingActivityState, TaskQueueType, TimeoutType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from agentrun.contracts import EventType, RunStatus
from store.artifacts import LocalArtifactStore, get_bytes
from tests.conftest import ROOT
from tests.workflow_harness import (
    TENANT,
    WEBHOOK_SECRET,
    all_events,
    finish,
    outcome,
    scripted_spec,
    shell,
    start_run,
    wait_for,
)
from workflows.agent_run import AgentRunWorkflow
from workflows.policies import HEARTBEAT

# The workers here are `worker.py` processes with the real Docker sandbox; the
# conftest's marking sees only in-process workers, so this module says it itself.
pytestmark = pytest.mark.docker


def _spawn_worker(
    env: WorkflowEnvironment,
    task_queue: str,
    state_dir: Path,
    log: Path,
    namespace: str,
    environ: dict[str, str] | None = None,
    **settings: str,
) -> subprocess.Popen[bytes]:
    """A `worker.py` process; `settings` are more `AGENTRUN_*` variables (without the
    prefix), `environ` other variables (`DOCKER_HOST`)."""
    environ = {
        **os.environ,
        "AGENTRUN_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "AGENTRUN_TASK_QUEUE": task_queue,
        "AGENTRUN_STATE_DIR": str(state_dir),
        "AGENTRUN_DEFAULT_PROVIDER": "scripted",
        "AGENTRUN_SANDBOX_POOL_SIZE": "0",
        "AGENTRUN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        # Both workers share one sandbox namespace (they serve the same runs), and it is
        # this test's own, so no other test's janitor or pool can touch it.
        "AGENTRUN_SANDBOX_NAMESPACE": namespace,
        # The test's clients (and its in-process worker) use the session's plain
        # pydantic converter; a worker must share its clients' codec.
        "AGENTRUN_PAYLOAD_ENCRYPTION": "off",
        **{f"AGENTRUN_{name.upper()}": value for name, value in settings.items()},
        **(environ or {}),
    }
    return subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py")],
        cwd=ROOT,
        env=environ,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_run_survives_worker_sigkill_without_losing_or_repeating_a_tool_call(
    temporal_env: WorkflowEnvironment, client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        shell("echo step1 >> count.txt"),
        shell("echo step2 >> count.txt; sleep 4"),
        shell("echo step3 >> count.txt"),
        finish("counted"),
    )
    log = state_dir / "worker.log"
    namespace = f"rec-{uuid.uuid4().hex[:10]}"
    first = _spawn_worker(temporal_env, task_queue, state_dir, log, namespace)
    second: subprocess.Popen[bytes] | None = None
    try:
        handle = await start_run(client, task_queue, spec)
        # Wait until the long second tool call is in flight, then kill the worker hard.
        try:
            await wait_for(handle, lambda v: v.steps >= 2, timeout=90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nworker log:\n{log.read_text()[-3000:]}") from None
        await asyncio.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = _spawn_worker(temporal_env, task_queue, state_dir, log, namespace)
        result = await asyncio.wait_for(outcome(handle), timeout=120)
        events = await all_events(handle)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
    assert result.status == RunStatus.COMPLETED, log.read_text()[-3000:]
    assert result.final_answer == "counted"
    artifacts = {a.name: a for a in result.artifacts}
    count = get_bytes(
        LocalArtifactStore(state_dir / "artifacts").for_tenant(TENANT),
        artifacts["count.txt"].digest,
    )
    assert count.decode().splitlines() == ["step1", "step2", "step3"]
    tool_results = [e for e in events if e.type == EventType.TOOL_RESULT]
    assert len(tool_results) == 4  # three shell calls and finish, each recorded once


def _identity(proc: subprocess.Popen[bytes]) -> str:
    """The Temporal identity of a `worker.py` process (the SDK's default, `pid@host`)."""
    return f"{proc.pid}@{socket.gethostname()}"


async def _polling_activities(client: Client, task_queue: str, identity: str) -> None:
    """Wait until the worker `identity` has an activity poll open on `task_queue`."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    )
    for _ in range(600):
        described = await client.workflow_service.describe_task_queue(request)
        if any(p.identity == identity for p in described.pollers):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker {identity} never polled {task_queue} for activities")


async def _started_on(handle: WorkflowHandle[object, object], activity: str, identity: str) -> None:
    """Wait until `activity` is pending, started by the worker `identity`."""
    for _ in range(600):
        pending = (await handle.describe()).raw_description.pending_activities
        if any(
            p.activity_type.name == activity
            and p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            and p.last_worker_identity == identity
            for p in pending
        ):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{activity} was never started by {identity}")


async def test_a_worker_killed_inside_init_run_is_replaced_after_the_heartbeat_timeout(
    temporal_env: WorkflowEnvironment, client: Client, task_queue: str, state_dir: Path
) -> None:
    # Deterministic "killed inside init_run": worker A opens its activity polls, then is
    # frozen (SIGSTOP), so the poll that takes init_run is answered by the server (the
    # activity is *started* on A) but A never runs it, nor heartbeats; then A is killed.
    # The workflow tasks go to an in-process worker without activities, so every
    # activity goes to a `worker.py` process: A first, then B, started after the kill.
    log = state_dir / "worker.log"
    namespace = f"rec-{uuid.uuid4().hex[:10]}"
    first = _spawn_worker(temporal_env, task_queue, state_dir, log, namespace)
    second: subprocess.Popen[bytes] | None = None
    try:
        await _polling_activities(client, task_queue, _identity(first))
        first.send_signal(signal.SIGSTOP)
        async with Worker(client, task_queue=task_queue, workflows=[AgentRunWorkflow]):
            handle = await start_run(client, task_queue, scripted_spec(finish("recovered")))
            await _started_on(handle, "init_run", _identity(first))
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            second = _spawn_worker(temporal_env, task_queue, state_dir, log, namespace)
            result = await asyncio.wait_for(outcome(handle), timeout=120)
            history = await handle.fetch_history()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()  # SIGTERM would wait for a SIGCONT in a stopped process
                proc.wait(timeout=20)
    assert result.status == RunStatus.COMPLETED, log.read_text()[-3000:]
    assert result.final_answer == "recovered"
    scheduled = next(
        e
        for e in history.events
        if e.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "init_run"
    )
    options = scheduled.activity_task_scheduled_event_attributes
    # What bounds the recovery is the heartbeat timeout the workflow gave init_run ...
    assert options.heartbeat_timeout.ToTimedelta() == HEARTBEAT
    assert options.heartbeat_timeout.ToTimedelta() < options.start_to_close_timeout.ToTimedelta()
    started = next(
        e.activity_task_started_event_attributes
        for e in history.events
        if e.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.scheduled_event_id == scheduled.event_id
    )
    # ... and it is what ended A's attempt: B ran attempt 2 after a *heartbeat* timeout.
    assert started.attempt == 2
    assert second is not None and started.identity == _identity(second)
    timeout = started.last_failure.timeout_failure_info.timeout_type
    assert timeout == TimeoutType.TIMEOUT_TYPE_HEARTBEAT, TimeoutType.Name(timeout)
