"""Stopping a worker drains it: SIGTERM lets the tool call it runs finish.

A `worker.py` process runs a `shell` call that takes seconds when it gets SIGTERM.
It stops taking tasks, lets that call finish (its result is recorded as the first
and only attempt, by that worker), exits 0, and the run goes on on another worker.
A drain shorter than the call cancels it at the deadline (the sync activity sees
the cancellation in its thread, the worker still exits 0), and a second signal
during the drain stops the worker at once (exit 3): either way the cut call is
retried on the other worker, which reattaches to it in the sandbox, so its command
still ran once.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from agentrun.contracts import RunStatus
from store.artifacts import LocalArtifactStore, get_bytes
from tests.test_workflow_recovery import _identity, _spawn_worker, _started_on
from tests.workflow_harness import TENANT, finish, outcome, scripted_spec, shell, start_run

pytestmark = pytest.mark.docker

LONG_CALL = "echo start >> log.txt; sleep 4; echo end >> log.txt"


def _spec() -> object:
    return scripted_spec(shell(LONG_CALL), shell("cat log.txt"), finish("drained"))


async def _dispatch_attempts(handle: WorkflowHandle[object, object]) -> list[tuple[int, str]]:
    """(attempt, worker identity) of the recorded start of the run's first `dispatch_tool`
    (Temporal records the start of the attempt that ended the activity only)."""
    scheduled_id = None
    starts = []
    async for event in handle.fetch_history_events():
        if event.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "dispatch_tool" and scheduled_id is None:
                scheduled_id = event.event_id
        elif event.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs2 = event.activity_task_started_event_attributes
            if attrs2.scheduled_event_id == scheduled_id:
                starts.append((attrs2.attempt, attrs2.identity))
    return starts


@pytest.mark.parametrize(
    ("stop", "drain_seconds"),
    [("drain", "60"), ("deadline", "1"), ("second-signal", "60")],
    ids=["drain", "deadline", "second-signal"],
)
async def test_sigterm_lets_the_running_call_finish_and_the_deadline_or_a_second_signal_cuts_it(
    temporal_env: WorkflowEnvironment,
    client: Client,
    task_queue: str,
    state_dir: Path,
    stop: str,
    drain_seconds: str,
) -> None:
    namespace = f"drain-{uuid.uuid4().hex[:10]}"
    log = state_dir / "worker.log"
    first = _spawn_worker(
        temporal_env, task_queue, state_dir, log, namespace, worker_drain_seconds=drain_seconds
    )
    second: subprocess.Popen[bytes] | None = None
    try:
        # Every call a normal activity: the drain is about activities the worker runs
        # for the server (a local one is part of a workflow task).
        handle = await start_run(client, task_queue, _spec(), local_tool_seconds=0)  # type: ignore[arg-type]
        await _started_on(handle, "dispatch_tool", _identity(first))
        if stop == "drain":
            # What a worker that seems stuck waits for, on request, without stopping it.
            first.send_signal(signal.SIGUSR1)
            await _wait_for_line(log, "=== end of stack dump")
            dump = log.read_text()
            assert "asyncio tasks" in dump and "temporalio/worker/_activity.py" in dump, dump
            assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        second = _spawn_worker(temporal_env, task_queue, state_dir, log, namespace)
        if stop == "second-signal":
            await _wait_for_line(log, "a second signal stops at once")
            first.send_signal(signal.SIGTERM)
        code = first.wait(timeout=90)
        result = await outcome(handle)
        attempts = await _dispatch_attempts(handle)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    assert result.status == RunStatus.COMPLETED, log.read_text()[-3000:]
    artifacts = {a.name: a for a in result.artifacts}
    lines = get_bytes(
        LocalArtifactStore(state_dir / "artifacts").for_tenant(TENANT), artifacts["log.txt"].digest
    )
    assert lines.decode().splitlines() == ["start", "end"]  # the command ran once
    host = socket.gethostname()
    told = log.read_text()
    assert "draining 1 activity (dispatch_tool)" in told, told[-3000:]
    if stop == "drain":
        assert code == 0, told[-3000:]
        assert "1 finished, 0 cancelled at the deadline" in told, told[-3000:]
        # Drained: one attempt, finished by the worker that was stopping.
        assert attempts == [(1, f"{first.pid}@{host}")], attempts
    else:
        assert code == (0 if stop == "deadline" else 3), told[-3000:]
        if stop == "deadline":
            assert "0 finished, 1 cancelled at the deadline" in told, told[-3000:]
        # Cut: retried by the other worker, which reattached to the running call
        # (history records only the attempt that ended it).
        assert second is not None
        assert attempts == [(2, f"{second.pid}@{host}")], attempts


async def _wait_for_line(log: Path, text: str) -> None:
    for _ in range(300):
        if text in log.read_text(errors="replace"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never logged:\n{log.read_text()[-3000:]}")
