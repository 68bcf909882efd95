"""The agent loop's mechanics, which `AgentRunWorkflow` (`workflows.agent_run`) extends.

The workflow class shows what clients see (input, run, updates, queries); the *how*
lives here and in `workflows.lifecycle`, which this extends. Here, the steps:
`_start`/`_loop`/`_run_turn` (model call → tool calls → observe → repeat; a full
history continues-as-new between two steps, or between two tool calls of a long
turn) and `_await_approval`. The state they work on is described in
`workflows.state`.

This module must not: define workflow handlers (the interface stays in one place),
do I/O except through `workflows.calls`, or decide a transition's validity
(`workflows.transitions`).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    # Safe to pass through: pure pydantic models and constants (no I/O, no mutable
    # module state); passed through so the sandbox does not re-import them per run.
    from agentrun.contracts import (
        ApprovalRequestedPayload,
        ApprovalResolvedPayload,
        DispatchToolInput,
        EgressRequestPayload,
        InitRunInput,
        ModelCalledPayload,
        ModelCallInFlight,
        ModelCallInput,
        ModelCallOutput,
        ModelStartedPayload,
        RunResult,
        RunStartedPayload,
        RunStatus,
        TerminalReason,
        ToolCall,
        ToolCalledPayload,
        ToolName,
        ToolResult,
        ToolResultPayload,
        Usage,
    )
    from agentrun.search_attributes import (
        SA_AGENT,
        SA_CREATED_BY,
        SA_LABELS,
        SA_MODEL,
        SA_TENANT,
        label_values,
        model_label,
    )

from workflows import approvals, calls, transitions
from workflows.errors import Abort
from workflows.lifecycle import PREVIEW_CHARS, RunLifecycle
from workflows.policies import PATCH_FINISH_MODE, PATCH_LOCAL_TOOLS, PATCH_MODEL_STARTED
from workflows.prompts import finish_mode, nudge, system_prompt

SANDBOX_TOOLS = frozenset(
    {ToolName.SHELL, ToolName.READ_FILE, ToolName.WRITE_FILE, ToolName.LIST_FILES}
)
LOCAL_FIRST_TOOLS = SANDBOX_TOOLS | {ToolName.FINISH}
"""Tools whose calls may run as a local activity first (`AgentLoop._dispatch`)."""


class AgentLoop(RunLifecycle):
    """The loop's steps; `AgentRunWorkflow` sets `_inp`, `_state` and `_local`."""

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
        self._metrics.run_started()
        self._emit(
            RunStartedPayload(
                goal=spec.goal[:PREVIEW_CHARS],
                created_by=self._inp.created_by.subject,
                on_behalf_of=self._inp.created_by.on_behalf_of,
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
        if state.turn_calls:
            # The previous Temporal run continued in the middle of a turn: finish it first.
            finished = await self._run_turn()
            if finished is not None:
                return finished
        while True:
            self._metrics.step_ended()  # the previous step's model call and tools are done
            self._steps.ended()
            await self._boundary()
            limit = transitions.limit_reached(state.step, state.usage, spec.limits)
            if limit is not None:
                return await self._finish(limit)
            if self._should_continue_as_new():
                await self._continue_as_new()
            state.step += 1
            self._local.steps_this_run += 1
            self._metrics.step_started()
            self._steps.started(state.step, self._inp.run_id, self._inp.tenant_id)
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
            self._record_steps()
            self._emit(
                ModelCalledPayload(
                    step=state.step,
                    input_tokens=reply.usage.input_tokens,
                    output_tokens=reply.usage.output_tokens,
                    usage_estimated=reply.usage.estimated,
                    tool_calls=[c.name for c in reply.tool_calls],
                    text=reply.text_preview[:PREVIEW_CHARS],
                    refused_tool_calls=reply.refused_tool_calls,
                ),
                attempt=reply.attempt,
            )
            if not reply.tool_calls:
                nudge = self._no_tool_call(reply)
                if nudge is None:
                    self._local.final_answer = reply.text_preview
                    return await self._finish(TerminalReason.COMPLETED)
                # Not an answer: the next model call asks for a tool call.
                state.user_messages.append(nudge)
                continue
            state.turn_calls = list(reply.tool_calls)
            finished = await self._run_turn()
            if finished is not None:
                return finished

    def _no_tool_call(self, reply: ModelCallOutput) -> str | None:
        """None when a reply without tool calls is the final answer; otherwise what
        the model is told (`prompts.nudge`): only a non-empty reply in `text` mode
        answers. Runs before the patch took any such reply as the answer."""
        if not workflow.patched(PATCH_FINISH_MODE):
            return None
        return nudge(finish_mode(self._inp.spec), reply.text_preview)

    async def _run_turn(self) -> RunResult | None:
        """Run the turn's tool calls (`state.turn_calls`) in order; the result if one ends it.

        Between two calls, a full history continues the run as new, carrying the calls
        still to run: a turn has at most the per-turn cap of calls, but that cap is
        operator configuration, and approvals add events too. At least one call runs
        in each Temporal run, so a turn always moves on.
        """
        state, local = self._state, self._local
        ran = 0
        while state.turn_calls:
            if ran and self._history_full_within_turn():
                await self._continue_as_new()
            call, state.turn_calls = state.turn_calls[0], state.turn_calls[1:]
            result = await self._run_tool(call)
            ran += 1
            if result.message_digest is not None:
                state.append.append(result.message_digest)
            if result.final_answer is not None:
                local.final_answer = result.final_answer
                state.turn_calls = []
                return await self._finish(TerminalReason.COMPLETED)
            if local.cancel is not None:
                state.turn_calls = []
        return None

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
                    max_tool_calls=spec.limits.max_tool_calls_per_turn,
                    secrets=spec.secrets,
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
            if not self._state.sandbox_started:
                # The run holds a sandbox from here until `_finish` removes it.
                self._state.sandbox_started = True
                self._state.sandbox_since = workflow.now()
            else:
                self._sandbox_up()  # the call starts it again after an idle stop
        started = workflow.now()
        try:
            result = await self._dispatch(
                DispatchToolInput(
                    run_id=self._inp.run_id,
                    tenant_id=self._inp.tenant_id,
                    call=call,
                    sandbox=spec.sandbox,
                    secrets=spec.secrets,
                    timeout_seconds=spec.limits.tool_timeout_seconds,
                    max_output_bytes=spec.limits.max_tool_output_bytes,
                    denied_reason=denied,
                    step=self._state.step,
                    egress=spec.egress,
                    exec_env=spec.exec_env,
                )
            )
        except (Abort, ActivityError, asyncio.CancelledError):
            # No result to say how long it ran (abandoned on deadline or cancel, or
            # failed): counted until now, in workflow time.
            self._add_tool_seconds((workflow.now() - started).total_seconds())
            raise
        if result.output_artifact is not None:
            self._state.artifacts.append(result.output_artifact)
        # Measured by the activity (in its result, so a replay adds the same number).
        self._add_tool_seconds(result.tool_seconds)
        for audit in result.egress:
            # The broker's audit records, as they stand in history (replay emits the same).
            self._emit(
                EgressRequestPayload(
                    step=audit.step,
                    call_id=audit.call_id,
                    tool=audit.tool,
                    method=audit.method,
                    host=audit.host,
                    port=audit.port,
                    allowed=audit.allowed,
                    secret=audit.secret,
                    status=audit.status,
                    error=audit.error,
                ),
                attempt=result.attempt,
            )
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

    async def _dispatch(self, inp: DispatchToolInput) -> ToolResult:
        """Run the call: first as a local activity when the run's input allows it and
        the call is one that is safe to hand over, then as a normal activity if the
        local attempt ran out of its budget or failed (a failure that a retry cannot
        mend fails the normal activity's first attempt too, and ends the run as
        before; one that it may mend is retried there, heartbeating).

        A local activity runs on this worker inside the workflow task that asked for it,
        so a short call costs no activity task and no second workflow task. Handing
        over is exactly-once because the sandbox's executor records each call id: the
        normal activity re-attaches to a command the local attempt started. Calls the
        sandbox does not execute with that record (`http_request`, which the worker
        sends itself) and calls whose traffic the worker brokers (a run with egress
        rules) are always normal activities.
        """
        budget = self._inp.local_tool_seconds
        call = inp.call
        local_first = (
            budget is not None
            and not inp.egress
            and (inp.denied_reason is not None or call.name in LOCAL_FIRST_TOOLS)
        )
        if local_first and budget is not None and workflow.patched(PATCH_LOCAL_TOOLS):
            try:
                return await self._race(calls.start_tool_local(inp, timedelta(seconds=budget)))
            except calls.LocalToolFailure:
                pass  # out of its budget, or failed: the normal activity takes over
        return await self._race(calls.start_tool(inp))

    def _add_tool_seconds(self, seconds: float) -> None:
        self._state.usage = self._state.usage + Usage(tool_seconds=max(seconds, 0.0))

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
        self._metrics.approval_requested()
        webhook = self._inp.spec.webhook
        if webhook is not None and webhook.on_approval_request:
            self._spawn_webhook(webhook.url, self._state.events[-1])
        timeout, remaining = approvals.approval_timeout(policy), self._remaining()
        try:
            await self._wait_idle(
                lambda: local.decision is not None or local.cancel is not None,
                approvals.wait_bound(timeout, remaining),
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
        self._metrics.approval_decided(
            approvals.decision_label(approved, decision), pending.requested_at
        )
        self._set_phase(RunStatus.RUNNING)
        self._emit(
            ApprovalResolvedPayload(
                approval_id=pending.approval_id,
                approved=approved,
                actor=decision.actor.subject,
                on_behalf_of=decision.actor.on_behalf_of,
                reason=decision.reason,
            )
        )
        return approvals.denial_reason(approved, decision)
