"""Control of a running agent: pause/resume, cancel, approvals, steering messages."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from agentrun.contracts import (
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalRequestedEvent,
    ApprovalResolvedEvent,
    ApprovalResolvedPayload,
    ControlRequest,
    ErrorKind,
    EventType,
    Limits,
    MessageReceivedPayload,
    RunFinishedPayload,
    RunResult,
    RunSpec,
    RunStatus,
    StatusChangedPayload,
    TerminalReason,
    ToolResultPayload,
    UserMessage,
)
from store.artifacts import LocalArtifactStore
from store.conversation import ConversationStore
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
    shell,
    skipping_time,
    start_run,
    status,
    turn,
    types,
    wait_for,
)
from workflows.agent_run import AgentRunWorkflow
from workflows.outcome import MEMO_RESULT

REQ = ControlRequest(actor=ALICE, reason="testing")

# Every test here starts a worker whose tools run in the Docker sandbox.
pytestmark = pytest.mark.docker


def _update_error(exc: WorkflowUpdateFailedError) -> ApplicationError:
    cause = exc.cause
    assert isinstance(cause, ApplicationError), cause
    return cause


async def test_pause_stops_new_steps_and_resume_continues_to_completion(
    time_skipping_env: WorkflowEnvironment, task_queue: str, state_dir: Path
) -> None:
    client = time_skipping_env.client
    spec = scripted_spec(
        shell("echo a > a.txt"),
        turn(call("nonexistent"), delay_seconds=1.0),
        shell("cat a.txt"),
        finish("resumed"),
    )
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        await wait_for(handle, lambda v: v.steps >= 2)
        paused = await handle.execute_update(AgentRunWorkflow.pause, REQ)
        assert paused.status == RunStatus.PAUSED
        with pytest.raises(WorkflowUpdateFailedError) as again:
            await handle.execute_update(AgentRunWorkflow.pause, REQ)
        assert _update_error(again.value).type == "InvalidTransition"
        view = await wait_for(handle, lambda v: v.status == RunStatus.PAUSED)
        steps_when_paused = view.steps
        # Nothing advances while paused, not even an hour later: the clock jumps once the
        # in-flight step has ended (work in flight holds it), and no new step starts.
        before = await time_skipping_env.get_current_time()
        await time_skipping_env.sleep(timedelta(hours=1))
        assert await time_skipping_env.get_current_time() - before >= timedelta(hours=1)
        still = await status(handle)
        assert still.status == RunStatus.PAUSED
        assert still.steps == steps_when_paused
        resumed = await handle.execute_update(AgentRunWorkflow.resume, REQ)
        assert resumed.status == RunStatus.RUNNING
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.COMPLETED
    assert result.final_answer == "resumed"
    actions = [p.action for p in payloads(events, StatusChangedPayload)]
    assert actions == ["pause", "resume"]
    cat = payloads(events, ToolResultPayload)[-2]
    assert "a" in cat.summary  # workspace intact across the sandbox pause


async def test_a_paused_run_still_ends_at_its_deadline(
    time_skipping_env: WorkflowEnvironment, task_queue: str, state_dir: Path
) -> None:
    client = time_skipping_env.client
    spec = scripted_spec(
        *[turn(call("nonexistent"), delay_seconds=0.5) for _ in range(5)],
        finish("never reached"),
        limits=Limits(deadline_seconds=86400),
    )
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        await wait_for(handle, lambda v: v.steps >= 1)
        await handle.execute_update(AgentRunWorkflow.pause, REQ)
        steps_when_paused = (await status(handle)).steps
        # Paused, the run waits only on its deadline timer: a day passes at once.
        async with skipping_time(time_skipping_env):
            result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.FAILED
    assert result.reason == TerminalReason.DEADLINE
    assert result.steps == steps_when_paused  # no step started while paused
    assert [p.action for p in payloads(events, StatusChangedPayload)] == ["pause"]
    assert events[-1].at - events[0].at >= timedelta(days=1)


async def test_resume_of_a_run_that_is_not_paused_is_rejected(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(finish(delay_seconds=3.0))
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        await wait_for(handle, lambda v: v.status == RunStatus.RUNNING)
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(AgentRunWorkflow.resume, REQ)
        assert "not paused" in _update_error(err.value).message
        await outcome(handle)
        # A closed workflow accepts no update at all: the server refuses it.
        with pytest.raises(RPCError) as closed:
            await handle.execute_update(AgentRunWorkflow.cancel, REQ)
        assert "completed" in str(closed.value)


async def test_cancel_mid_run_lets_the_in_flight_step_finish_then_cleans_up(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        shell("sleep 2; echo slept > slept.txt"),
        finish("never reached"),
    )
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        await wait_for(handle, lambda v: v.steps >= 1)
        res = await handle.execute_update(AgentRunWorkflow.cancel, REQ)
        assert res.detail == "cancelling: after the in-flight step ends"
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        desc = await handle.describe()
        # The memo holds the result (a Temporal cancel carries no details).
        result = await desc.memo_value(MEMO_RESULT, type_hint=RunResult)
        events = await all_events(handle)
    assert desc.status == WorkflowExecutionStatus.CANCELED  # what the Web UI shows
    assert result.status == RunStatus.CANCELLED
    assert result.reason == TerminalReason.CANCELLED
    assert result.final_answer is None
    assert EventType.TOOL_RESULT in types(events)  # the in-flight step finished
    assert {a.name for a in result.artifacts} == {"slept.txt", "transcript.json"}
    finished = payloads(events, RunFinishedPayload)
    assert [p.cancelled_by for p in finished] == [ALICE.subject]
    assert events[-1].type == EventType.RUN_FINISHED


async def test_cancel_with_abort_abandons_the_in_flight_tool_call(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(shell("sleep 60"), finish())
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        await wait_for(handle, lambda v: v.steps >= 1)
        await handle.execute_update(
            AgentRunWorkflow.cancel, ControlRequest(actor=ALICE, abort_in_flight=True)
        )
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.reason == TerminalReason.CANCELLED
    assert EventType.TOOL_RESULT not in types(events)


async def test_temporal_native_cancel_cleans_up_and_marks_the_run_cancelled(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(shell("sleep 60"), finish())
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        await wait_for(handle, lambda v: v.steps >= 1)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        view = await status(handle)
        result = await outcome(handle)
    assert view.status == RunStatus.CANCELLED
    assert view.reason == TerminalReason.CANCELLED
    # The run's result is recorded in the memo, as for a cancel by update.
    assert (result.status, result.reason) == (RunStatus.CANCELLED, TerminalReason.CANCELLED)


def _approval_spec(**policy: Any) -> RunSpec:
    return scripted_spec(
        shell("echo approved-run >> ran.txt"),
        shell("cat ran.txt 2>&1 || echo missing"),
        finish("done"),
        approval=ApprovalPolicy(mode="tools", tools=["shell"], **policy),
    )


async def test_approve_runs_exactly_the_pending_call(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, _approval_spec())
        view = await wait_for(handle, lambda v: v.status == RunStatus.AWAITING_APPROVAL)
        pending = view.pending_approval
        assert pending is not None and pending.call.name == "shell"
        assert "approved-run" in pending.call.preview
        # A decision naming other arguments is refused: it cannot approve a different call.
        with pytest.raises(WorkflowUpdateFailedError) as wrong:
            await handle.execute_update(
                AgentRunWorkflow.approve,
                ApprovalDecision(
                    approval_id=pending.approval_id, arguments_digest="0" * 64, actor=ALICE
                ),
            )
        assert _update_error(wrong.value).type == "ApprovalMismatch"
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                AgentRunWorkflow.approve,
                ApprovalDecision(
                    approval_id="ap-other",
                    arguments_digest=pending.call.arguments_digest,
                    actor=ALICE,
                ),
            )
        decision = ApprovalDecision(
            approval_id=pending.approval_id,
            arguments_digest=pending.call.arguments_digest,
            actor=ALICE,
            reason="looks safe",
        )
        answer = await handle.execute_update(AgentRunWorkflow.approve, decision)
        assert (answer.status, answer.detail) == (RunStatus.RUNNING, "approved")
        second = await wait_for(
            handle,
            lambda v: (
                v.pending_approval is not None
                and v.pending_approval.approval_id != pending.approval_id
            ),
        )
        assert second.pending_approval is not None
        await handle.execute_update(
            AgentRunWorkflow.approve,
            decision.model_copy(
                update={
                    "approval_id": second.pending_approval.approval_id,
                    "arguments_digest": second.pending_approval.call.arguments_digest,
                }
            ),
        )
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.COMPLETED
    resolved = payloads(events, ApprovalResolvedPayload)
    assert [(r.approved, r.actor) for r in resolved] == [(True, ALICE.subject)] * 2
    cat = payloads(events, ToolResultPayload)[1]
    assert "approved-run" in cat.summary


async def test_deny_skips_the_call_and_tells_the_model_why(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, _approval_spec())
        view = await wait_for(handle, lambda v: v.pending_approval is not None)
        assert view.pending_approval is not None
        first_id = view.pending_approval.approval_id
        answer = await handle.execute_update(
            AgentRunWorkflow.deny,
            ApprovalDecision(
                approval_id=view.pending_approval.approval_id,
                arguments_digest=view.pending_approval.call.arguments_digest,
                actor=ALICE,
                reason="no writes today",
            ),
        )
        assert (answer.status, answer.detail) == (RunStatus.RUNNING, "denied")
        second = await wait_for(
            handle,
            lambda v: v.pending_approval is not None and v.pending_approval.approval_id != first_id,
        )
        assert second.pending_approval is not None
        await handle.execute_update(
            AgentRunWorkflow.approve,
            ApprovalDecision(
                approval_id=second.pending_approval.approval_id,
                arguments_digest=second.pending_approval.call.arguments_digest,
                actor=ALICE,
            ),
        )
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.COMPLETED
    results = payloads(events, ToolResultPayload)
    assert results[0].error_type == ErrorKind.DENIED
    assert "no writes today" in results[0].summary
    assert "missing" in results[1].summary  # the denied command never ran


async def test_pending_approval_expires_with_the_default_outcome(
    time_skipping_env: WorkflowEnvironment, task_queue: str, state_dir: Path
) -> None:
    client = time_skipping_env.client
    # An hour-long window per call, twice: the run is idle while it waits, so the
    # time-skipping server goes straight to each expiry timer.
    spec = _approval_spec(timeout_seconds=3600, on_timeout="deny")
    async with running_worker(client, task_queue, state_dir), skipping_time(time_skipping_env):
        handle = await start_run(client, task_queue, spec)
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.COMPLETED
    resolved = payloads(events, ApprovalResolvedPayload)
    assert [(r.approved, r.reason) for r in resolved] == [(False, "approval expired")] * 2
    # Each expired when its hour was up in workflow time, not before.
    requested = {
        e.payload.approval_id: e.at for e in events if isinstance(e, ApprovalRequestedEvent)
    }
    waited = [
        e.at - requested[e.payload.approval_id]
        for e in events
        if isinstance(e, ApprovalResolvedEvent)
    ]
    assert len(waited) == 2 and all(w >= timedelta(hours=1) for w in waited)


async def test_a_run_left_waiting_for_approval_ends_at_its_deadline(
    time_skipping_env: WorkflowEnvironment, task_queue: str, state_dir: Path
) -> None:
    client = time_skipping_env.client
    # No approval timeout: only the run's one-day deadline can end the wait.
    spec = scripted_spec(
        shell("echo never"),
        finish("never reached"),
        approval=ApprovalPolicy(mode="tools", tools=["shell"], timeout_seconds=None),
        limits=Limits(deadline_seconds=86400),
    )
    async with running_worker(client, task_queue, state_dir), skipping_time(time_skipping_env):
        handle = await start_run(client, task_queue, spec)
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.FAILED
    assert result.reason == TerminalReason.DEADLINE
    kinds = types(events)
    assert EventType.APPROVAL_REQUESTED in kinds
    assert EventType.APPROVAL_RESOLVED not in kinds
    assert EventType.TOOL_CALLED not in kinds  # the call never ran
    assert events[-1].at - events[0].at >= timedelta(days=1)


async def test_steering_message_reaches_the_next_model_call(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(turn(call("nonexistent"), delay_seconds=1.5), finish("ok"))
    async with running_worker(client, task_queue, state_dir) as settings:
        handle = await start_run(client, task_queue, spec)
        await wait_for(handle, lambda v: v.steps >= 1)  # the first model call is in flight
        await handle.execute_update(
            AgentRunWorkflow.send_message, UserMessage(text="please also say hi", actor=ALICE)
        )
        result = await outcome(handle)
        events = await all_events(handle)
        view = await status(handle)
    assert result.status == RunStatus.COMPLETED
    received = payloads(events, MessageReceivedPayload)
    assert received and received[0].text == "please also say hi"
    assert view.conversation_head is not None
    conversation = ConversationStore(LocalArtifactStore(settings.artifacts_path)).load(
        TENANT, view.conversation_head
    )
    roles = [(m.role, m.content) for m in conversation]
    first_reply = roles.index(next(r for r in roles if r[0] == "assistant"))
    assert ("user", "please also say hi") in roles[first_reply:]
