"""Run events: one payload model per event type, one event model per type.

A run's events are its durable, ordered story (`seq` is gapless over the whole
run, across continue-as-new). The workflow builds them with :func:`new_event`; the
API serves them, the SSE stream sends them, the CLI prints them, and all of them
read a payload by attribute, never by string key.

Wire format: ``{"seq", "type", "at", "attempt", "payload": {...}}``, unchanged
since events were dicts. ``RunEvent`` is a union discriminated on ``type``, so
events stored or recorded before payloads were typed still parse: every field a
past version did not always send has a default, and unknown fields are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from agentrun.contracts._ids import Digest, ErrorKind, RunStatus, TerminalReason


class EventType(StrEnum):
    RUN_STARTED = "run.started"
    STATUS_CHANGED = "run.status_changed"
    MODEL_STARTED = "model.started"
    MODEL_CALLED = "model.called"
    TOOL_CALLED = "tool.called"
    TOOL_RESULT = "tool.result"
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_RESOLVED = "approval.resolved"
    MESSAGE_RECEIVED = "message.received"
    ARTIFACT_STORED = "artifact.stored"
    WEBHOOK_DELIVERED = "webhook.delivered"
    CONTINUED_AS_NEW = "run.continued_as_new"
    RUN_FINISHED = "run.finished"
    CONTROL_REJECTED = "control.rejected"
    EGRESS_REQUEST = "egress.request"


class ControlAction(StrEnum):
    """What a `run.status_changed` event records."""

    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


# ---------------------------------------------------------------------------
# Payloads (what each event says)
# ---------------------------------------------------------------------------


class EventPayload(BaseModel):
    """Base of every payload; ``event_type`` names the event that carries it."""

    model_config = ConfigDict(extra="ignore")
    event_type: ClassVar[EventType]


class RunStartedPayload(EventPayload):
    event_type = EventType.RUN_STARTED
    goal: str = ""
    """The goal's first 300 characters."""
    created_by: str = ""
    on_behalf_of: str | None = None
    """The end user a service key launched it for; `created_by` is the key's owner."""


class StatusChangedPayload(EventPayload):
    event_type = EventType.STATUS_CHANGED
    action: ControlAction
    status: RunStatus
    """The run's status right after the action."""
    actor: str
    on_behalf_of: str | None = None
    """The end user a service key acted for (`Actor.on_behalf_of`); `actor` is the key's owner."""
    reason: str | None = None


class ModelStartedPayload(EventPayload):
    """Opens step `step`'s live delta stream (see `ModelDelta`)."""

    event_type = EventType.MODEL_STARTED
    step: int


class ModelCalledPayload(EventPayload):
    event_type = EventType.MODEL_CALLED
    step: int
    input_tokens: int = 0
    output_tokens: int = 0
    usage_estimated: bool = False
    """The token counts are agentrun's estimate: the server reported no usage."""
    tool_calls: list[str] = Field(default_factory=list)
    """The names of the tools the reply called, in order (those that will run)."""
    refused_tool_calls: int = 0
    """Calls beyond the per-turn cap (`Limits.max_tool_calls_per_turn`): not run; the
    model was told so in a tool message for each."""
    text: str = ""
    """The reply's text, at most 300 characters."""


class ToolCalledPayload(EventPayload):
    event_type = EventType.TOOL_CALLED
    call_id: str
    tool: str
    arguments: str = ""
    """A preview of the raw arguments, at most 300 characters."""


class ToolResultPayload(EventPayload):
    event_type = EventType.TOOL_RESULT
    call_id: str
    tool: str
    ok: bool
    summary: str = ""
    error_type: ErrorKind | None = None
    exit_code: int | None = None
    output_artifact: Digest | None = None
    """The full output's digest, when it was larger than the model's view."""


class ApprovalRequestedPayload(EventPayload):
    event_type = EventType.APPROVAL_REQUESTED
    approval_id: str
    call_id: str
    tool: str
    arguments_digest: Digest
    """An approval must name this digest (see `ApprovalDecision`)."""
    arguments: str = ""
    expires_at: datetime | None = None


class ApprovalResolvedPayload(EventPayload):
    event_type = EventType.APPROVAL_RESOLVED
    approval_id: str
    approved: bool
    actor: str
    on_behalf_of: str | None = None
    """The end user a service key acted for (`Actor.on_behalf_of`); `actor` is the key's owner."""
    reason: str | None = None


class MessageReceivedPayload(EventPayload):
    event_type = EventType.MESSAGE_RECEIVED
    actor: str
    on_behalf_of: str | None = None
    """The end user a service key acted for (`Actor.on_behalf_of`); `actor` is the key's owner."""
    text: str
    """The message's first 300 characters."""


class ArtifactStoredPayload(EventPayload):
    event_type = EventType.ARTIFACT_STORED
    name: str
    digest: Digest
    size: int


class WebhookDeliveredPayload(EventPayload):
    event_type = EventType.WEBHOOK_DELIVERED
    for_seq: int
    """The seq of the event that was delivered."""
    ok: bool
    status_code: int | None = None
    """The receiver's 2xx answer; never set for a failed delivery (no port-scan oracle)."""
    error: str | None = None
    """A failed delivery's `<type>: <fixed sentence>`, the type a coarse reason
    (`WebhookDestinationRefused`, `WebhookRedirected`, `WebhookRejected`,
    `WebhookUnavailable`, `WebhookConfigError`, or a timeout; docs/api.md, "Webhooks")."""


class ContinuedAsNewPayload(EventPayload):
    event_type = EventType.CONTINUED_AS_NEW
    step: int
    pending_tool_calls: int = 0
    """Tool calls of step `step` still to run: the run continued in the middle of a
    turn (its history was full), and the next Temporal run runs them first."""


class RunFinishedPayload(EventPayload):
    event_type = EventType.RUN_FINISHED
    status: RunStatus
    reason: TerminalReason
    error: str | None = None
    final_answer: str | None = None
    """At most 300 characters; the run view holds the whole answer."""
    cancelled_by: str | None = None


class ControlRejectedPayload(EventPayload):
    """A control *signal* that changed nothing (a signal cannot be refused to its
    sender as an update can, so the refusal is recorded here instead)."""

    event_type = EventType.CONTROL_REJECTED
    action: str
    """The signal's name: `approve`, `deny`, `pause`, `resume`, `cancel` or `message`."""
    actor: str
    reason: str
    """Why nothing changed, e.g. `InvalidTransition: the run is not paused`."""


class EgressRequestPayload(EventPayload):
    """One request a tool made through the egress broker (the audit record)."""

    event_type = EventType.EGRESS_REQUEST
    step: int | None = None
    call_id: str
    tool: str
    method: str
    host: str
    port: int | None = None
    allowed: bool
    secret: str | None = None
    """The name of the secret injected, never its value."""
    status: int | None = None
    error: str | None = None


# ---------------------------------------------------------------------------
# Events (a payload with its place in the run)
# ---------------------------------------------------------------------------


class _Event(BaseModel):
    seq: int = Field(ge=1, description="Monotonic over the whole run, across continue-as-new")
    type: EventType
    """Each event model narrows it to its own type (the union's discriminator)."""
    at: datetime
    attempt: int | None = None
    """The activity attempt the event came from, when it came from one."""


class RunStartedEvent(_Event):
    type: Literal[EventType.RUN_STARTED] = EventType.RUN_STARTED
    payload: RunStartedPayload


class StatusChangedEvent(_Event):
    type: Literal[EventType.STATUS_CHANGED] = EventType.STATUS_CHANGED
    payload: StatusChangedPayload


class ModelStartedEvent(_Event):
    type: Literal[EventType.MODEL_STARTED] = EventType.MODEL_STARTED
    payload: ModelStartedPayload


class ModelCalledEvent(_Event):
    type: Literal[EventType.MODEL_CALLED] = EventType.MODEL_CALLED
    payload: ModelCalledPayload


class ToolCalledEvent(_Event):
    type: Literal[EventType.TOOL_CALLED] = EventType.TOOL_CALLED
    payload: ToolCalledPayload


class ToolResultEvent(_Event):
    type: Literal[EventType.TOOL_RESULT] = EventType.TOOL_RESULT
    payload: ToolResultPayload


class ApprovalRequestedEvent(_Event):
    type: Literal[EventType.APPROVAL_REQUESTED] = EventType.APPROVAL_REQUESTED
    payload: ApprovalRequestedPayload


class ApprovalResolvedEvent(_Event):
    type: Literal[EventType.APPROVAL_RESOLVED] = EventType.APPROVAL_RESOLVED
    payload: ApprovalResolvedPayload


class MessageReceivedEvent(_Event):
    type: Literal[EventType.MESSAGE_RECEIVED] = EventType.MESSAGE_RECEIVED
    payload: MessageReceivedPayload


class ArtifactStoredEvent(_Event):
    type: Literal[EventType.ARTIFACT_STORED] = EventType.ARTIFACT_STORED
    payload: ArtifactStoredPayload


class WebhookDeliveredEvent(_Event):
    type: Literal[EventType.WEBHOOK_DELIVERED] = EventType.WEBHOOK_DELIVERED
    payload: WebhookDeliveredPayload


class ContinuedAsNewEvent(_Event):
    type: Literal[EventType.CONTINUED_AS_NEW] = EventType.CONTINUED_AS_NEW
    payload: ContinuedAsNewPayload


class RunFinishedEvent(_Event):
    type: Literal[EventType.RUN_FINISHED] = EventType.RUN_FINISHED
    payload: RunFinishedPayload


class ControlRejectedEvent(_Event):
    type: Literal[EventType.CONTROL_REJECTED] = EventType.CONTROL_REJECTED
    payload: ControlRejectedPayload


class EgressRequestEvent(_Event):
    type: Literal[EventType.EGRESS_REQUEST] = EventType.EGRESS_REQUEST
    payload: EgressRequestPayload


RunEvent = Annotated[
    RunStartedEvent
    | StatusChangedEvent
    | ModelStartedEvent
    | ModelCalledEvent
    | ToolCalledEvent
    | ToolResultEvent
    | ApprovalRequestedEvent
    | ApprovalResolvedEvent
    | MessageReceivedEvent
    | ArtifactStoredEvent
    | WebhookDeliveredEvent
    | ContinuedAsNewEvent
    | RunFinishedEvent
    | ControlRejectedEvent
    | EgressRequestEvent,
    Field(discriminator="type"),
]
"""Any run event; `type` selects the model (and so the payload's model)."""

_EVENT_MODELS: dict[EventType, type[_Event]] = {
    model.model_fields["type"].default: model
    for model in (
        RunStartedEvent,
        StatusChangedEvent,
        ModelStartedEvent,
        ModelCalledEvent,
        ToolCalledEvent,
        ToolResultEvent,
        ApprovalRequestedEvent,
        ApprovalResolvedEvent,
        MessageReceivedEvent,
        ArtifactStoredEvent,
        WebhookDeliveredEvent,
        ContinuedAsNewEvent,
        RunFinishedEvent,
        ControlRejectedEvent,
        EgressRequestEvent,
    )
}


def new_event(
    seq: int, at: datetime, payload: EventPayload, attempt: int | None = None
) -> RunEvent:
    """The event that carries `payload` (its type follows from the payload's model)."""
    model = _EVENT_MODELS[payload.event_type]
    event = model(seq=seq, at=at, attempt=attempt, payload=payload)  # type: ignore[call-arg]
    return cast(RunEvent, event)


# ---------------------------------------------------------------------------
# Reading events (the `events` query) and live model output
# ---------------------------------------------------------------------------


class EventSegment(BaseModel):
    """Events flushed to the artifact store (on continue-as-new), by reference."""

    first_seq: int
    last_seq: int
    digest: Digest


class EventsQuery(BaseModel):
    after_seq: int = Field(default=0, ge=0)
    limit: int = Field(default=500, ge=1, le=5000)


class ModelCallInFlight(BaseModel):
    step: int
    started_seq: int
    """The seq of the step's `model.started` event."""


class EventsPage(BaseModel):
    """The `events` query: in-memory events after `after_seq`, plus flushed segments."""

    events: list[RunEvent] = Field(default_factory=list)
    segments: list[EventSegment] = Field(default_factory=list)
    """Older events stored by reference that overlap `after_seq` (read them from the store)."""
    last_seq: int = 0
    terminal: bool = False
    model_call: ModelCallInFlight | None = None
    """The model call running now, if any (its deltas are being streamed)."""


DELTA_EVENT = "model.delta"
"""The SSE `event:` name of a `ModelDelta` (a durable event is sent under its own `type`)."""


class ModelDelta(BaseModel):
    """A fragment of a model reply as it is generated: live output, not a durable event.

    Deltas are written by the `call_model` activity to the delta log (outside
    Temporal history) and interleaved into the SSE stream. Only the step's
    `model.called` event is authoritative; a client keeps the deltas whose
    `attempt` equals that event's `attempt` and drops the rest (partial output of
    attempts that failed and were retried).
    """

    step: int
    n: int = Field(ge=1, description="Position in the step's delta log, from 1")
    attempt: int
    kind: Literal["text", "tool_call"]
    text: str
    index: int = 0
    """For `tool_call`: which tool call of the reply the fragment belongs to."""
    name: str | None = None
    """For `tool_call`: the tool's name, on the fragment where the model names it."""
    at: datetime


@dataclass(frozen=True)
class Delta:
    """One fragment of a reply, passed to ``ModelRequest.on_delta`` as it is generated.

    ``kind="text"`` is assistant text (in schema-constrained mode that is the raw
    JSON envelope the model writes); ``kind="tool_call"`` is a fragment of the
    arguments of native tool call number ``index``, with ``name`` set on the
    fragment where the provider first names the tool. Concatenating the fragments
    of one kind and index gives what the final ``ModelReply`` holds, but only the
    reply is authoritative: deltas are a live preview, never parsed.
    """

    kind: Literal["text", "tool_call"]
    text: str
    index: int = 0
    name: str | None = None


DeltaSink = Callable[[Delta], None]
"""Must not block: the activity's sink only appends to a buffer."""
