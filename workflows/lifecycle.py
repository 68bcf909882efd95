"""How a Temporal run of an agent run waits, ends and hands over: the loop's lifecycle.

`AgentLoop` (`workflows.loop`) extends this with the steps themselves. Here:
`_boundary`/`_race` (cancel, deadline and pause between and during steps),
`_finish` (the run's end: artifacts, sandbox, the last event, webhooks) and
`_continue_as_new` (the hand-over to a fresh Temporal run with `LoopState` whole),
plus the status and event bookkeeping both sides share.

This module must not: define workflow handlers, do I/O except through
`workflows.calls`, or decide a transition's validity (`workflows.transitions`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, TypeVar

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate

with workflow.unsafe.imports_passed_through():
    # Safe to pass through: pure pydantic models and constants (no I/O, no mutable
    # module state); passed through so the sandbox does not re-import them per run.
    from agentrun.contracts import (
        ArtifactStoredPayload,
        ContinuedAsNewPayload,
        EventPayload,
        LoopState,
        RunEvent,
        RunFinishedPayload,
        RunInput,
        RunResult,
        RunStatus,
        SandboxControlInput,
        StoreArtifactInput,
        StoreEventsInput,
        TerminalReason,
        Usage,
        WebhookInput,
        new_event,
    )
    from agentrun.search_attributes import SA_STATUS, SA_STEPS

from workflows import calls, transitions
from workflows.errors import Abort, internal_error
from workflows.policies import (
    PATCH_STEPS_EVERY,
    PATCH_TURN_CONTINUE_AS_NEW,
    STEPS_ATTRIBUTE_EVERY,
)
from workflows.run_metrics import RunMetrics
from workflows.state import RunLocal
from workflows.step_trace import StepTrace

T = TypeVar("T")
PREVIEW_CHARS = 300
"""Event payloads carry at most this much of a goal, reply, message or answer."""


class RunLifecycle:
    """Waiting, ending and handing over; `AgentRunWorkflow` sets the attributes."""

    _inp: RunInput
    _state: LoopState
    _local: RunLocal
    _metrics: RunMetrics
    _steps: StepTrace

    # ------------------------------------------------------------ boundaries

    async def _boundary(self) -> None:
        """Between steps: honour cancel, deadline and pause (pausing the sandbox)."""
        local = self._local
        if local.cancel is not None:
            raise Abort(TerminalReason.CANCELLED)
        self._check_deadline()
        if not local.paused:
            return
        if self._state.sandbox_started:
            await self._sandbox("pause")
        while local.paused and local.cancel is None:
            try:
                await self._wait_idle(
                    lambda: not local.paused or local.cancel is not None, self._remaining()
                )
            except TimeoutError:
                raise Abort(TerminalReason.DEADLINE) from None
        if self._state.sandbox_started:
            await self._sandbox("resume")  # starts it again if it was stopped while idle
            self._sandbox_up()
        if local.cancel is not None:
            raise Abort(TerminalReason.CANCELLED)

    async def _race(self, handle: workflow.ActivityHandle[T]) -> T:
        """Await an activity, abandoning it on deadline or on cancel-with-abort."""
        local = self._local
        try:
            await workflow.wait_condition(
                lambda: (
                    handle.done() or (local.cancel is not None and local.cancel.abort_in_flight)
                ),
                timeout=self._remaining(),
            )
        except TimeoutError:
            handle.cancel()
            raise Abort(TerminalReason.DEADLINE) from None
        if not handle.done():
            handle.cancel()
            raise Abort(TerminalReason.CANCELLED)
        return await handle

    async def _wait_idle(self, condition: Callable[[], bool], bound: timedelta | None) -> None:
        """`workflow.wait_condition(condition, timeout=bound)` for a run that waits
        on a human (an approval, a pause): once the wait has lasted the run's
        `idle_stop_seconds`, its sandbox container is stopped, so an idle run holds no
        process or memory. Raises `TimeoutError` when `bound` passes, as the wait does.

        Deterministic: the threshold comes with the run's input, and a run without one
        (or not holding a running sandbox) waits exactly as before it existed."""
        idle = self._inp.idle_stop_seconds
        if idle is None or self._state.sandbox_since is None:
            await workflow.wait_condition(condition, timeout=bound)
            return
        threshold = timedelta(seconds=idle)
        if bound is not None and bound <= threshold:
            await workflow.wait_condition(condition, timeout=bound)
            return
        began = workflow.now()
        try:
            await workflow.wait_condition(condition, timeout=threshold)
            return
        except TimeoutError:
            pass
        await self._sandbox("stop")
        self._count_sandbox_time()  # a stopped container costs the run nothing
        if bound is None:
            await workflow.wait_condition(condition)
            return
        rest = bound - (workflow.now() - began)
        if rest <= timedelta(0):
            if condition():
                return
            raise TimeoutError
        await workflow.wait_condition(condition, timeout=rest)

    def _sandbox_up(self) -> None:
        """The run's container runs again (a tool call or a resume after an idle
        stop): its sandbox time counts again from now."""
        if self._state.sandbox_started and self._state.sandbox_since is None:
            self._state.sandbox_since = workflow.now()

    def _remaining(self) -> timedelta | None:
        if self._state.deadline is None:
            return None
        return max(self._state.deadline - workflow.now(), timedelta(milliseconds=1))

    def _check_deadline(self) -> None:
        if self._state.deadline is not None and workflow.now() >= self._state.deadline:
            raise Abort(TerminalReason.DEADLINE)

    # ------------------------------------------------------------ finishing

    async def _finish(self, reason: TerminalReason, error: str | None = None) -> RunResult:
        local, state = self._local, self._state
        local.reason, local.error, local.pending = reason, error, None
        self._steps.ended()  # the finishing activities are the run's, not the last step's
        for ref in await calls.collect_artifacts(
            StoreArtifactInput(
                run_id=self._inp.run_id,
                tenant_id=self._inp.tenant_id,
                collect_workspace=state.sandbox_started,
                conversation_head=state.conversation_head,
                secrets=self._inp.spec.secrets,
            )
        ):
            state.artifacts.append(ref)
            self._emit(ArtifactStoredPayload(name=ref.name, digest=ref.digest, size=ref.size))
        if state.sandbox_started:
            await self._sandbox("destroy", keep_workspace=self._inp.spec.sandbox.keep_workspace)
            self._count_sandbox_time()
        status = transitions.terminal_status(reason)
        local.finished_at = workflow.now()
        self._metrics.run_finished(status.value, reason.value)
        local.paused = False
        self._set_phase(status)
        cancelled = local.cancel is not None and reason == TerminalReason.CANCELLED
        self._emit(
            RunFinishedPayload(
                status=status,
                reason=reason,
                error=error or None,
                final_answer=None
                if local.final_answer is None
                else local.final_answer[:PREVIEW_CHARS],
                cancelled_by=local.cancel.actor.subject if cancelled and local.cancel else None,
            )
        )
        if self._inp.spec.webhook is not None:
            self._spawn_webhook(self._inp.spec.webhook.url, state.events[-1])
        if local.webhooks:
            await asyncio.gather(*local.webhooks, return_exceptions=True)
        await workflow.wait_condition(workflow.all_handlers_finished)
        local.done = True
        return RunResult(
            run_id=self._inp.run_id,
            tenant_id=self._inp.tenant_id,
            status=status,
            reason=reason,
            final_answer=local.final_answer,
            error=error,
            steps=state.step,
            usage=state.usage,
            artifacts=state.artifacts,
        )

    def _count_sandbox_time(self) -> None:
        """Add the time the run held its sandbox to its usage: from the first sandbox
        tool call (or its start again after an idle stop) to now, the removal or an
        idle stop (paused time included). Workflow time, so a replay adds the same
        number."""
        state = self._state
        if state.sandbox_since is not None:
            held = round(max((workflow.now() - state.sandbox_since).total_seconds(), 0.0), 3)
            state.usage = state.usage + Usage(sandbox_seconds=held)
            state.sandbox_since = None

    async def _sandbox(
        self,
        action: Literal["pause", "resume", "destroy", "stop"],
        keep_workspace: bool | None = None,
    ) -> None:
        await calls.sandbox_control(
            SandboxControlInput(
                run_id=self._inp.run_id,
                tenant_id=self._inp.tenant_id,
                action=action,
                keep_workspace=keep_workspace,
            )
        )

    def _spawn_webhook(self, url: str, event: RunEvent) -> None:
        """Deliver `event` in the background; the run waits for it before it ends."""
        inp = WebhookInput(
            run_id=self._inp.run_id, tenant_id=self._inp.tenant_id, url=url, event=event
        )

        async def deliver() -> None:
            self._emit(await calls.deliver_webhook(inp))

        self._local.webhooks.append(asyncio.ensure_future(deliver()))

    # ------------------------------------------------------- continue-as-new

    def _should_continue_as_new(self) -> bool:
        """Between two steps: after N steps here, or when the history is full."""
        info = workflow.info()
        if self._local.steps_this_run >= self._inp.continue_as_new_every:
            return True
        if info.is_continue_as_new_suggested():
            return True
        # Past our own threshold, though Temporal did not suggest it (runs before the
        # patch did not look; `patched` is asked last, so only full histories mark it).
        full = transitions.history_full(False, info.get_current_history_length())
        return full and workflow.patched(PATCH_TURN_CONTINUE_AS_NEW)

    def _history_full_within_turn(self) -> bool:
        """Between two tool calls of a turn: the history is full (runs before the patch
        ran the whole turn regardless)."""
        info = workflow.info()
        full = transitions.history_full(
            info.is_continue_as_new_suggested(), info.get_current_history_length()
        )
        return full and workflow.patched(PATCH_TURN_CONTINUE_AS_NEW)

    async def _continue_as_new(self) -> None:
        local, state = self._local, self._state
        if local.webhooks:
            await asyncio.gather(*local.webhooks, return_exceptions=True)
            local.webhooks = []
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._emit(ContinuedAsNewPayload(step=state.step, pending_tool_calls=len(state.turn_calls)))
        if state.events:
            # Updates are still accepted while the segment is stored: their events stay
            # (unflushed) for the next run, and only the stored ones are dropped.
            flushed = list(state.events)
            segment = await calls.store_events(
                StoreEventsInput(
                    run_id=self._inp.run_id, tenant_id=self._inp.tenant_id, events=flushed
                )
            )
            state.segments.append(segment)
            state.events = state.events[len(flushed) :]
        if state.started_at is None or state.conversation_head is None:
            raise internal_error("continue-as-new before the run was initialised")
        # A pause or cancel answered by this run holds in the next one too.
        next_state = state.model_copy(
            update={
                "continued": state.continued + 1,
                "paused": local.paused,
                "cancel": local.cancel,
            }
        )
        workflow.continue_as_new(self._inp.model_copy(update={"carried": next_state}))

    # ------------------------------------------------------------ helpers

    def _status(self) -> RunStatus:
        return transitions.visible_status(self._state.status, self._local.paused)

    def _set_phase(self, phase: RunStatus) -> None:
        self._state.status = phase
        self._sync_status()

    def _sync_status(self) -> None:
        """Keep the `AgentRunStatus` search attribute equal to the visible status, and
        bring `AgentRunSteps` up to date with it (see `PATCH_STEPS_EVERY`)."""
        status = self._status()
        if status != self._local.sa_status:
            self._local.sa_status = status
            updates: list[SearchAttributeUpdate[Any]] = [SA_STATUS.value_set(status.value)]
            step = self._state.step
            if step and self._local.sa_steps != step and workflow.patched(PATCH_STEPS_EVERY):
                updates.append(SA_STEPS.value_set(step))
                self._local.sa_steps = step
            workflow.upsert_search_attributes(updates)

    def _record_steps(self) -> None:
        """After a model call: `AgentRunSteps` every `STEPS_ATTRIBUTE_EVERY` steps (every
        step for runs started before `PATCH_STEPS_EVERY`)."""
        step = self._state.step
        if step % STEPS_ATTRIBUTE_EVERY == 0 or not workflow.patched(PATCH_STEPS_EVERY):
            workflow.upsert_search_attributes([SA_STEPS.value_set(step)])
            self._local.sa_steps = step

    def _emit(self, payload: EventPayload, attempt: int | None = None) -> None:
        self._state.last_seq += 1
        self._state.events.append(new_event(self._state.last_seq, workflow.now(), payload, attempt))

    def _require_head(self) -> str:
        if self._state.conversation_head is None:
            raise internal_error("conversation not initialised")
        return self._state.conversation_head
