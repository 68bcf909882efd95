"""The workflow's pure rules, without a Temporal server.

`workflows.transitions` (visible status, which control action is valid when, the
409 errors), `workflows.approvals` (pending record, wait, expiry), `workflows.errors`
(how an exception ends a run) and the carried `LoopState` are plain functions and
models, so each rule is checked here directly; the workflow tests check that the
workflow applies them.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ActivityError, ApplicationError

from agentrun.contracts import (
    SYSTEM_ACTOR,
    Actor,
    ApprovalDecision,
    ApprovalPolicy,
    ConflictType,
    Limits,
    LoopState,
    PendingApproval,
    RunInput,
    RunStatus,
    TerminalReason,
    ToolCall,
    Usage,
    digest_of,
)
from tests.conftest import ROOT
from workflows import approvals
from workflows.errors import INTERNAL_ERROR, Abort, describe, internal_error, outcome_of
from workflows.transitions import (
    MAX_PENDING_MESSAGES,
    ControlView,
    check_cancel,
    check_decision,
    check_pause,
    check_resume,
    check_send_message,
    limit_reached,
    terminal_status,
    visible_status,
)

ALICE = Actor(subject="alice@example.com")
CALL = ToolCall(id="s1-c0", name="shell", arguments_digest=digest_of(b'{"cmd": "ls"}'))
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PENDING = PendingApproval(approval_id="ap-s1-c0", call=CALL, requested_at=NOW)
NON_TERMINAL = [s for s in RunStatus if not s.terminal and s != RunStatus.PAUSED]
TERMINAL = [s for s in RunStatus if s.terminal]


def _rejection(excinfo: pytest.ExceptionInfo[ApplicationError]) -> tuple[str, str, object]:
    err = excinfo.value
    assert err.non_retryable, "a rejected control action must not be retried"
    return err.type or "", err.message, err.details


def _decision(approval_id: str = "ap-s1-c0", digest: str | None = None) -> ApprovalDecision:
    return ApprovalDecision(
        approval_id=approval_id,
        arguments_digest=digest or CALL.arguments_digest,
        actor=ALICE,
    )


# --------------------------------------------------------------- visible status


@pytest.mark.parametrize("phase", NON_TERMINAL)
def test_a_paused_run_shows_paused_whatever_its_phase(phase: RunStatus) -> None:
    assert visible_status(phase, paused=True) == RunStatus.PAUSED
    assert visible_status(phase, paused=False) == phase


@pytest.mark.parametrize("phase", TERMINAL)
def test_a_terminal_phase_wins_over_the_pause_flag(phase: RunStatus) -> None:
    assert visible_status(phase, paused=True) == phase


def test_only_completed_succeeds_and_cancelled_is_its_own_end() -> None:
    assert terminal_status(TerminalReason.COMPLETED) is RunStatus.COMPLETED
    assert terminal_status(TerminalReason.CANCELLED) is RunStatus.CANCELLED
    others = set(TerminalReason) - {TerminalReason.COMPLETED, TerminalReason.CANCELLED}
    assert others and {terminal_status(reason) for reason in others} == {RunStatus.FAILED}


# ----------------------------------------------------------------------- limits


def test_no_step_starts_once_max_steps_are_done() -> None:
    limits = Limits(max_steps=3)
    assert limit_reached(2, Usage(), limits) is None
    assert limit_reached(3, Usage(), limits) == TerminalReason.MAX_STEPS


def test_the_token_budget_stops_the_run_when_used_up() -> None:
    limits = Limits(max_steps=10, max_tokens=100)
    assert limit_reached(1, Usage(input_tokens=60, output_tokens=39), limits) is None
    assert limit_reached(1, Usage(input_tokens=60, output_tokens=40), limits) == (
        TerminalReason.BUDGET
    )


def test_max_steps_is_reported_before_the_budget_when_both_are_hit() -> None:
    limits = Limits(max_steps=1, max_tokens=1)
    assert limit_reached(1, Usage(output_tokens=5), limits) == TerminalReason.MAX_STEPS


def test_without_a_token_budget_usage_never_stops_the_run() -> None:
    assert limit_reached(1, Usage(input_tokens=10**9), Limits(max_steps=2)) is None


# -------------------------------------------------------- pause / resume / cancel


def test_pause_is_accepted_once_then_rejected_with_the_paused_status() -> None:
    check_pause(ControlView(status=RunStatus.RUNNING))
    with pytest.raises(ApplicationError) as err:
        check_pause(ControlView(status=RunStatus.PAUSED, paused=True))
    assert _rejection(err) == (
        ConflictType.INVALID_TRANSITION.value,
        "the run is already paused",
        ({"status": "paused"},),
    )


def test_resume_of_a_run_that_is_not_paused_is_rejected() -> None:
    check_resume(ControlView(status=RunStatus.PAUSED, paused=True))
    with pytest.raises(ApplicationError) as err:
        check_resume(ControlView(status=RunStatus.AWAITING_APPROVAL))
    assert _rejection(err) == (
        "InvalidTransition",
        "the run is not paused",
        ({"status": "awaiting_approval"},),
    )


def test_a_second_cancel_is_rejected_but_a_paused_run_can_be_cancelled() -> None:
    check_cancel(ControlView(status=RunStatus.PAUSED, paused=True))
    with pytest.raises(ApplicationError) as err:
        check_cancel(ControlView(status=RunStatus.RUNNING, cancelling=True))
    assert _rejection(err)[1] == "the run is already being cancelled"


@pytest.mark.parametrize("status", TERMINAL)
def test_no_control_action_is_accepted_by_a_finished_run(status: RunStatus) -> None:
    run = ControlView(status=status, ending=True, pending=PENDING)
    actions: dict[str, Callable[[], None]] = {
        "pause": lambda: check_pause(run),
        "resume": lambda: check_resume(ControlView(status=status, ending=True, paused=True)),
        "cancel": lambda: check_cancel(run),
        "decide on an approval of": lambda: check_decision(run, _decision()),
        "send a message to": lambda: check_send_message(run),
    }
    for action, attempt in actions.items():
        with pytest.raises(ApplicationError) as err:
            attempt()
        assert _rejection(err) == (
            "InvalidTransition",
            f"cannot {action} a run that is {status.value}",
            ({"status": status.value},),
        )


def test_a_run_that_is_finishing_rejects_actions_before_its_phase_turns_terminal() -> None:
    # `_finish` sets the reason first and awaits cleanup activities before the phase
    # changes; an update arriving in between must not be accepted.
    with pytest.raises(ApplicationError) as err:
        check_cancel(ControlView(status=RunStatus.RUNNING, ending=True))
    assert _rejection(err)[1:] == (
        "cannot cancel a run that is running",
        ({"status": "running"},),
    )


# -------------------------------------------------------------------- approvals


def test_the_exact_pending_call_and_arguments_are_accepted() -> None:
    view = ControlView(status=RunStatus.AWAITING_APPROVAL, pending=PENDING)
    accepted = [d for d in (_decision(), _decision(digest="f" * 64)) if _accepts(view, d)]
    assert accepted == [_decision()]  # the exact call and digest pass; another digest not


def _accepts(view: ControlView, decision: ApprovalDecision) -> bool:
    try:
        check_decision(view, decision)
    except ApplicationError:
        return False
    return True


def test_a_decision_without_a_pending_approval_is_rejected() -> None:
    with pytest.raises(ApplicationError) as err:
        check_decision(ControlView(status=RunStatus.RUNNING), _decision())
    assert _rejection(err) == (
        "InvalidTransition",
        "no approval is pending",
        ({"status": "running"},),
    )


def test_a_decision_for_another_call_is_an_approval_mismatch() -> None:
    run = ControlView(status=RunStatus.AWAITING_APPROVAL, pending=PENDING)
    with pytest.raises(ApplicationError) as err:
        check_decision(run, _decision(approval_id="ap-s9-c9"))
    kind, message, details = _rejection(err)
    assert kind == ConflictType.APPROVAL_MISMATCH.value == "ApprovalMismatch"
    assert message == "approval 'ap-s9-c9' is not pending (pending: 'ap-s1-c0')"
    assert details == ({"status": "awaiting_approval"},)


def test_a_decision_for_other_arguments_is_an_approval_mismatch_that_hides_the_digest() -> None:
    run = ControlView(status=RunStatus.AWAITING_APPROVAL, pending=PENDING)
    with pytest.raises(ApplicationError) as err:
        check_decision(run, _decision(digest=digest_of(b'{"cmd": "rm -rf /"}')))
    kind, message, details = _rejection(err)
    assert kind == "ApprovalMismatch"
    assert "does not match" in message
    # A guess must not be answered with the value to send instead.
    assert CALL.arguments_digest not in message
    assert CALL.arguments_digest[:12] not in repr(details)


def test_the_pending_approval_is_named_after_its_call_and_expires_on_time() -> None:
    pending = approvals.pending_approval(
        CALL, ApprovalPolicy(mode="always", timeout_seconds=90, on_timeout="approve"), NOW
    )
    assert pending.approval_id == "ap-s1-c0"
    assert pending.expires_at == NOW + timedelta(seconds=90)
    assert pending.on_timeout == "approve"
    forever = approvals.pending_approval(CALL, ApprovalPolicy(timeout_seconds=None), NOW)
    assert forever.expires_at is None


def test_the_approval_wait_ends_at_the_expiry_or_the_deadline_whichever_is_first() -> None:
    minute, hour = timedelta(minutes=1), timedelta(hours=1)
    assert approvals.wait_bound(hour, minute) == minute
    assert approvals.wait_bound(minute, hour) == minute
    assert approvals.wait_bound(None, hour) == hour
    assert approvals.wait_bound(hour, None) == hour
    assert approvals.wait_bound(None, None) is None
    # Which of the two ended a wait that timed out (a tie goes to the deadline).
    assert approvals.deadline_comes_first(hour, minute)
    assert approvals.deadline_comes_first(minute, minute)
    assert approvals.deadline_comes_first(None, minute)
    assert not approvals.deadline_comes_first(minute, hour)
    assert not approvals.deadline_comes_first(minute, None)


@pytest.mark.parametrize("on_timeout", ["approve", "deny"])
def test_an_expired_approval_gets_the_policys_outcome_decided_by_system(
    on_timeout: str,
) -> None:
    pending = PENDING.model_copy(update={"on_timeout": on_timeout})
    approved, decision = approvals.expiry_decision(pending)
    assert approved is (on_timeout == "approve")
    assert decision.actor == SYSTEM_ACTOR
    assert decision.reason == "approval expired"
    # The expiry decision passes the same check a human decision must pass.
    check_decision(ControlView(status=RunStatus.AWAITING_APPROVAL, pending=pending), decision)


def test_a_denial_tells_the_model_who_denied_and_why() -> None:
    assert approvals.denial_reason(True, _decision()) is None
    assert approvals.denial_reason(False, _decision()) == (
        "denied by alice@example.com: no reason given"
    )
    why = _decision().model_copy(update={"reason": "not on prod"})
    assert approvals.denial_reason(False, why) == "denied by alice@example.com: not on prod"


# ------------------------------------------------------------- steering messages


def test_steering_messages_are_refused_once_the_queue_is_full() -> None:
    check_send_message(ControlView(status=RunStatus.RUNNING, waiting_messages=19))
    with pytest.raises(ApplicationError) as err:
        check_send_message(ControlView(status=RunStatus.PAUSED, paused=True, waiting_messages=20))
    assert MAX_PENDING_MESSAGES == 20
    assert _rejection(err) == (
        "InvalidTransition",
        "20 messages are already waiting for the next model call",
        ({"status": "paused"},),
    )


# ----------------------------------------------------------------------- errors


def _activity_error(cause: BaseException) -> ActivityError:
    err = ActivityError(
        "activity error",
        scheduled_event_id=5,
        started_event_id=6,
        identity="worker",
        activity_type="call_model",
        activity_id="1",
        retry_state=None,
    )
    err.__cause__ = cause
    return err


def test_a_failed_activity_ends_the_run_with_its_innermost_cause() -> None:
    provider = ApplicationError("401 unauthorized", type="HttpStatusError", non_retryable=True)
    provider.__cause__ = ValueError("bad key")
    wrapped = ApplicationError("401 unauthorized", type="HttpStatusError")
    assert outcome_of(_activity_error(wrapped)) == (
        TerminalReason.ERROR,
        "HttpStatusError: 401 unauthorized",
    )
    assert describe(_activity_error(provider)) == "ValueError: bad key"


def test_an_abort_ends_the_run_with_its_reason_and_no_error_text() -> None:
    assert outcome_of(Abort(TerminalReason.DEADLINE)) == (TerminalReason.DEADLINE, None)


def test_a_broken_invariant_ends_the_run_as_an_internal_error() -> None:
    err = internal_error("conversation not initialised")
    assert err.non_retryable and err.type == INTERNAL_ERROR == "InternalError"
    assert outcome_of(err) == (TerminalReason.ERROR, "InternalError: conversation not initialised")


# ------------------------------------------------------------------- loop state


async def test_state_carried_by_a_recorded_continue_as_new_still_loads_into_loop_state() -> None:
    path = ROOT / "tests" / "histories" / "continue_as_new.json"
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    continued = [
        e.workflow_execution_continued_as_new_event_attributes
        for e in history.events
        if e.event_type == HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    ]
    assert len(continued) == 1
    [inp] = await pydantic_data_converter.decode(continued[0].input.payloads, [RunInput])
    assert isinstance(inp, RunInput)
    state = inp.carried
    assert isinstance(state, LoopState)
    assert state.continued == 1 and state.step >= 1 and state.sandbox_started
    assert state.conversation_head is not None and state.started_at is not None
    assert state.segments and state.events == []
    # Carrying it again keeps every field (what the next continue-as-new sends).
    again = RunInput.model_validate_json(inp.model_dump_json())
    assert again.carried == state


def test_a_first_run_starts_from_an_empty_loop_state() -> None:
    state = LoopState()
    assert state.status == RunStatus.QUEUED
    assert (state.step, state.last_seq, state.continued) == (0, 0, 0)
    assert state.conversation_head is None and state.started_at is None
    assert state.events == [] and state.segments == [] and not state.sandbox_started


PURE_MODULES = ("transitions", "approvals", "errors", "state", "policies")


@pytest.mark.parametrize("name", PURE_MODULES)
def test_pure_workflow_modules_never_touch_temporalio_workflow(name: str) -> None:
    tree = ast.parse((ROOT / "workflows" / f"{name}.py").read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m for m in imported if m.startswith("temporalio.workflow")}, imported
