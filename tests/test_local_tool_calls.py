"""Tool calls run as local activities first, and go on as normal activities past a budget.

A short call (the common case: `cat`, `ls`, a small write) runs inside the workflow
task that asked for it, so a step costs one activity task and one workflow task less.
A call still running when the budget (`AGENTRUN_LOCAL_TOOL_CALL_SECONDS`) is spent is
handed to a normal activity that re-attaches to it in the sandbox: the command runs
once. The proofs here read the run's Temporal history (a local activity leaves a
marker, a normal one its scheduled event) and the workspace's files (a command that
ran twice would have appended twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client, WorkflowHandle

from agentrun.contracts import EventType, RunStatus, ToolResultPayload
from store.artifacts import LocalArtifactStore, get_bytes
from tests.workflow_harness import (
    TENANT,
    all_events,
    call,
    finish,
    outcome,
    payloads,
    running_worker,
    scripted_spec,
    shell,
    start_run,
    turn,
)

pytestmark = pytest.mark.docker

LOCAL_MARKER = "core_local_activity"


async def _activity_kinds(handle: WorkflowHandle[Any, Any]) -> tuple[list[str], int, int]:
    """(activity types scheduled as normal activities, local activity markers,
    completed workflow tasks) of the run's history."""
    scheduled: list[str] = []
    markers = tasks = 0
    async for event in handle.fetch_history_events():
        if event.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled.append(event.activity_task_scheduled_event_attributes.activity_type.name)
        elif event.event_type == HistoryEventType.EVENT_TYPE_MARKER_RECORDED:
            markers += event.marker_recorded_event_attributes.marker_name == LOCAL_MARKER
        elif event.event_type == HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            tasks += 1
    return scheduled, markers, tasks


def _workspace_file(state_dir: Path, result: Any, name: str) -> str:
    artifacts = {a.name: a for a in result.artifacts}
    store = LocalArtifactStore(state_dir / "artifacts").for_tenant(TENANT)
    return get_bytes(store, artifacts[name].digest).decode()


async def test_short_tool_calls_run_as_local_activities_with_one_workflow_task_per_step(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        shell("echo one >> log.txt"),
        turn(call("write_file", path="b.txt", content="bee\n")),
        shell("echo two >> log.txt; cat b.txt"),
        finish("logged"),
    )
    async with running_worker(client, task_queue, state_dir):
        local = await start_run(client, task_queue, spec, local_tool_seconds=4)
        local_result = await outcome(local)
        normal = await start_run(client, task_queue, spec, local_tool_seconds=0)
        normal_result = await outcome(normal)
        events = await all_events(local)  # a query: while the worker runs

    for result in (local_result, normal_result):
        assert result.status == RunStatus.COMPLETED, result.error
        assert result.final_answer == "logged"
        assert _workspace_file(state_dir, result, "log.txt") == "one\ntwo\n"
    summaries = [p.summary for p in payloads(events, ToolResultPayload)]
    assert "bee" in summaries[2], summaries

    scheduled, markers, local_tasks = await _activity_kinds(local)
    assert "dispatch_tool" not in scheduled, scheduled
    assert markers == 4  # three tools and finish, each one local activity
    assert scheduled.count("call_model") == 4
    # The same run with every call a normal activity: each call is one more activity
    # and one more workflow task (the one its result wakes).
    scheduled_n, markers_n, normal_tasks = await _activity_kinds(normal)
    assert scheduled_n.count("dispatch_tool") == 4 and markers_n == 0
    assert normal_tasks - local_tasks == 4, (normal_tasks, local_tasks)


async def test_a_call_past_its_budget_is_handed_over_and_its_command_runs_once(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        # Appends at once, then outlives the 1 s budget: the normal activity that takes
        # over must wait for this same process, not start the command again.
        shell("echo started >> once.txt; sleep 3; echo finished"),
        finish("waited"),
    )
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec, local_tool_seconds=1)
        result = await outcome(handle)
        events = await all_events(handle)

    assert result.status == RunStatus.COMPLETED, result.error
    assert _workspace_file(state_dir, result, "once.txt") == "started\n"
    results = payloads(events, ToolResultPayload)
    assert results[0].ok and "finished" in results[0].summary, results[0]
    assert [e.type for e in events].count(EventType.TOOL_RESULT) == 2
    # The command's time is counted once, from its own clock: about 3 s, not 1 + 3.
    assert 3.0 <= result.usage.tool_seconds < 4.0, result.usage

    scheduled, markers, _ = await _activity_kinds(handle)
    assert markers == 2  # the long call's timed-out attempt, and finish
    assert scheduled.count("dispatch_tool") == 1  # the hand-over
