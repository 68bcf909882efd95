"""Temporal's status for a run says what happened to it, and readers still get its result.

A failed run ends Temporal `Failed` (its reason as the error type, its `RunResult` in
the details), a cancelled one `Canceled` (its `RunResult` in the memo); the API's
run view reads the same outcome from either when no worker answers its query.
(A cancel by update ending `Canceled` is checked with the cancel itself, in
tests/test_workflow_control.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from agentrun.config import load_settings
from agentrun.contracts import (
    ControlRequest,
    EventType,
    Limits,
    RunFinishedPayload,
    RunResult,
    RunStatus,
    TerminalReason,
)
from api.errors import Conflict
from api.service import execute_control, run_view
from tests.workflow_harness import (
    ALICE,
    TENANT,
    all_events,
    call,
    finish,
    outcome,
    payloads,
    running_worker,
    scripted_spec,
    start_run,
    temporal,
    turn,
    wait_for,
)
from workflows.agent_run import AgentRunWorkflow

pytestmark = pytest.mark.docker


async def test_a_failed_run_ends_temporal_failed_with_its_reason_and_result(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        turn(call("nonexistent")), turn(call("nonexistent")), limits=Limits(max_steps=2)
    )
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
        desc = await handle.describe()
        events = await all_events(handle)
    assert desc.status == WorkflowExecutionStatus.FAILED
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("max_steps", True)
    result = RunResult.model_validate(cause.details[0])
    assert (result.status, result.reason, result.steps) == (
        RunStatus.FAILED,
        TerminalReason.MAX_STEPS,
        2,
    )
    # The events and webhooks are those of before: the run finished, then failed.
    assert events[-1].type == EventType.RUN_FINISHED
    assert [p.reason for p in payloads(events, RunFinishedPayload)] == [TerminalReason.MAX_STEPS]


async def test_a_completed_run_still_returns_its_result(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, scripted_spec(finish("fine")))
        result: RunResult = await handle.result()
        desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    assert (result.status, result.final_answer) == (RunStatus.COMPLETED, "fine")


async def test_the_run_view_reads_failed_and_cancelled_outcomes_without_a_worker(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    failing = scripted_spec(turn(call("nonexistent")), limits=Limits(max_steps=1))
    slow = scripted_spec(turn(call("nonexistent"), delay_seconds=1.0), finish())
    async with running_worker(client, task_queue, state_dir):
        failed = await start_run(client, task_queue, failing)
        cancelled = await start_run(client, task_queue, slow)
        await wait_for(cancelled, lambda v: v.steps >= 1)
        await cancelled.execute_update(
            AgentRunWorkflow.cancel, ControlRequest(actor=ALICE, reason="enough")
        )
        expected = [await outcome(failed), await outcome(cancelled)]
    # No worker polls the queue now: the view is rebuilt from what Temporal recorded.
    settings = load_settings(api_query_timeout_seconds=1.0)
    views = [
        await run_view(client, settings, TENANT, handle.id.split("/", 2)[-1])
        for handle in (failed, cancelled)
    ]
    for view, result in zip(views, expected, strict=True):
        assert view.source == "result"
        assert (view.status, view.reason, view.error, view.final_answer, view.steps) == (
            result.status,
            result.reason,
            result.error,
            result.final_answer,
            result.steps,
        )
        assert (view.usage, view.artifacts) == (result.usage, result.artifacts)
    assert [v.status for v in views] == [RunStatus.FAILED, RunStatus.CANCELLED]
    assert views[0].reason == TerminalReason.MAX_STEPS


async def test_pause_on_a_finished_run_is_an_invalid_transition_for_the_api_and_refused_by_temporal(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    failing = scripted_spec(turn(call("nonexistent")), limits=Limits(max_steps=1))
    req = ControlRequest(actor=ALICE)
    async with running_worker(client, task_queue, state_dir):
        done = await start_run(client, task_queue, scripted_spec(finish("ok")))
        failed = await start_run(client, task_queue, failing)
        ended = [await outcome(done), await outcome(failed)]
        conflicts: list[Conflict] = []
        for handle in (done, failed):
            with pytest.raises(Conflict) as refused:
                await execute_control(handle, AgentRunWorkflow.pause, req, 10.0, "pause")
            conflicts.append(refused.value)
        body = json.dumps(req.model_dump(mode="json"))
        update = await temporal(
            client,
            *("workflow", "update", "execute", "--workflow-id", done.id, "--name", "pause"),
            *("--input", body),
        )
        signal = await temporal(
            client,
            *("workflow", "signal", "--workflow-id", done.id, "--name", "pause"),
            *("--input", body),
        )
    assert [r.status for r in ended] == [RunStatus.COMPLETED, RunStatus.FAILED]
    # The API answers 409 `invalid-transition` with the run's status …
    assert [(c.kind, c.extra["run_status"]) for c in conflicts] == [
        ("invalid-transition", "completed"),
        ("invalid-transition", "failed"),
    ]
    assert conflicts[0].detail == "cannot pause a run that is completed"
    # … while the Temporal CLI gets the server's own refusal, for an update or a signal.
    for code, out in (update, signal):
        assert code == 1 and "workflow execution already completed" in out, out
