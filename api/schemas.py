"""HTTP-only request and response models (the durable ones live in `agentrun.contracts`).

These never cross a Temporal boundary, so they may evolve with the API version;
everything a route returns is one of them (or a contracts model), which keeps
`/openapi.json` exact.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, Json
from typing_extensions import TypeAliasType

from agentrun.contracts import (
    ArtifactRef,
    Digest,
    EventType,
    JsonTyped,
    ModelDelta,
    RunStatus,
    RunStatusView,
)
from agentrun.contracts import (
    RunEvent as ContractsRunEvent,
)

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
EXAMPLE_RUN_ID = "01jbq0m3c8x2v7h9k4n6p8r0sa"
SSE_CURSOR_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,9}\.[0-9]{1,9})?$"
"""An SSE message's `id:` and what `Last-Event-ID` takes back: `<seq>`, or
`<seq>.<step>.<n>` while a model call streams (`api.sse.Cursor`)."""

RunEvent = TypeAliasType("RunEvent", ContractsRunEvent)
"""`agentrun.contracts.RunEvent` under its own name in `/openapi.json`
(`#/components/schemas/RunEvent`: a `oneOf` of the event models, discriminated on
`type`), so the JSON pages and the SSE route's description point at one schema.
It validates and serializes exactly like the contracts union it names; everywhere
else (the service, the feed, the SSE stream) events are `agentrun.contracts.RunEvent`."""


class RunLinks(BaseModel):
    self: str = Field(examples=[f"/v1/runs/{EXAMPLE_RUN_ID}"])
    events: str = Field(examples=[f"/v1/runs/{EXAMPLE_RUN_ID}/events"])
    stream: str = Field(examples=[f"/v1/runs/{EXAMPLE_RUN_ID}/events/stream"])
    artifacts: str = Field(examples=[f"/v1/runs/{EXAMPLE_RUN_ID}/artifacts"])

    @classmethod
    def for_run(cls, run_id: str) -> RunLinks:
        base = f"/v1/runs/{run_id}"
        return cls(
            self=base,
            events=f"{base}/events",
            stream=f"{base}/events/stream",
            artifacts=f"{base}/artifacts",
        )


class RunCreated(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "run_id": EXAMPLE_RUN_ID,
                    "workflow_id": f"agentrun/default/{EXAMPLE_RUN_ID}",
                    "created": True,
                    "spec_digest": "9f86d081884c7d659a2feaa0c55ad015"
                    "a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "links": RunLinks.for_run(EXAMPLE_RUN_ID).model_dump(),
                }
            ]
        }
    )
    run_id: str
    workflow_id: str
    created: bool = Field(
        description="False when an `Idempotency-Key` retry returned the run it already started"
    )
    spec_digest: Digest
    links: RunLinks
    queued: bool = Field(
        default=False,
        description="The tenant runs its maximum of concurrent runs and queues launches: "
        "the run waits (status `queued`) and starts when a slot frees (answered 202)",
    )


class RunView(RunStatusView):
    """One run: the live `status` query (all its fields), or what Temporal recorded
    once it ended, plus what visibility and the memo know about it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "run_id": EXAMPLE_RUN_ID,
                    "workflow_id": f"agentrun/default/{EXAMPLE_RUN_ID}",
                    "tenant_id": "default",
                    "status": "completed",
                    "reason": "completed",
                    "steps": 3,
                    "usage": {"input_tokens": 812, "output_tokens": 96},
                    "final_answer": "hello.txt written",
                    "last_seq": 11,
                    "started_at": "2025-01-01T12:00:00Z",
                    "finished_at": "2025-01-01T12:00:09Z",
                    "goal": "Write hello.txt containing 'hello' and finish.",
                    "agent": "default",
                    "model": "openai:smollm2-135m-instruct",
                    "labels": {"team": "docs"},
                    "created_by": "alice@example.com",
                    "source": "query",
                    "links": RunLinks.for_run(EXAMPLE_RUN_ID).model_dump(),
                }
            ]
        }
    )
    workflow_id: str
    created_at: datetime | None = None
    goal: str | None = Field(default=None, description="The first 200 characters of the goal")
    agent: str | None = None
    model: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    created_by: str | None = None
    trace_id: str | None = Field(
        default=None,
        description="The run's OpenTelemetry trace id (32 hex digits) when the API traced "
        "its launch; also the `AgentRunTraceId` search attribute and the memo's `trace_id`",
    )
    source: Literal["query", "result", "visibility"] = Field(
        description="`query`: live from a worker; `result`: the recorded result of an ended "
        "run; `visibility`: search attributes only (no worker answered)"
    )
    links: RunLinks


class RunSummary(BaseModel):
    run_id: str
    workflow_id: str
    status: RunStatus
    agent: str | None = None
    model: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    created_by: str | None = None
    steps: int = 0
    goal: str | None = None
    created_at: datetime
    closed_at: datetime | None = None
    links: RunLinks


class RunList(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` to get the next page; absent on the last"
    )


class EventsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {
                            "seq": 1,
                            "type": "run.started",
                            "at": "2025-01-01T12:00:00Z",
                            "payload": {"goal": "…", "created_by": "alice"},
                        }
                    ],
                    "last_seq": 9,
                    "next_after": 1,
                    "terminal": False,
                }
            ]
        }
    )
    events: list[RunEvent] = Field(
        description="Each event is one `RunEvent` model, selected by its `type`"
    )
    last_seq: int = Field(description="The newest event's seq so far")
    next_after: int = Field(description="Pass as `after` to get the next page")
    terminal: bool = Field(description="True when the run ended and no event follows these")


class ControlBody(JsonTyped):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "checking the output"}]}
    )
    reason: str | None = Field(default=None, max_length=2000)
    abort_in_flight: bool = Field(
        default=False, description="Cancel only: abort the in-flight step instead of waiting"
    )


class ApprovalBody(JsonTyped):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "decision": "approve",
                    "arguments_digest": "2c26b46b68ffc68ff99b453c1d304134"
                    "13422d706483bfa0f98a5e886266e7ae",
                    "reason": "looks safe",
                }
            ]
        },
    )
    decision: Literal["approve", "deny"]
    arguments_digest: Digest = Field(
        description="The pending call's `arguments_digest`: approves these exact arguments only"
    )
    reason: str | None = Field(default=None, max_length=2000)


class MessageBody(JsonTyped):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "Also add a README."}]},
    )
    text: str = Field(min_length=1, max_length=8000)


class ControlResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"run_id": EXAMPLE_RUN_ID, "status": "paused", "detail": ""}]
        }
    )
    run_id: str
    status: RunStatus
    detail: str = ""


class ArtifactList(BaseModel):
    artifacts: list[ArtifactRef]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    temporal: str = Field(examples=["127.0.0.1:7233"])
    namespace: str = Field(examples=["default"])


# ------------------------------------------------------------ server-sent events
# The messages of `text/event-stream` answers. The stream is written by `api.sse`;
# these models say what it writes, for `/openapi.json` (each message is one object
# with `id`, `event` and `data`, `data` a JSON document of the referenced schema)
# and for clients and tests that read a stream back.


class SseRunEvent(BaseModel):
    """A durable event: `event:` is its `type`, `data:` the event itself."""

    model_config = ConfigDict(title="SseRunEvent")
    id: str = Field(
        pattern=SSE_CURSOR_PATTERN,
        description="The resume cursor after this message (send it back as `Last-Event-ID`)",
    )
    event: EventType
    data: Json[RunEvent]


class SseModelDelta(BaseModel):
    """A fragment of a model reply while the call streams (only with `deltas=true`)."""

    model_config = ConfigDict(title="SseModelDelta")
    id: str = Field(pattern=SSE_CURSOR_PATTERN, description="`<seq>.<step>.<n>`")
    event: Literal["model.delta"]
    data: Json[ModelDelta]


EndReason = Literal["terminal", "not_found", "execution_closed"]


class StreamEnd(BaseModel):
    """Why the stream ended; no message follows."""

    last_seq: int = Field(ge=0, description="The seq of the last event sent")
    reason: EndReason = Field(
        description="`terminal`: the run ended and every event was sent; `not_found`: the "
        "run is gone; `execution_closed`: Temporal ended the execution (terminated, timed out)"
    )


class SseEnd(BaseModel):
    """The last message. It has no `id:` line, so `Last-Event-ID` keeps the last cursor."""

    model_config = ConfigDict(title="SseEnd")
    event: Literal["end"]
    data: Json[StreamEnd]


SseMessage = TypeAliasType("SseMessage", SseRunEvent | SseModelDelta | SseEnd)
"""One message of an event stream, as `#/components/schemas/SseMessage`."""
