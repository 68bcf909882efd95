"""The run's state machine as pure rules: the status it shows, the actions it accepts.

State machine::

    queued → running ⇄ paused → completed | failed | cancelled
                ⇅
         awaiting_approval

The *phase* (`LoopState.status`) is where the loop is; `paused` is a flag layered on
top of it, so the status a user sees is `visible_status(phase, paused)`. Control
actions are updates whose validators call the `check_*` rules below: an invalid
transition (resume a completed run, approve what is not pending) is rejected before
it touches history, with a non-retryable `ApplicationError` whose type is a
`ConflictType` and whose details are `{"status": <visible status>}`; the API turns
it into HTTP 409.

Design (why it looks like this): the workflow takes a `ControlView` snapshot of
itself and hands it here, so every rule is a plain function of plain values and is
unit-tested without a Temporal server (`tests/test_workflow_transitions.py`).

This module must not: call `temporalio.workflow` (no clock, no logger, no state of
a running workflow), or mutate what it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.exceptions import ApplicationError

from agentrun.contracts import (
    ApprovalDecision,
    ConflictType,
    Limits,
    PendingApproval,
    RunStatus,
    TerminalReason,
    Usage,
)
from workflows.policies import CONTINUE_AS_NEW_HISTORY_EVENTS

MAX_PENDING_MESSAGES = 20
"""Steering messages waiting for the next model call; more are refused (409)."""

TERMINAL_STATUS: dict[TerminalReason, RunStatus] = {
    TerminalReason.COMPLETED: RunStatus.COMPLETED,
    TerminalReason.CANCELLED: RunStatus.CANCELLED,
    TerminalReason.MAX_STEPS: RunStatus.FAILED,
    TerminalReason.DEADLINE: RunStatus.FAILED,
    TerminalReason.BUDGET: RunStatus.FAILED,
    TerminalReason.ERROR: RunStatus.FAILED,
}
"""The status a run ends in, per reason: `completed` is the only success."""


@dataclass(frozen=True)
class ControlView:
    """What the update validators look at: a snapshot the workflow takes of itself."""

    status: RunStatus
    """The visible status (`visible_status`)."""
    ending: bool = False
    """The run has begun to finish (its reason is set); its phase may not be terminal yet."""
    paused: bool = False
    cancelling: bool = False
    pending: PendingApproval | None = None
    """The approval waiting for a decision; None when none waits or one was just taken."""
    waiting_messages: int = 0
    """Steering messages not yet handed to a model call."""


def visible_status(phase: RunStatus, paused: bool) -> RunStatus:
    """A terminal phase wins over the pause flag; otherwise a paused run shows `paused`."""
    if phase.terminal:
        return phase
    if paused:
        return RunStatus.PAUSED
    return phase


def terminal_status(reason: TerminalReason) -> RunStatus:
    return TERMINAL_STATUS[reason]


def limit_reached(step: int, usage: Usage, limits: Limits) -> TerminalReason | None:
    """The limit that forbids starting another step, checked before each model call."""
    if step >= limits.max_steps:
        return TerminalReason.MAX_STEPS
    if limits.max_tokens is not None and usage.total >= limits.max_tokens:
        return TerminalReason.BUDGET
    return None


def history_full(suggested: bool, history_events: int) -> bool:
    """Whether this Temporal run should hand over to a fresh one (continue-as-new).

    `suggested` is Temporal's own flag (`workflow.info().is_continue_as_new_suggested()`,
    set past the server's configured count or size); `history_events` backs it up
    with our threshold, whatever the server's configuration.
    """
    return suggested or history_events >= CONTINUE_AS_NEW_HISTORY_EVENTS


def conflict(
    detail: str,
    status: RunStatus,
    conflict_type: ConflictType = ConflictType.INVALID_TRANSITION,
) -> ApplicationError:
    """The error an update validator raises to reject an action (the API answers 409)."""
    return ApplicationError(
        detail, {"status": status.value}, type=conflict_type.value, non_retryable=True
    )


def check_pause(run: ControlView) -> None:
    _reject_if_ended(run, "pause")
    if run.paused:
        raise conflict("the run is already paused", run.status)


def check_resume(run: ControlView) -> None:
    _reject_if_ended(run, "resume")
    if not run.paused:
        raise conflict("the run is not paused", run.status)


def check_cancel(run: ControlView) -> None:
    _reject_if_ended(run, "cancel")
    if run.cancelling:
        raise conflict("the run is already being cancelled", run.status)


def check_decision(run: ControlView, decision: ApprovalDecision) -> None:
    """approve and deny must name the exact pending call *and* its arguments' digest."""
    _reject_if_ended(run, "decide on an approval of")
    pending = run.pending
    if pending is None:
        raise conflict("no approval is pending", run.status)
    if decision.approval_id != pending.approval_id:
        raise conflict(
            f"approval {decision.approval_id!r} is not pending (pending: {pending.approval_id!r})",
            run.status,
            ConflictType.APPROVAL_MISMATCH,
        )
    if decision.arguments_digest != pending.call.arguments_digest:
        # The expected digest is not named: a decision must come from someone who read
        # the pending call (the `status` query), not from the error of a guess.
        raise conflict(
            "arguments_digest does not match the pending call's arguments; read the "
            "pending call and its arguments_digest from the run's status",
            run.status,
            ConflictType.APPROVAL_MISMATCH,
        )


def check_send_message(run: ControlView) -> None:
    _reject_if_ended(run, "send a message to")
    if run.waiting_messages >= MAX_PENDING_MESSAGES:
        raise conflict(
            f"{MAX_PENDING_MESSAGES} messages are already waiting for the next model call",
            run.status,
        )


def _reject_if_ended(run: ControlView, action: str) -> None:
    if run.status.terminal or run.ending:
        raise conflict(f"cannot {action} a run that is {run.status.value}", run.status)
