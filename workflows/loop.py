"""The agent loop's mechanics, which `AgentRunWorkflow` (`workflows.agent_run`) extends.

The workflow class shows what clients see (input, run, updates, queries); the *how*
lives here, one concern per method group: `_start`/`_loop` (model call → tool calls
→ observe → repeat), `_await_approval`, `_boundary`/`_race` (cancel, deadline and
pause between and during steps), `_finish`/`_continue_as_new` (the two ways a
Temporal run ends). The state they work on is described in `workflows.state`.

This module must not: define workflow handlers (the interface stays in one place),
do I/O except through `workflows.calls`, or decide a transition's validity
(`workflows.transitions`).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Literal, TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    # Safe to pass through: pure pydantic models and constants (no I/O, no mutable
    # module state); passed through so the sandbox does not re-import them per run.
    from agentrun.contracts import (
        ApprovalRequestedPayload,
        ApprovalResolvedPayload,
        ArtifactStoredPayload,
        ContinuedAsNewPayload,
        DispatchToolInput,
        EventPayload,
        InitRunInput,
        LoopState,
        ModelCalledPayload,
        ModelCallInFlight,
        ModelCallInput,
        ModelCallOutput,
        ModelStartedPayload,
        RunEvent,
        RunFinishedPayload,
        RunInput,
        RunResult,
        RunStartedPayload,
        RunStatus,
        SandboxControlInput,
        StoreArtifactInput,
        StoreEventsInput,
        TerminalReason,
        ToolCall,
        ToolCalledPayload,
        ToolName,
        ToolResult,
        ToolResultPayload,
        WebhookInput,
        new_event,
    )
    from agentrun.search_attributes import (
        SA_AGENT,
        SA_CREATED_BY,
        SA_LABELS,
        SA_MODEL,
        SA_STATUS,
        SA_STEPS,
        SA_TENANT,
        label_values,
        model_label,
    )

from workflows import approvals, calls, transitions
from workflows.errors import Abort, internal_error
from workflows.policies import PATCH_MODEL_STARTED
from workflows.prompts import system_prompt
from workflows.state import RunLocal

T = TypeVar("T")
PREVIEW_CHARS = 300
"""Event payloads carry at most this much of a goal, reply, message or answer."""
SANDBOX_TOOLS = frozenset(
    {ToolName.SHELL, ToolName.READ_FILE, ToolName.WRITE_FILE, ToolName.LIST_FILES}
)


class AgentLoop:
    """The loop's mechanics; `AgentRunWorkflow` sets the three attributes in `__init__`."""

    _inp: RunInput
    _state: LoopState
    _local: RunLocal

    # ----------------------------------------------------------------- steps

    async def _start(self) -> None:
        spec, state = self._inp.spec, self._state
        state.started_at = workflow.now()
        if spec.limits.deadline_seconds is not None:
            state.deadline = state.started_at + timedelta(seconds=spec.limits.deadline_seconds)
        workflow.upsert_search_attributes(
            [
                SA_TENANT.value_set(self._inp.tenant_id),
                SA_AGENT.value_set(spec.agent),
                SA_MODEL.value_set(model_label(spec)),
                SA_LABELS.value_set(label_values(spec)),
                SA_CREATED_BY.value_set(self._inp.created_by.subject),
            ]
        )
        self._set_phase(RunStatus.RUNNING)
        self._emit(
            RunStartedPayload(
                goal=spec.goal[:PREVIEW_CHARS], created_by=self._inp.created_by.subject
            )
        )
        init = await calls.init_run(
            InitRunInput(
                run_id=self._inp.run_id,
                tenant_id=self._inp.tenant_id,
                system_prompt=system_prompt(spec),
                goal=spec.goal,
                script=spec.model.script,
            )
        )
        state.conversation_head = init.conversation_head
        state.script_digest = init.script_digest

    async def _loop(self) -> RunResult:
        spec, state = self._inp.spec, self._state
        while True:
            await self._boundary()
            limit = transitions.limit_reached(state.step, state.usage, spec.limits)
            if limit is not None:
                return await self._finish(limit)
            if self._should_continue_as_new():
                await self._continue_as_new()
            state.step += 1
            self._local.steps_this_run += 1
            # Messages that arrive while the model call is in flight wait for the next one.
            consumed = len(state.user_messages)
            if workflow.patched(PATCH_MODEL_STARTED):
                # Opens the step's delta stream for SSE followers (see api.sse).
                self._emit(ModelStartedPayload(step=state.step))
                self._local.model_call = ModelCallInFlight(
                    step=state.step, started_seq=state.last_seq
                )
            try:
                reply = await self._call_model(consumed)
            finally:
                self._local.model_call = None
            state.conversation_head = reply.conversation_head
            state.append = []
            state.user_messages = state.user_messages[consumed:]
            state.usage = state.usage + reply.usage
            workflow.upsert_search_attributes([SA_STEPS.value_set(state.step)])
            self._emit(
                ModelCalledPayload(
                    step=state.step,
                    input_tokens=reply.usage.input_tokens,
                    output_tokens=reply.usage.output_tokens,
                    tool_calls=[c.name for c in reply.tool_calls],
                    text=reply.text_preview[:PREVIEW_CHARS],
                ),
                attempt=reply.attempt,
            )
            if not reply.tool_calls:
                # A reply without tool calls is the model's final answer.
                self._local.final_answer = reply.text_preview
                return await self._finish(TerminalReason.COMPLETED)
            for call in reply.tool_calls:
                result = await self._run_tool(call)
                if result.message_digest is not None:
                    state.append.append(result.message_digest)
                if result.final_answer is not None:
                    self._local.final_answer = result.final_answer
                    return await self._finish(TerminalReason.COMPLETED)
                if self._local.cancel is not None:
                    break

    async def _call_model(self, consumed: int) -> ModelCallOutput:
        spec, state = self._inp.spec, self._state
        return await self._race(
            calls.start_model_call(
                ModelCallInput(
                    run_id=self._inp.run_id,
                    tenant_id=self._inp.tenant_id,
                    step=state.step,
                    model=spec.model.model_copy(update={"script": None}),
                    script_digest=state.script_digest,
                    conversation_head=self._require_head(),
                    append=state.append,
                    user_messages=list(state.user_messages[:consumed]),
                    tools=[t.value for t in spec.tools],
                )
            )
        )

    async def _run_tool(self, call: ToolCall) -> ToolResult:
        spec = self._inp.spec
        denied: str | None = None
        if spec.approval.requires_approval(call.name):
            denied = await self._await_approval(call)
        self._emit(ToolCalledPayload(call_id=call.id, tool=call.name, arguments=call.preview))
        if call.name in SANDBOX_TOOLS and denied is None:
            self._state.sandbox_started = True
        result = await self._race(
            calls.start_tool(
                DispatchToolInput(
                    run_id=self._inp.run_id,
                    tenant_id=self._inp.tenant_id,
                    call=call,
                    sandbox=spec.sandbox,
                    secrets=spec.secrets,
                    timeout_seconds=spec.limits.tool_timeout_seconds,
                    max_output_bytes=spec.limits.max_tool_output_bytes,
                    denied_reason=denied,
                )
            )
        )
        if result.output_artifact is not None:
            self._state.artifacts.append(result.output_artifact)
        self._emit(
            ToolResultPayload(
                call_id=call.id,
                tool=call.name,
                ok=result.ok,
                summary=result.summary,
                error_type=result.error_type,
                exit_code=result.exit_code,
                output_artifact=result.output_artifact.digest if result.output_artifact else None,
            ),
            attempt=result.attempt,
        )
        return result

    async def _await_approval(self, call: ToolCall) -> str | None:
        """Wait for a decision; return None when approved, the denial reason otherwise."""
        local = self._local
        policy = self._inp.spec.approval
        pending = approvals.pending_approval(call, policy, workflow.now())
        local.pending, local.decision = pending, None
        self._set_phase(RunStatus.AWAITING_APPROVAL)
        self._emit(
            ApprovalRequestedPayload(
                approval_id=pending.approval_id,
                call_id=call.id,
                tool=call.name,
                arguments_digest=call.arguments_digest,
                arguments=call.preview,
                expires_at=pending.expires_at,
            )
        )
        webhook = self._inp.spec.webhook
        if webhook is not None and webhook.on_approval_request:
            self._spawn_webhook(webhook.url, self._state.events[-1])
        timeout, remaining = approvals.approval_timeout(policy), self._remaining()
        try:
            await workflow.wait_condition(
                lambda: local.decision is not None or local.cancel is not None,
                timeout=approvals.wait_bound(timeout, remaining),
            )
        except TimeoutError:
            if approvals.deadline_comes_first(timeout, remaining):
                raise Abort(TerminalReason.DEADLINE) from None
            local.decision = approvals.expiry_decision(pending)
        local.pending = None
        if local.decision is None:  # cancelled while waiting
            self._set_phase(RunStatus.RUNNING)
            raise Abort(TerminalReason.CANCELLED)
        approved, decision = local.decision
        local.decision = None
        self._set_phase(RunStatus.RUNNING)
        self._emit(
            ApprovalResolvedPayload(
                approval_id=pending.approval_id,
                approved=approved,
                actor=decision.actor.subject,
                reason=decision.reason,
            )
        )
        return approvals.denial_reason(approved, decision)

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
                await workflow.wait_condition(
                    lambda: not local.paused or local.cancel is not None,
                    timeout=self._remaining(),
                )
            except TimeoutError:
                raise Abort(TerminalReason.DEADLINE) from None
        if self._state.sandbox_started:
            await self._sandbox("resume")
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
        for ref in await calls.collect_artifacts(
            StoreArtifactInput(
                run_id=self._inp.run_id,
                tenant_id=self._inp.tenant_id,
                collect_workspace=state.sandbox_started,
                conversation_head=state.conversation_head,
            )
        ):
            state.artifacts.append(ref)
            self._emit(ArtifactStoredPayload(name=ref.name, digest=ref.digest, size=ref.size))
        if state.sandbox_started:
            await self._sandbox("destroy", keep_workspace=self._inp.spec.sandbox.keep_workspace)
        status = transitions.terminal_status(reason)
        local.finished_at = workflow.now()
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

    async def _sandbox(
        self, action: Literal["pause", "resume", "destroy"], keep_workspace: bool | None = None
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
        return self._local.steps_this_run >= self._inp.continue_as_new_every or (
            workflow.info().is_continue_as_new_suggested()
        )

    async def _continue_as_new(self) -> None:
        local, state = self._local, self._state
        if local.webhooks:
            await asyncio.gather(*local.webhooks, return_exceptions=True)
            local.webhooks = []
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._emit(ContinuedAsNewPayload(step=state.step))
        if state.events:
            segment = await calls.store_events(
                StoreEventsInput(
                    run_id=self._inp.run_id, tenant_id=self._inp.tenant_id, events=state.events
                )
            )
            state.segments.append(segment)
            state.events = []
        if state.started_at is None or state.conversation_head is None:
            raise internal_error("continue-as-new before the run was initialised")
        next_state = state.model_copy(update={"continued": state.continued + 1})
        workflow.continue_as_new(self._inp.model_copy(update={"carried": next_state}))

    # ------------------------------------------------------------ helpers

    def _status(self) -> RunStatus:
        return transitions.visible_status(self._state.status, self._local.paused)

    def _set_phase(self, phase: RunStatus) -> None:
        self._state.status = phase
        self._sync_status()

    def _sync_status(self) -> None:
        """Keep the `AgentRunStatus` search attribute equal to the visible status."""
        status = self._status()
        if status != self._local.sa_status:
            self._local.sa_status = status
            workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])

    def _emit(self, payload: EventPayload, attempt: int | None = None) -> None:
        self._state.last_seq += 1
        self._state.events.append(new_event(self._state.last_seq, workflow.now(), payload, attempt))

    def _require_head(self) -> str:
        if self._state.conversation_head is None:
            raise internal_error("conversation not initialised")
        return self._state.conversation_head
