"""The workflow side of every activity: one function per call, with its timeouts and policy.

Design (why it looks like this): like the sandbox client of sdk-python's
`contrib/openai_agents`, the workflow reaches each side effect through a small,
stateless function that takes one typed input and states the call's timeouts and
named retry policy (`workflows.policies`). The loop then reads as *what* happens,
and a reviewer checks *how* each activity is called in one screen.

Every call that can take more than a few seconds has a heartbeat timeout (the
activity heartbeats, `activities.heartbeat`), so a worker that dies holding it is
noticed within `HEARTBEAT`; the only one without (`deliver_webhook`) finishes
within `SHORT_TIMEOUT`. Timeouts are not compared on replay: changing them is safe.

Changing the order, number or kind of these calls changes the commands a workflow
emits, which breaks the replay of runs in flight: guard such a change with a
`workflow.patched` marker (`workflows.policies`).

This module must not: hold state, emit run events (it returns what the caller
emits), or let a failed cleanup (sandbox control, artifact collection) fail the run.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as TimeoutFailure

with workflow.unsafe.imports_passed_through():
    # Safe to pass through: the activity classes are only used as typed references
    # (their I/O never runs inside the workflow), and contracts is pure pydantic.
    from activities.model_activities import ModelActivities
    from activities.run_activities import RunActivities
    from activities.slot_activities import SlotActivities
    from activities.tool_activities import ToolActivities
    from agentrun.contracts import (
        ArtifactRef,
        DispatchToolInput,
        EventSegment,
        InitRunInput,
        InitRunOutput,
        ModelCallInput,
        ModelCallOutput,
        ProbeRunsInput,
        ProbeRunsOutput,
        SandboxControlInput,
        StoreArtifactInput,
        StoreEventsInput,
        ToolResult,
        WebhookDeliveredPayload,
        WebhookInput,
    )

from workflows.errors import describe
from workflows.policies import (
    COLLECT_ARTIFACTS_TIMEOUT,
    HEARTBEAT,
    INIT_RUN_TIMEOUT,
    LOCAL_TOOL_RETRY,
    MODEL_CALL_TIMEOUT,
    MODEL_RETRY,
    PROBE_RETRY,
    PROBE_TIMEOUT,
    SANDBOX_CONTROL_TIMEOUT,
    STORE_EVENTS_TIMEOUT,
    STORE_RETRY,
    TOOL_GRACE,
    TOOL_RETRY,
    WEBHOOK_RETRY,
    WEBHOOK_TIMEOUT,
)


async def init_run(inp: InitRunInput) -> InitRunOutput:
    """Store the system prompt and goal as the conversation's first nodes."""
    return await workflow.execute_activity_method(
        RunActivities.init_run,
        inp,
        start_to_close_timeout=INIT_RUN_TIMEOUT,
        heartbeat_timeout=HEARTBEAT,
        retry_policy=STORE_RETRY,
    )


def start_model_call(inp: ModelCallInput) -> workflow.ActivityHandle[ModelCallOutput]:
    """Started, not awaited: the loop races it against the deadline and cancel."""
    return workflow.start_activity_method(
        ModelActivities.call_model,
        inp,
        start_to_close_timeout=MODEL_CALL_TIMEOUT,
        heartbeat_timeout=HEARTBEAT,
        retry_policy=MODEL_RETRY,
    )


def start_tool_local(
    inp: DispatchToolInput, budget: timedelta
) -> workflow.ActivityHandle[ToolResult]:
    """The same call as a local activity: run by this worker inside the workflow task
    that asked for it, for at most `budget`, one attempt (`LocalToolFailure`: then)."""
    return workflow.start_local_activity_method(
        ToolActivities.dispatch_tool,
        inp,
        start_to_close_timeout=budget,
        retry_policy=LOCAL_TOOL_RETRY,
    )


LocalToolFailure = (ActivityError, ApplicationError, TimeoutFailure)
"""What awaiting `start_tool_local` raises when the call failed or ran out of its
budget: an `ActivityError` around the cause when it happens, but on replay the SDK's
core rebuilds it from the local activity's marker and raises the bare cause (a
`TimeoutFailure` for a call out of its budget). The caller hands every such failure
over to a normal activity (`start_tool`), whose failure is an `ActivityError` both
times, so a run decides alike when it happens and when it replays."""


def start_tool(inp: DispatchToolInput) -> workflow.ActivityHandle[ToolResult]:
    """Started, not awaited (raced like the model call); the run's tool timeout plus grace."""
    return workflow.start_activity_method(
        ToolActivities.dispatch_tool,
        inp,
        start_to_close_timeout=timedelta(seconds=inp.timeout_seconds + TOOL_GRACE.total_seconds()),
        heartbeat_timeout=HEARTBEAT,
        retry_policy=TOOL_RETRY,
    )


async def collect_artifacts(inp: StoreArtifactInput) -> list[ArtifactRef]:
    """The workspace's files and the transcript, stored; none if collecting failed."""
    try:
        out = await workflow.execute_activity_method(
            ToolActivities.store_artifact,
            inp,
            start_to_close_timeout=COLLECT_ARTIFACTS_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
            retry_policy=TOOL_RETRY,
        )
    except ActivityError as err:
        workflow.logger.warning("artifact collection failed: %s", describe(err))
        return []
    return out.artifacts


async def sandbox_control(inp: SandboxControlInput) -> None:
    try:
        await workflow.execute_activity_method(
            ToolActivities.sandbox_control,
            inp,
            start_to_close_timeout=SANDBOX_CONTROL_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
            retry_policy=TOOL_RETRY,
        )
    except ActivityError as err:
        # Pausing or removing a container must not fail the run: the janitor
        # removes whatever is left behind.
        workflow.logger.warning("sandbox %s failed: %s", inp.action, describe(err))


async def store_events(inp: StoreEventsInput) -> EventSegment:
    """Flush the in-memory events to the artifact store as one segment."""
    return await workflow.execute_activity_method(
        RunActivities.store_events,
        inp,
        start_to_close_timeout=STORE_EVENTS_TIMEOUT,
        heartbeat_timeout=HEARTBEAT,
        retry_policy=STORE_RETRY,
    )


async def deliver_webhook(inp: WebhookInput) -> WebhookDeliveredPayload:
    """Deliver one event; the outcome, delivered or not, is the event to record."""
    seq = inp.event.seq
    try:
        out = await workflow.execute_activity_method(
            RunActivities.deliver_webhook,
            inp,
            start_to_close_timeout=WEBHOOK_TIMEOUT,
            retry_policy=WEBHOOK_RETRY,
        )
    except ActivityError as err:
        return WebhookDeliveredPayload(for_seq=seq, ok=False, error=describe(err))
    return WebhookDeliveredPayload(for_seq=seq, ok=True, status_code=out.status_code)


async def probe_runs(inp: ProbeRunsInput) -> ProbeRunsOutput | None:
    """The runs of `inp` that have ended or that Temporal does not know; None if the
    probe failed (the slots workflow tries again at its next sweep)."""
    try:
        return await workflow.execute_activity_method(
            SlotActivities.probe_runs,
            inp,
            start_to_close_timeout=PROBE_TIMEOUT,
            retry_policy=PROBE_RETRY,
        )
    except ActivityError as err:
        workflow.logger.warning("probing slot holders failed: %s", describe(err))
        return None
