"""`AgentRunWorkflow`: the deterministic kernel of one agent run.

The workflow owns the loop (model call → tool calls → observe → repeat), the
run's state machine, its limits and its approvals. Every side effect is an
activity; no module of `workflows/` does I/O or reads a clock but `workflow.now()`.

This file is the workflow's interface, what clients see: its input, its result,
its updates and queries. The parts live beside it:

- `workflows.loop`: the loop's mechanics (`AgentLoop`, which this class extends);
- `workflows.transitions`: the state machine (visible status, which control action
  is valid when, the 409 errors); pure, unit-tested without a server;
- `workflows.approvals`: the approval rules (pending record, wait, expiry); pure;
- `workflows.calls` and `workflows.policies`: each activity call with its timeouts
  and named retry policy, and the `workflow.patched` markers;
- `workflows.errors`: how an exception ends the run.

State: the loop's state is one model, `LoopState` (`self._state`), carried whole on
continue-as-new; what one Temporal run holds beside it is `RunLocal` (`self._local`).
Control actions are *updates* with validators, so an invalid transition (resume a
completed run, approve what is not pending) is rejected before it touches history,
with a typed error the API turns into HTTP 409.

History stays small and flat per step: the conversation, tool arguments and tool
output live in the artifact store and travel here as sha256 digests only. Events
are kept in memory (served by the `events` query) and flushed to the artifact store
as a segment whenever the run continues-as-new.

This module must not: change a handler's name or signature (clients and recorded
histories name them), or hold state outside `self._state` and `self._local`.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    # Safe to pass through: pure pydantic models and constants (no I/O, no mutable
    # module state); passed through so the sandbox does not re-import them per run.
    from agentrun.contracts import (
        SYSTEM_ACTOR,
        ApprovalDecision,
        ControlAction,
        ControlRequest,
        ControlResult,
        EventsPage,
        EventsQuery,
        LoopState,
        MessageReceivedPayload,
        RunInput,
        RunResult,
        RunStatusView,
        StatusChangedPayload,
        TerminalReason,
        UserMessage,
    )

from workflows import transitions
from workflows.errors import Abort, outcome_of
from workflows.lifecycle import PREVIEW_CHARS
from workflows.loop import AgentLoop
from workflows.policies import PATCH_DECISION_STATUS
from workflows.state import RunLocal

__all__ = ["AgentRunWorkflow"]


@workflow.defn(name="AgentRunWorkflow")
class AgentRunWorkflow(AgentLoop):
    @workflow.init
    def __init__(self, inp: RunInput) -> None:
        self._inp = inp
        self._state = inp.carried.model_copy(deep=True) if inp.carried else LoopState()
        self._local = RunLocal()
        if inp.carried is not None:
            # The previous Temporal run's answered pause / cancel (defaults for runs
            # continued before they were carried).
            self._local.paused = inp.carried.paused
            self._local.cancel = inp.carried.cancel

    @workflow.run
    async def run(self, inp: RunInput) -> RunResult:
        try:
            if inp.carried is None:
                await self._start()
            return await self._loop()
        except (Abort, ActivityError, ApplicationError) as err:
            reason, error = outcome_of(err)
            return await self._finish(reason, error=error)
        except asyncio.CancelledError:
            # Temporal-level cancellation (Web UI, `temporal workflow cancel`): clean up
            # the sandbox, record the outcome, then let Temporal mark the run cancelled.
            self._local.cancel = self._local.cancel or ControlRequest(
                actor=SYSTEM_ACTOR, reason="cancelled"
            )
            await self._finish(TerminalReason.CANCELLED)
            raise

    # ------------------------------------------------------------ handlers

    @workflow.update
    async def pause(self, req: ControlRequest) -> ControlResult:
        self._local.paused = True
        self._emit(self._status_payload(req, ControlAction.PAUSE))
        return ControlResult(status=self._status(), detail="no new step starts until resumed")

    @pause.validator
    def _validate_pause(self, req: ControlRequest) -> None:
        transitions.check_pause(self._control_view())

    @workflow.update
    async def resume(self, req: ControlRequest) -> ControlResult:
        self._local.paused = False
        self._emit(self._status_payload(req, ControlAction.RESUME))
        return ControlResult(status=self._status())

    @resume.validator
    def _validate_resume(self, req: ControlRequest) -> None:
        transitions.check_resume(self._control_view())

    @workflow.update
    async def cancel(self, req: ControlRequest) -> ControlResult:
        self._local.cancel = req
        self._emit(self._status_payload(req, ControlAction.CANCEL))
        detail = (
            "aborting the in-flight step"
            if req.abort_in_flight
            else "after the in-flight step ends"
        )
        return ControlResult(status=self._status(), detail=f"cancelling: {detail}")

    @cancel.validator
    def _validate_cancel(self, req: ControlRequest) -> None:
        transitions.check_cancel(self._control_view())

    @workflow.update
    async def approve(self, decision: ApprovalDecision) -> ControlResult:
        return await self._decide(True, decision)

    @approve.validator
    def _validate_approve(self, decision: ApprovalDecision) -> None:
        transitions.check_decision(self._control_view(), decision)

    @workflow.update
    async def deny(self, decision: ApprovalDecision) -> ControlResult:
        return await self._decide(False, decision)

    @deny.validator
    def _validate_deny(self, decision: ApprovalDecision) -> None:
        transitions.check_decision(self._control_view(), decision)

    async def _decide(self, approved: bool, decision: ApprovalDecision) -> ControlResult:
        """Hand the decision to the loop and answer with the status it moves the run to.

        The loop takes the decision in the same workflow task, but the update now
        completes after the loop's next commands, hence the patch for older runs."""
        local = self._local
        local.decision = (approved, decision)
        if workflow.patched(PATCH_DECISION_STATUS):
            await workflow.wait_condition(lambda: local.decision is None or local.done)
        return ControlResult(status=self._status(), detail="approved" if approved else "denied")

    @workflow.update
    async def send_message(self, msg: UserMessage) -> ControlResult:
        self._state.user_messages.append(msg.text)
        self._emit(MessageReceivedPayload(actor=msg.actor.subject, text=msg.text[:PREVIEW_CHARS]))
        return ControlResult(status=self._status(), detail="delivered with the next model call")

    @send_message.validator
    def _validate_send_message(self, msg: UserMessage) -> None:
        transitions.check_send_message(self._control_view())

    @workflow.query
    def status(self) -> RunStatusView:
        local, state = self._local, self._state
        return RunStatusView(
            run_id=self._inp.run_id,
            tenant_id=self._inp.tenant_id,
            status=self._status(),
            reason=local.reason,
            steps=state.step,
            usage=state.usage,
            pending_approval=local.pending if local.decision is None else None,
            final_answer=local.final_answer,
            error=local.error,
            artifacts=state.artifacts,
            last_seq=state.last_seq,
            started_at=state.started_at,
            finished_at=local.finished_at,
            continued=state.continued,
            conversation_head=state.conversation_head,
        )

    @workflow.query
    def events(self, q: EventsQuery) -> EventsPage:
        state = self._state
        return EventsPage(
            events=[e for e in state.events if e.seq > q.after_seq][: q.limit],
            segments=[s for s in state.segments if s.last_seq > q.after_seq],
            last_seq=state.last_seq,
            terminal=self._local.done,
            model_call=self._local.model_call,
        )

    # ------------------------------------------------------------ helpers

    def _control_view(self) -> transitions.ControlView:
        local = self._local
        return transitions.ControlView(
            status=self._status(),
            ending=local.reason is not None,
            paused=local.paused,
            cancelling=local.cancel is not None,
            pending=local.pending if local.decision is None else None,
            waiting_messages=len(self._state.user_messages),
        )

    def _status_payload(self, req: ControlRequest, action: ControlAction) -> StatusChangedPayload:
        self._sync_status()
        return StatusChangedPayload(
            action=action, status=self._status(), actor=req.actor.subject, reason=req.reason
        )
