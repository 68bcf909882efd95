"""`AgentRunWorkflow`: the deterministic kernel of one agent run.

The workflow owns the loop (model call → tool calls → observe → repeat), the
run's state machine, its limits and its approvals. Every side effect is an
activity; no module of `workflows/` does I/O or reads a clock but `workflow.now()`.

This file is the workflow's interface, what clients see: its input, its result,
its updates, signals and queries. The parts live beside it:

- `workflows.loop`: the loop's mechanics (`AgentLoop`, which this class extends);
- `workflows.transitions`: the state machine (visible status, which control action
  is valid when, the 409 errors); pure, unit-tested without a server;
- `workflows.approvals`: the approval rules (pending record, wait, expiry); pure;
- `workflows.calls` and `workflows.policies`: each activity call with its timeouts
  and named retry policy, and the `workflow.patched` markers;
- `workflows.errors`: how an exception ends the run;
- `workflows.outcome` and `workflows.cancel_parent`: how the run's end shows in
  Temporal (`Completed`, `Failed` with the result in the failure, `Canceled` with it
  in the memo), read back the same way by the API;
- `workflows.tenant_slots`: the tenant's concurrent-run quota. A run started
  `queued` (`RunInput.slot`) waits for `slot_granted` before its first step; every
  run with a slot releases it at its end, whatever the outcome.

State: the loop's state is one model, `LoopState` (`self._state`), carried whole on
continue-as-new; what one Temporal run holds beside it is `RunLocal` (`self._local`).
Control actions are *updates* with validators, so an invalid transition (resume a
completed run, approve what is not pending) is rejected before it touches history,
with a typed error the API turns into HTTP 409. The same actions are *signals* for
the Temporal CLI (`temporal workflow signal --name approve …`); a signal cannot be
refused, so an invalid one changes nothing and is recorded as `control.rejected`.

History stays small and flat per step: the conversation, tool arguments and tool
output live in the artifact store and travel here as sha256 digests only. Events
are kept in memory (served by the `events` query) and flushed to the artifact store
as a segment whenever the run continues-as-new.

This module must not: change a handler's name or signature (clients and recorded
histories name them), or hold state outside `self._state` and `self._local`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, TypeVar

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    # Safe to pass through: pure pydantic models and constants (no I/O, no mutable
    # module state); passed through so the sandbox does not re-import them per run.
    from pydantic import BaseModel, ValidationError

    from agentrun.contracts import (
        SYSTEM_ACTOR,
        Actor,
        ApprovalDecision,
        ControlAction,
        ControlRejectedPayload,
        ControlRequest,
        ControlResult,
        EventsPage,
        EventsQuery,
        LoopState,
        MessageReceivedPayload,
        RunInput,
        RunResult,
        RunSlot,
        RunStatus,
        RunStatusView,
        SlotRelease,
        StatusChangedPayload,
        TerminalReason,
        UserMessage,
        slots_workflow_id,
    )

from workflows import transitions
from workflows.cancel_parent import CancelParentWorkflow
from workflows.errors import Abort, outcome_of
from workflows.lifecycle import PREVIEW_CHARS
from workflows.loop import AgentLoop
from workflows.outcome import MEMO_RESULT, ending_failure
from workflows.policies import (
    CANCEL_PARENT_TIMEOUT,
    PATCH_DECISION_STATUS,
    PATCH_TEMPORAL_OUTCOME,
)
from workflows.run_metrics import RunMetrics
from workflows.state import RunLocal
from workflows.step_trace import StepTrace
from workflows.tenant_slots import SLOT_GRANTED, TenantSlotsWorkflow

__all__ = ["AgentRunWorkflow"]

M = TypeVar("M", bound=BaseModel)


@workflow.defn(name="AgentRunWorkflow")
class AgentRunWorkflow(AgentLoop):
    @workflow.init
    def __init__(self, inp: RunInput) -> None:
        self._inp = inp
        self._state = inp.carried.model_copy(deep=True) if inp.carried else LoopState()
        self._local = RunLocal()
        self._metrics = RunMetrics()  # replay-safe recordings (workflow.metric_meter)
        self._steps = StepTrace()  # a span per step when the run is traced
        if inp.carried is not None:
            # The previous Temporal run's answered pause / cancel (defaults for runs
            # continued before they were carried).
            self._local.paused = inp.carried.paused
            self._local.cancel = inp.carried.cancel

    @workflow.run
    async def run(self, inp: RunInput) -> RunResult:
        try:
            if inp.carried is None:
                await self._await_slot()
                await self._start()
            result = await self._loop()
        except (Abort, ActivityError, ApplicationError) as err:
            reason, error = outcome_of(err)
            result = await self._finish(reason, error=error)
        except asyncio.CancelledError:
            # Temporal-level cancellation (Web UI, `temporal workflow cancel`): clean up
            # the sandbox, record the outcome, then let Temporal mark the run cancelled.
            self._local.cancel = self._local.cancel or ControlRequest(
                actor=SYSTEM_ACTOR, reason="cancelled"
            )
            result = await self._finish(TerminalReason.CANCELLED)
            await self._release_slot()
            if workflow.patched(PATCH_TEMPORAL_OUTCOME):
                workflow.upsert_memo({MEMO_RESULT: result})
            raise
        await self._release_slot()
        return await self._end(result)

    # ------------------------------------------------------------ tenant slot
    #
    # A run of a tenant with a concurrency quota holds one of its slots
    # (`workflows.tenant_slots`): the API acquired it (`held`), or the run waits for
    # it (`queued`). Runs without `slot` (no quota; every recorded history) issue
    # none of these commands. Continue-as-new keeps the slot (same workflow id).

    async def _await_slot(self) -> None:
        """A `queued` run: join the tenant's queue and wait (status `queued`) for a
        slot, or for a cancel (which ends the run `cancelled` and leaves the queue)."""
        if self._inp.slot != RunSlot.QUEUED:
            return
        local = self._local
        if not await self._tell_slots(TenantSlotsWorkflow.enqueue):
            return  # nobody counts the tenant's runs any more: start
        await workflow.wait_condition(lambda: local.slot_granted or local.cancel is not None)
        if not local.slot_granted:
            raise Abort(TerminalReason.CANCELLED)

    async def _release_slot(self) -> None:
        """At the run's end, whatever its outcome: hand the slot (or the place) on."""
        if self._inp.slot is not None:
            await self._tell_slots(TenantSlotsWorkflow.release)

    async def _tell_slots(self, signal: Callable[[TenantSlotsWorkflow, SlotRelease], None]) -> bool:
        slots = workflow.get_external_workflow_handle_for(
            TenantSlotsWorkflow.run, slots_workflow_id(self._inp.tenant_id)
        )
        try:
            await slots.signal(signal, SlotRelease(workflow_id=workflow.info().workflow_id))
        except FailureError as err:
            # The slots workflow is gone (terminated by hand): the next launch starts
            # a new one, which counts from zero.
            workflow.logger.warning("tenant slots unreachable: %s", err)
            return False
        return True

    async def _end(self, result: RunResult) -> RunResult:
        """End the Temporal run as its outcome says (`workflows.outcome`): return a
        completed run's result, fail a failed run, cancel a cancelled one.

        Runs started before the patch returned every result (Temporal `Completed`)."""
        if result.status == RunStatus.COMPLETED or not workflow.patched(PATCH_TEMPORAL_OUTCOME):
            return result
        if result.status == RunStatus.FAILED:
            raise ending_failure(result)
        workflow.upsert_memo({MEMO_RESULT: result})
        info = workflow.info()
        # A run cannot ask Temporal to cancel itself: a child asks for it.
        child = await workflow.start_child_workflow(
            CancelParentWorkflow.run,
            # Named after this Temporal run (unique, and the same on replay, whatever
            # workflow id a replayed history is given).
            id=f"agentrun-cancel/{info.run_id}",
            task_queue=info.task_queue,
            execution_timeout=CANCEL_PARENT_TIMEOUT,
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
        )
        # End once the child has finished (its request has landed before: Temporal
        # records it first). Ending while the child's completion is on its way would
        # make Temporal refuse this workflow task, failing the updates riding on it.
        for _ in range(2):  # the request interrupts the first wait
            try:
                await workflow.wait_condition(child.done, timeout=CANCEL_PARENT_TIMEOUT)
                break
            except asyncio.CancelledError:
                continue
            except TimeoutError:
                break
        if workflow.cancellation_reason() is None:
            # The request never came (the child failed, or no worker runs it): end as
            # runs did before the patch rather than not at all; the outcome is the same.
            workflow.logger.warning("%s did not cancel the run", child.id)
            return result
        # Temporal cancelled the run: ending with this makes it `Canceled`.
        raise asyncio.CancelledError("cancelled")

    # ------------------------------------------------------------ updates

    @workflow.update
    async def pause(self, req: ControlRequest) -> ControlResult:
        return self._apply_pause(req)

    @pause.validator
    def _validate_pause(self, req: ControlRequest) -> None:
        transitions.check_pause(self._control_view())

    @workflow.update
    async def resume(self, req: ControlRequest) -> ControlResult:
        return self._apply_resume(req)

    @resume.validator
    def _validate_resume(self, req: ControlRequest) -> None:
        transitions.check_resume(self._control_view())

    @workflow.update
    async def cancel(self, req: ControlRequest) -> ControlResult:
        return self._apply_cancel(req)

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
        return self._apply_message(msg)

    @send_message.validator
    def _validate_send_message(self, msg: UserMessage) -> None:
        transitions.check_send_message(self._control_view())

    # ------------------------------------------------------------ signals
    #
    # The same actions for `temporal workflow signal --name <action>` (the updates
    # keep their names: Temporal keeps signal and update names apart). A signal
    # cannot be refused to its sender, so one the update's validator would reject
    # (or whose input does not decode) changes nothing and is recorded as a
    # `control.rejected` event. The input is decoded here, not by the SDK, which
    # would drop an undecodable signal with only a worker log line.

    @workflow.signal(name="pause")
    def pause_signal(self, raw: RawValue) -> None:
        req = self._signal_input("pause", raw, ControlRequest)
        if req is not None and self._signal_valid("pause", req.actor, transitions.check_pause):
            self._apply_pause(req)

    @workflow.signal(name="resume")
    def resume_signal(self, raw: RawValue) -> None:
        req = self._signal_input("resume", raw, ControlRequest)
        if req is not None and self._signal_valid("resume", req.actor, transitions.check_resume):
            self._apply_resume(req)

    @workflow.signal(name="cancel")
    def cancel_signal(self, raw: RawValue) -> None:
        req = self._signal_input("cancel", raw, ControlRequest)
        if req is not None and self._signal_valid("cancel", req.actor, transitions.check_cancel):
            self._apply_cancel(req)

    @workflow.signal(name="approve")
    def approve_signal(self, raw: RawValue) -> None:
        self._decide_by_signal("approve", raw)

    @workflow.signal(name="deny")
    def deny_signal(self, raw: RawValue) -> None:
        self._decide_by_signal("deny", raw)

    @workflow.signal(name=SLOT_GRANTED)
    def slot_granted_signal(self) -> None:
        """From the tenant's slots workflow: a `queued` run may start."""
        self._local.slot_granted = True

    @workflow.signal(name="message")
    def message_signal(self, raw: RawValue) -> None:
        msg = self._signal_input("message", raw, UserMessage)
        if msg is not None and self._signal_valid(
            "message", msg.actor, transitions.check_send_message
        ):
            self._apply_message(msg)

    def _decide_by_signal(self, action: Literal["approve", "deny"], raw: RawValue) -> None:
        decision = self._signal_input(action, raw, ApprovalDecision)
        if decision is None:
            return
        if self._signal_valid(
            action, decision.actor, lambda run: transitions.check_decision(run, decision)
        ):
            # The loop takes it like an update's (there is no caller to answer).
            self._local.decision = (action == "approve", decision)

    def _signal_input(self, action: str, raw: RawValue, model: type[M]) -> M | None:
        try:
            value = workflow.payload_converter().from_payload(raw.payload, model)
            # A converter may hand back a plain value for a payload it cannot type.
            return model.model_validate(value)
        except ValidationError as err:
            # Each field's problem, without pydantic's URLs or the values sent.
            problems = "; ".join(
                f"{'.'.join(str(part) for part in e['loc']) or 'input'}: {e['msg']}"
                for e in err.errors(include_url=False, include_input=False)
            )
            self._reject_signal(action, "unknown", f"InvalidInput: {problems}")
            return None
        except Exception as err:  # whatever the sender sent: record it, never fail the task
            self._reject_signal(action, "unknown", f"InvalidInput: {type(err).__name__}: {err}")
            return None

    def _signal_valid(
        self, action: str, actor: Actor, check: Callable[[transitions.ControlView], None]
    ) -> bool:
        try:
            check(self._control_view())
        except ApplicationError as err:
            self._reject_signal(action, actor.subject, f"{err.type}: {err.message}")
            return False
        return True

    def _reject_signal(self, action: str, actor: str, reason: str) -> None:
        if self._local.done:
            # The run has finished (`run.finished` is its last event); it is ending
            # as cancelled and waits only for Temporal's cancel request.
            workflow.logger.warning("%s signal from %s changed nothing: %s", action, actor, reason)
            return
        self._emit(
            ControlRejectedPayload(action=action, actor=actor, reason=reason[:PREVIEW_CHARS])
        )

    # ------------------------------------------------------------ what both apply

    def _apply_pause(self, req: ControlRequest) -> ControlResult:
        self._local.paused = True
        self._emit(self._status_payload(req, ControlAction.PAUSE))
        return ControlResult(status=self._status(), detail="no new step starts until resumed")

    def _apply_resume(self, req: ControlRequest) -> ControlResult:
        self._local.paused = False
        self._emit(self._status_payload(req, ControlAction.RESUME))
        return ControlResult(status=self._status())

    def _apply_cancel(self, req: ControlRequest) -> ControlResult:
        self._local.cancel = req
        self._emit(self._status_payload(req, ControlAction.CANCEL))
        detail = (
            "aborting the in-flight step"
            if req.abort_in_flight
            else "after the in-flight step ends"
        )
        return ControlResult(status=self._status(), detail=f"cancelling: {detail}")

    def _apply_message(self, msg: UserMessage) -> ControlResult:
        self._state.user_messages.append(msg.text)
        self._emit(
            MessageReceivedPayload(
                actor=msg.actor.subject,
                on_behalf_of=msg.actor.on_behalf_of,
                text=msg.text[:PREVIEW_CHARS],
            )
        )
        return ControlResult(status=self._status(), detail="delivered with the next model call")

    # ------------------------------------------------------------ queries

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
            action=action,
            status=self._status(),
            actor=req.actor.subject,
            on_behalf_of=req.actor.on_behalf_of,
            reason=req.reason,
        )
