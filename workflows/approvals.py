"""Approval rules as pure functions: the pending record, how long to wait, what expiry means.

A tool call that the run's `ApprovalPolicy` names waits for a human decision. The
workflow (`AgentRunWorkflow._await_approval`) does the waiting; the rules it
follows live here so they are unit-tested without a Temporal server:

- the pending approval is named after the call (`ap-<call id>`), so approving it
  twice, or approving a different call, is caught by `transitions.check_decision`;
- the wait ends at the approval's expiry or at the run's deadline, whichever comes
  first; when the deadline comes first the run fails with `deadline`, otherwise
  the policy's `on_timeout` outcome is applied as if `system` had decided.

This module must not: call `temporalio.workflow` (the caller passes `now` and the
time remaining before the deadline).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from agentrun.contracts import (
    SYSTEM_ACTOR,
    ApprovalDecision,
    ApprovalPolicy,
    PendingApproval,
    ToolCall,
)

EXPIRED_REASON = "approval expired"


def approval_timeout(policy: ApprovalPolicy) -> timedelta | None:
    """How long a pending approval waits; None waits forever."""
    return timedelta(seconds=policy.timeout_seconds) if policy.timeout_seconds else None


def pending_approval(call: ToolCall, policy: ApprovalPolicy, now: datetime) -> PendingApproval:
    timeout = approval_timeout(policy)
    return PendingApproval(
        approval_id=f"ap-{call.id}",
        call=call,
        requested_at=now,
        expires_at=now + timeout if timeout else None,
        on_timeout=policy.on_timeout,
    )


def wait_bound(timeout: timedelta | None, remaining: timedelta | None) -> timedelta | None:
    """Wait until the approval expires or the deadline passes, whichever is first."""
    if not (timeout or remaining):
        return None
    return min(t for t in (timeout, remaining) if t is not None)


def deadline_comes_first(timeout: timedelta | None, remaining: timedelta | None) -> bool:
    """Whether a timed-out wait was ended by the run's deadline (not by the expiry)."""
    return remaining is not None and (timeout is None or remaining <= timeout)


def expiry_decision(pending: PendingApproval) -> tuple[bool, ApprovalDecision]:
    """The decision an expired approval gets: the policy's `on_timeout`, made by `system`."""
    return (
        pending.on_timeout == "approve",
        ApprovalDecision(
            approval_id=pending.approval_id,
            arguments_digest=pending.call.arguments_digest,
            actor=SYSTEM_ACTOR,
            reason=EXPIRED_REASON,
        ),
    )


def denial_reason(approved: bool, decision: ApprovalDecision) -> str | None:
    """None for an approval; otherwise the reason the tool call reports to the model."""
    if approved:
        return None
    return f"denied by {decision.actor.subject}: {decision.reason or 'no reason given'}"


def decision_label(approved: bool, decision: ApprovalDecision) -> str:
    """The `decision` attribute of `agentrun_approval_wait_seconds`."""
    if decision.actor == SYSTEM_ACTOR and decision.reason == EXPIRED_REASON:
        return "expired"
    return "approved" if approved else "denied"
