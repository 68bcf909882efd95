"""`AgentRunWorkflow`: the deterministic kernel of one agent run.

The workflow owns the loop (model call → tool calls → observe → repeat), the
run's state machine, its limits and its approvals. Every side effect is an
activity; this module does no I/O and reads no clock but `workflow.now()`.

State machine::

    queued → running ⇄ paused → completed | failed | cancelled
                ⇅
         awaiting_approval

`paused` is a flag layered on top of the phase: a paused run finishes its
in-flight activity, then starts nothing new until resumed. Control actions are
*updates* with validators, so an invalid transition (resume a completed run,
approve what is not pending) is rejected before it touches history, with a
typed error the API turns into HTTP 409.

History stays small and flat per step: the conversation, tool arguments and
tool output live in the artifact store and travel here as sha256 digests only.
Events are kept in memory (served by the `events` query) and flushed to the
artifact store as a segment whenever the run continues-as-new.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    # Safe to pass through: contracts is pure pydantic, and the activity classes are
    # only used as typed references (their I/O never runs inside the workflow).
    from activities.model_activities import ModelActivities
    from activities.run_activities import RunActivities
    from activities.tool_activities import ToolActivities
    from agentrun.contracts import (
        SYSTEM_ACTOR,
        Actor,
        ApprovalDecision,
        ArtifactRef,
        CarriedState,
        ControlRequest,
        ControlResult,
        DispatchToolInput,
        EventsPage,
        EventsQuery,
        EventType,
        InitRunInput,
        ModelCallInFlight,
        ModelCallInput,
        ModelCallOutput,
        PendingApproval,
        RunEvent,
        RunInput,
        RunResult,
        RunSpec,
        RunStatus,
        RunStatusView,
        SandboxControlInput,
        StoreArtifactInput,
        StoreEventsInput,
        TerminalReason,
        ToolCall,
        ToolName,
        ToolResult,
        Usage,
        UserMessage,
        WebhookInput,
    )
    from workflows.prompts import system_prompt

# --- search attributes (registered on the server; see agentrun.config.SEARCH_ATTRIBUTES)
SA_TENANT = SearchAttributeKey.for_keyword("AgentRunTenant")
SA_STATUS = SearchAttributeKey.for_keyword("AgentRunStatus")
SA_AGENT = SearchAttributeKey.for_keyword("AgentRunAgent")
SA_MODEL = SearchAttributeKey.for_keyword("AgentRunModel")
SA_LABELS = SearchAttributeKey.for_keyword_list("AgentRunLabels")
SA_STEPS = SearchAttributeKey.for_int("AgentRunSteps")
SA_CREATED_BY = SearchAttributeKey.for_keyword("AgentRunCreatedBy")

# --- retry policies: one per kind of side effect, each with the reason it looks so.
MODEL_RETRY = RetryPolicy(
    # Providers rate-limit and fail transiently; back off up to a minute. Permanent
    # errors (auth, validation) are raised non-retryable by the provider classifier.
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=8,
)
TOOL_RETRY = RetryPolicy(
    # Only infrastructure failures retry (Docker down, worker crash); exec is
    # exactly-once per call id, so a retry re-attaches instead of re-running.
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
)
STORE_RETRY = RetryPolicy(
    # Local or object-store writes: quick, idempotent (content-addressed).
    initial_interval=timedelta(milliseconds=500),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=10,
)
WEBHOOK_RETRY = RetryPolicy(
    # Receivers go down; deliveries are signed and idempotent by event seq.
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=8,
)
HEARTBEAT = timedelta(seconds=10)
"""Long activities heartbeat every ~2 s; a worker that dies is noticed within this."""

T = TypeVar("T")
PREVIEW_CHARS = 300
SANDBOX_TOOLS = frozenset(
    {ToolName.SHELL, ToolName.READ_FILE, ToolName.WRITE_FILE, ToolName.LIST_FILES}
)
MAX_PENDING_MESSAGES = 20
PATCH_MODEL_STARTED = "model-started-event"
"""Runs started before `model.started` existed replay without it (same event seqs)."""
PATCH_DECISION_STATUS = "decision-answers-new-status"
"""approve/deny answered `awaiting_approval` before; now the status the run moved to."""


class _Abort(Exception):
    """Internal: the in-flight step was abandoned (deadline or cancel-with-abort)."""

    def __init__(self, reason: TerminalReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


@workflow.defn(name="AgentRunWorkflow")
class AgentRunWorkflow:
    @workflow.init
    def __init__(self, inp: RunInput) -> None:
        self._inp = inp
        self._phase = RunStatus.QUEUED
        self._paused = False
        self._paused_by: Actor | None = None
        self._cancel: ControlRequest | None = None
        self._reason: TerminalReason | None = None
        self._final_answer: str | None = None
        self._error: str | None = None
        self._pending: PendingApproval | None = None
        self._decision: tuple[bool, ApprovalDecision] | None = None
        self._finished_at: datetime | None = None
        self._webhooks: list[asyncio.Task[None]] = []
        carried = inp.carried
        if carried is None:
            self._step = 0
            self._usage = Usage()
            self._head: str | None = None
            self._script_digest: str | None = None
            self._append: list[str] = []
            self._user_messages: list[str] = []
            self._artifacts: list[ArtifactRef] = []
            self._started_at: datetime | None = None
            self._deadline: datetime | None = None
            self._last_seq = 0
            self._events: list[RunEvent] = []
            self._segments = []
            self._continued = 0
            self._sandbox_started = False
        else:
            self._phase = carried.status
            self._step = carried.step
            self._usage = carried.usage
            self._head = carried.conversation_head
            self._script_digest = carried.script_digest
            self._append = list(carried.append)
            self._user_messages = list(carried.user_messages)
            self._artifacts = list(carried.artifacts)
            self._started_at = carried.started_at
            self._deadline = carried.deadline
            self._last_seq = carried.last_seq
            self._events = list(carried.events)
            self._segments = list(carried.segments)
            self._continued = carried.continued
            self._sandbox_started = carried.sandbox_started
        self._steps_this_run = 0
        self._sa_status: RunStatus | None = None
        self._done = False
        self._model_call: ModelCallInFlight | None = None

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, inp: RunInput) -> RunResult:
        try:
            if inp.carried is None:
                await self._start()
            return await self._loop()
        except _Abort as abort:
            return await self._finish(abort.reason)
        except ActivityError as err:
            return await self._finish(TerminalReason.ERROR, error=_describe(err))
        except ApplicationError as err:
            return await self._finish(TerminalReason.ERROR, error=f"{err.type}: {err.message}")
        except asyncio.CancelledError:
            # Temporal-level cancellation (Web UI, `temporal workflow cancel`): clean up
            # the sandbox, record the outcome, then let Temporal mark the run cancelled.
            self._cancel = self._cancel or ControlRequest(actor=SYSTEM_ACTOR, reason="cancelled")
            await self._finish(TerminalReason.CANCELLED)
            raise

    async def _start(self) -> None:
        spec = self._inp.spec
        self._started_at = workflow.now()
        if spec.limits.deadline_seconds is not None:
            self._deadline = self._started_at + timedelta(seconds=spec.limits.deadline_seconds)
        workflow.upsert_search_attributes(
            [
                SA_TENANT.value_set(self._inp.tenant_id),
                SA_AGENT.value_set(spec.agent),
                SA_MODEL.value_set(f"{spec.model.provider}:{spec.model.name or ''}"),
                SA_LABELS.value_set([f"{k}={v}" for k, v in spec.labels.items()]),
                SA_CREATED_BY.value_set(self._inp.created_by.subject),
            ]
        )
        self._set_phase(RunStatus.RUNNING)
        self._emit(
            EventType.RUN_STARTED,
            {"goal": spec.goal[:PREVIEW_CHARS], "created_by": self._inp.created_by.subject},
        )
        init = await workflow.execute_activity_method(
            RunActivities.init_run,
            InitRunInput(
                run_id=self._inp.run_id,
                tenant_id=self._inp.tenant_id,
                system_prompt=system_prompt(spec),
                goal=spec.goal,
                script=spec.model.script,
            ),
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=STORE_RETRY,
        )
        self._head = init.conversation_head
        self._script_digest = init.script_digest

    async def _loop(self) -> RunResult:
        spec = self._inp.spec
        while True:
            await self._boundary()
            if self._step >= spec.limits.max_steps:
                return await self._finish(TerminalReason.MAX_STEPS)
            if spec.limits.max_tokens is not None and self._usage.total >= spec.limits.max_tokens:
                return await self._finish(TerminalReason.BUDGET)
            if self._should_continue_as_new():
                await self._continue_as_new()
            self._step += 1
            self._steps_this_run += 1
            # Messages that arrive while the model call is in flight wait for the next one.
            consumed = len(self._user_messages)
            if workflow.patched(PATCH_MODEL_STARTED):
                # Opens the step's delta stream for SSE followers (see api.sse).
                self._emit(EventType.MODEL_STARTED, {"step": self._step})
                self._model_call = ModelCallInFlight(step=self._step, started_seq=self._last_seq)
            try:
                reply = await self._call_model(spec, consumed)
            finally:
                self._model_call = None
            self._head = reply.conversation_head
            self._append = []
            self._user_messages = self._user_messages[consumed:]
            self._usage = self._usage + reply.usage
            workflow.upsert_search_attributes([SA_STEPS.value_set(self._step)])
            self._emit(
                EventType.MODEL_CALLED,
                {
                    "step": self._step,
                    "input_tokens": reply.usage.input_tokens,
                    "output_tokens": reply.usage.output_tokens,
                    "tool_calls": [c.name for c in reply.tool_calls],
                    "text": reply.text_preview[:PREVIEW_CHARS],
                },
                attempt=reply.attempt,
            )
            if not reply.tool_calls:
                # A reply without tool calls is the model's final answer.
                self._final_answer = reply.text_preview
                return await self._finish(TerminalReason.COMPLETED)
            for call in reply.tool_calls:
                result = await self._run_tool(call)
                if result.message_digest is not None:
                    self._append.append(result.message_digest)
                if result.final_answer is not None:
                    self._final_answer = result.final_answer
                    return await self._finish(TerminalReason.COMPLETED)
                if self._cancel is not None:
                    break

    async def _call_model(self, spec: RunSpec, consumed: int) -> ModelCallOutput:
        return await self._race(
            workflow.start_activity_method(
                ModelActivities.call_model,
                ModelCallInput(
                    run_id=self._inp.run_id,
                    tenant_id=self._inp.tenant_id,
                    step=self._step,
                    model=spec.model.model_copy(update={"script": None}),
                    script_digest=self._script_digest,
                    conversation_head=self._require_head(),
                    append=self._append,
                    user_messages=list(self._user_messages[:consumed]),
                    tools=[t.value for t in spec.tools],
                ),
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=MODEL_RETRY,
            )
        )

    async def _run_tool(self, call: ToolCall) -> ToolResult:
        spec = self._inp.spec
        denied: str | None = None
        if spec.approval.requires_approval(call.name):
            denied = await self._await_approval(call)
        self._emit(
            EventType.TOOL_CALLED,
            {"call_id": call.id, "tool": call.name, "arguments": call.preview},
        )
        if call.name in SANDBOX_TOOLS and denied is None:
            self._sandbox_started = True
        result = await self._race(
            workflow.start_activity_method(
                ToolActivities.dispatch_tool,
                DispatchToolInput(
                    run_id=self._inp.run_id,
                    tenant_id=self._inp.tenant_id,
                    call=call,
                    sandbox=spec.sandbox,
                    secrets=spec.secrets,
                    timeout_seconds=spec.limits.tool_timeout_seconds,
                    max_output_bytes=spec.limits.max_tool_output_bytes,
                    denied_reason=denied,
                ),
                start_to_close_timeout=timedelta(seconds=spec.limits.tool_timeout_seconds + 120),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=TOOL_RETRY,
            )
        )
        payload: dict[str, Any] = {
            "call_id": call.id,
            "tool": call.name,
            "ok": result.ok,
            "summary": result.summary,
        }
        if result.error_type:
            payload["error_type"] = result.error_type
        if result.exit_code is not None:
            payload["exit_code"] = result.exit_code
        if result.output_artifact is not None:
            payload["output_artifact"] = result.output_artifact.digest
            self._artifacts.append(result.output_artifact)
        self._emit(EventType.TOOL_RESULT, payload, attempt=result.attempt)
        return result

    # ------------------------------------------------------------ approvals

    async def _await_approval(self, call: ToolCall) -> str | None:
        """Wait for a decision; return None when approved, the denial reason otherwise."""
        policy = self._inp.spec.approval
        now = workflow.now()
        timeout = timedelta(seconds=policy.timeout_seconds) if policy.timeout_seconds else None
        self._pending = PendingApproval(
            approval_id=f"ap-{call.id}",
            call=call,
            requested_at=now,
            expires_at=now + timeout if timeout else None,
            on_timeout=policy.on_timeout,
        )
        self._decision = None
        self._set_phase(RunStatus.AWAITING_APPROVAL)
        self._emit(
            EventType.APPROVAL_REQUESTED,
            {
                "approval_id": self._pending.approval_id,
                "call_id": call.id,
                "tool": call.name,
                "arguments_digest": call.arguments_digest,
                "arguments": call.preview,
                "expires_at": self._pending.expires_at.isoformat()
                if self._pending.expires_at
                else None,
            },
        )
        webhook = self._inp.spec.webhook
        if webhook is not None and webhook.on_approval_request:
            self._spawn_webhook(self._events[-1])
        remaining = self._remaining()
        wait_for = (
            min(t for t in (timeout, remaining) if t is not None)
            if (timeout or remaining)
            else None
        )
        try:
            await workflow.wait_condition(
                lambda: self._decision is not None or self._cancel is not None,
                timeout=wait_for,
            )
        except TimeoutError:
            if remaining is not None and (timeout is None or remaining <= timeout):
                raise _Abort(TerminalReason.DEADLINE) from None
            self._decision = (
                policy.on_timeout == "approve",
                ApprovalDecision(
                    approval_id=self._pending.approval_id,
                    arguments_digest=call.arguments_digest,
                    actor=SYSTEM_ACTOR,
                    reason="approval expired",
                ),
            )
        pending = self._pending
        self._pending = None
        if self._decision is None:  # cancelled while waiting
            self._set_phase(RunStatus.RUNNING)
            raise _Abort(TerminalReason.CANCELLED)
        approved, decision = self._decision
        self._decision = None
        self._set_phase(RunStatus.RUNNING)
        self._emit(
            EventType.APPROVAL_RESOLVED,
            {
                "approval_id": pending.approval_id,
                "approved": approved,
                "actor": decision.actor.subject,
                "reason": decision.reason,
            },
        )
        if approved:
            return None
        return f"denied by {decision.actor.subject}: {decision.reason or 'no reason given'}"

    # ------------------------------------------------------------ boundaries

    async def _boundary(self) -> None:
        """Between steps: honour cancel, deadline and pause (pausing the sandbox)."""
        if self._cancel is not None:
            raise _Abort(TerminalReason.CANCELLED)
        self._check_deadline()
        if not self._paused:
            return
        if self._sandbox_started:
            await self._sandbox("pause")
        while self._paused and self._cancel is None:
            try:
                await workflow.wait_condition(
                    lambda: not self._paused or self._cancel is not None,
                    timeout=self._remaining(),
                )
            except TimeoutError:
                raise _Abort(TerminalReason.DEADLINE) from None
        if self._sandbox_started:
            await self._sandbox("resume")
        if self._cancel is not None:
            raise _Abort(TerminalReason.CANCELLED)

    async def _race(self, handle: workflow.ActivityHandle[T]) -> T:
        """Await an activity, abandoning it on deadline or on cancel-with-abort."""
        try:
            await workflow.wait_condition(
                lambda: (
                    handle.done() or (self._cancel is not None and self._cancel.abort_in_flight)
                ),
                timeout=self._remaining(),
            )
        except TimeoutError:
            handle.cancel()
            raise _Abort(TerminalReason.DEADLINE) from None
        if not handle.done():
            handle.cancel()
            raise _Abort(TerminalReason.CANCELLED)
        return await handle

    def _remaining(self) -> timedelta | None:
        if self._deadline is None:
            return None
        return max(self._deadline - workflow.now(), timedelta(milliseconds=1))

    def _check_deadline(self) -> None:
        if self._deadline is not None and workflow.now() >= self._deadline:
            raise _Abort(TerminalReason.DEADLINE)

    # ------------------------------------------------------------ finishing

    async def _finish(self, reason: TerminalReason, error: str | None = None) -> RunResult:
        self._reason = reason
        self._error = error
        self._pending = None
        await self._collect_artifacts()
        if self._sandbox_started:
            await self._sandbox("destroy", keep_workspace=self._inp.spec.sandbox.keep_workspace)
        status = {
            TerminalReason.COMPLETED: RunStatus.COMPLETED,
            TerminalReason.CANCELLED: RunStatus.CANCELLED,
        }.get(reason, RunStatus.FAILED)
        self._finished_at = workflow.now()
        self._paused = False
        self._set_phase(status)
        payload: dict[str, Any] = {"status": status.value, "reason": reason.value}
        if error:
            payload["error"] = error
        if self._final_answer is not None:
            payload["final_answer"] = self._final_answer[:PREVIEW_CHARS]
        if self._cancel is not None and reason == TerminalReason.CANCELLED:
            payload["cancelled_by"] = self._cancel.actor.subject
        self._emit(EventType.RUN_FINISHED, payload)
        if self._inp.spec.webhook is not None:
            self._spawn_webhook(self._events[-1])
        if self._webhooks:
            await asyncio.gather(*self._webhooks, return_exceptions=True)
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._done = True
        return RunResult(
            run_id=self._inp.run_id,
            tenant_id=self._inp.tenant_id,
            status=status,
            reason=reason,
            final_answer=self._final_answer,
            error=error,
            steps=self._step,
            usage=self._usage,
            artifacts=self._artifacts,
        )

    async def _collect_artifacts(self) -> None:
        try:
            out = await workflow.execute_activity_method(
                ToolActivities.store_artifact,
                StoreArtifactInput(
                    run_id=self._inp.run_id,
                    tenant_id=self._inp.tenant_id,
                    collect_workspace=self._sandbox_started,
                    conversation_head=self._head,
                ),
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=TOOL_RETRY,
            )
        except ActivityError as err:
            workflow.logger.warning("artifact collection failed: %s", _describe(err))
            return
        for ref in out.artifacts:
            self._artifacts.append(ref)
            self._emit(
                EventType.ARTIFACT_STORED,
                {"name": ref.name, "digest": ref.digest, "size": ref.size},
            )

    async def _sandbox(
        self, action: Literal["pause", "resume", "destroy"], keep_workspace: bool | None = None
    ) -> None:
        try:
            await workflow.execute_activity_method(
                ToolActivities.sandbox_control,
                SandboxControlInput(
                    run_id=self._inp.run_id,
                    tenant_id=self._inp.tenant_id,
                    action=action,
                    keep_workspace=keep_workspace,
                ),
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=TOOL_RETRY,
            )
        except ActivityError as err:
            # Pausing or removing a container must not fail the run: the janitor
            # removes whatever is left behind.
            workflow.logger.warning("sandbox %s failed: %s", action, _describe(err))

    def _spawn_webhook(self, event: RunEvent) -> None:
        webhook = self._inp.spec.webhook
        assert webhook is not None

        async def deliver() -> None:
            try:
                out = await workflow.execute_activity_method(
                    RunActivities.deliver_webhook,
                    WebhookInput(
                        run_id=self._inp.run_id,
                        tenant_id=self._inp.tenant_id,
                        url=webhook.url,
                        event=event,
                    ),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=WEBHOOK_RETRY,
                )
                self._emit(
                    EventType.WEBHOOK_DELIVERED,
                    {"for_seq": event.seq, "ok": True, "status_code": out.status_code},
                )
            except ActivityError as err:
                self._emit(
                    EventType.WEBHOOK_DELIVERED,
                    {"for_seq": event.seq, "ok": False, "error": _describe(err)},
                )

        self._webhooks.append(asyncio.ensure_future(deliver()))

    # ------------------------------------------------------- continue-as-new

    def _should_continue_as_new(self) -> bool:
        return self._steps_this_run >= self._inp.continue_as_new_every or (
            workflow.info().is_continue_as_new_suggested()
        )

    async def _continue_as_new(self) -> None:
        if self._webhooks:
            await asyncio.gather(*self._webhooks, return_exceptions=True)
            self._webhooks = []
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._emit(EventType.CONTINUED_AS_NEW, {"step": self._step})
        if self._events:
            segment = await workflow.execute_activity_method(
                RunActivities.store_events,
                StoreEventsInput(
                    run_id=self._inp.run_id,
                    tenant_id=self._inp.tenant_id,
                    events=self._events,
                ),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=STORE_RETRY,
            )
            self._segments.append(segment)
            self._events = []
        assert self._started_at is not None
        carried = CarriedState(
            status=self._phase,
            step=self._step,
            usage=self._usage,
            conversation_head=self._require_head(),
            script_digest=self._script_digest,
            append=self._append,
            user_messages=self._user_messages,
            artifacts=self._artifacts,
            started_at=self._started_at,
            deadline=self._deadline,
            last_seq=self._last_seq,
            events=self._events,
            segments=self._segments,
            continued=self._continued + 1,
            sandbox_started=self._sandbox_started,
        )
        workflow.continue_as_new(self._inp.model_copy(update={"carried": carried}))

    # ------------------------------------------------------------ handlers

    @workflow.update
    async def pause(self, req: ControlRequest) -> ControlResult:
        self._paused = True
        self._paused_by = req.actor
        self._emit(EventType.STATUS_CHANGED, self._status_payload(req, "pause"))
        return ControlResult(status=self._status(), detail="no new step starts until resumed")

    @pause.validator
    def _validate_pause(self, req: ControlRequest) -> None:
        self._reject_if_terminal("pause")
        if self._paused:
            _conflict("the run is already paused", self._status())

    @workflow.update
    async def resume(self, req: ControlRequest) -> ControlResult:
        self._paused = False
        self._paused_by = None
        self._emit(EventType.STATUS_CHANGED, self._status_payload(req, "resume"))
        return ControlResult(status=self._status())

    @resume.validator
    def _validate_resume(self, req: ControlRequest) -> None:
        self._reject_if_terminal("resume")
        if not self._paused:
            _conflict("the run is not paused", self._status())

    @workflow.update
    async def cancel(self, req: ControlRequest) -> ControlResult:
        self._cancel = req
        self._emit(EventType.STATUS_CHANGED, self._status_payload(req, "cancel"))
        detail = (
            "aborting the in-flight step"
            if req.abort_in_flight
            else "after the in-flight step ends"
        )
        return ControlResult(status=self._status(), detail=f"cancelling: {detail}")

    @cancel.validator
    def _validate_cancel(self, req: ControlRequest) -> None:
        self._reject_if_terminal("cancel")
        if self._cancel is not None:
            _conflict("the run is already being cancelled", self._status())

    @workflow.update
    async def approve(self, decision: ApprovalDecision) -> ControlResult:
        return await self._decide(True, decision)

    @approve.validator
    def _validate_approve(self, decision: ApprovalDecision) -> None:
        self._validate_decision(decision)

    @workflow.update
    async def deny(self, decision: ApprovalDecision) -> ControlResult:
        return await self._decide(False, decision)

    async def _decide(self, approved: bool, decision: ApprovalDecision) -> ControlResult:
        """Hand the decision to the loop and answer with the status it moves the run to.

        The loop takes the decision in the same workflow task, but the update now
        completes after the loop's next commands, hence the patch for older runs."""
        self._decision = (approved, decision)
        if workflow.patched(PATCH_DECISION_STATUS):
            await workflow.wait_condition(lambda: self._decision is None or self._done)
        return ControlResult(status=self._status(), detail="approved" if approved else "denied")

    @deny.validator
    def _validate_deny(self, decision: ApprovalDecision) -> None:
        self._validate_decision(decision)

    @workflow.update
    async def send_message(self, msg: UserMessage) -> ControlResult:
        self._user_messages.append(msg.text)
        self._emit(
            EventType.MESSAGE_RECEIVED,
            {"actor": msg.actor.subject, "text": msg.text[:PREVIEW_CHARS]},
        )
        return ControlResult(status=self._status(), detail="delivered with the next model call")

    @send_message.validator
    def _validate_send_message(self, msg: UserMessage) -> None:
        self._reject_if_terminal("send a message to")
        if len(self._user_messages) >= MAX_PENDING_MESSAGES:
            _conflict(
                f"{MAX_PENDING_MESSAGES} messages are already waiting for the next model call",
                self._status(),
            )

    @workflow.query
    def status(self) -> RunStatusView:
        return RunStatusView(
            run_id=self._inp.run_id,
            tenant_id=self._inp.tenant_id,
            status=self._status(),
            reason=self._reason,
            steps=self._step,
            usage=self._usage,
            pending_approval=self._pending if self._decision is None else None,
            final_answer=self._final_answer,
            error=self._error,
            artifacts=self._artifacts,
            last_seq=self._last_seq,
            started_at=self._started_at,
            finished_at=self._finished_at,
            continued=self._continued,
            conversation_head=self._head,
        )

    @workflow.query
    def events(self, q: EventsQuery) -> EventsPage:
        picked = [e for e in self._events if e.seq > q.after_seq][: q.limit]
        return EventsPage(
            events=picked,
            segments=[s for s in self._segments if s.last_seq > q.after_seq],
            last_seq=self._last_seq,
            terminal=self._done,
            model_call=self._model_call,
        )

    # ------------------------------------------------------------ helpers

    def _validate_decision(self, decision: ApprovalDecision) -> None:
        self._reject_if_terminal("decide on an approval of")
        pending = self._pending
        if pending is None or self._decision is not None:
            _conflict("no approval is pending", self._status())
            return
        if decision.approval_id != pending.approval_id:
            _conflict(
                f"approval {decision.approval_id!r} is not pending "
                f"(pending: {pending.approval_id!r})",
                self._status(),
                error_type="ApprovalMismatch",
            )
        if decision.arguments_digest != pending.call.arguments_digest:
            _conflict(
                "arguments_digest does not match the pending call's arguments "
                f"({pending.call.arguments_digest})",
                self._status(),
                error_type="ApprovalMismatch",
            )

    def _reject_if_terminal(self, action: str) -> None:
        status = self._status()
        if status.terminal or self._reason is not None:
            _conflict(f"cannot {action} a run that is {status.value}", status)

    def _status(self) -> RunStatus:
        if self._phase.terminal:
            return self._phase
        if self._paused:
            return RunStatus.PAUSED
        return self._phase

    def _set_phase(self, phase: RunStatus) -> None:
        self._phase = phase
        self._sync_status()

    def _sync_status(self) -> None:
        """Keep the `AgentRunStatus` search attribute equal to the visible status."""
        status = self._status()
        if status != self._sa_status:
            self._sa_status = status
            workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])

    def _status_payload(self, req: ControlRequest, action: str) -> dict[str, Any]:
        self._sync_status()
        return {
            "action": action,
            "status": self._status().value,
            "actor": req.actor.subject,
            "reason": req.reason,
        }

    def _emit(self, kind: EventType, payload: dict[str, Any], attempt: int | None = None) -> None:
        self._last_seq += 1
        self._events.append(
            RunEvent(
                seq=self._last_seq, type=kind, at=workflow.now(), attempt=attempt, payload=payload
            )
        )

    def _require_head(self) -> str:
        if self._head is None:
            raise ApplicationError("conversation not initialised", type="InternalError")
        return self._head


def _conflict(detail: str, status: RunStatus, error_type: str = "InvalidTransition") -> None:
    raise ApplicationError(detail, {"status": status.value}, type=error_type, non_retryable=True)


def _describe(err: BaseException) -> str:
    """The innermost cause's type and message (activity errors wrap the real one)."""
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'ApplicationError'}: {cause.message}"
    if isinstance(cause, CancelledError):
        return "cancelled"
    return f"{type(cause).__name__}: {cause}"
