"""The durable contracts shared by the API, the workflow, the activities and the CLI.

Everything here is a pydantic v2 model that crosses a Temporal boundary (workflow
input, activity input/output, signal/update/query payloads) or the HTTP boundary.
They are *durable*: histories recorded today are replayed by tomorrow's code, so a
new field always gets a default and no field is ever renamed or retyped.

This module must stay dependency-free (pydantic and the standard library only): it
is imported inside Temporal's workflow sandbox.

Large data never travels in these models. Conversations, tool arguments, tool
output and files live in the content-addressed artifact store and are referred to
by their sha256 digest (`Digest`), so the bytes a step adds to workflow history do
not grow with the conversation.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

# ---------------------------------------------------------------------------
# Identifiers
# ---------------------------------------------------------------------------

Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex digest")]
"""A content address in the artifact store."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"
TenantId = Annotated[str, Field(pattern=NAME_PATTERN, examples=["acme"])]
SecretName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-/.]{0,127}$")]
"""Secrets are referred to by name only; the broker resolves them at execution time."""


def canonical_json(value: Any) -> bytes:
    """The one serialisation used for digests: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_of(data: bytes) -> str:
    """sha256 hex digest of raw bytes (the artifact store's content address)."""
    return hashlib.sha256(data).hexdigest()


def workflow_id_for(tenant_id: str, run_id: str) -> str:
    """Workflow ids derive from tenant and run so that tenants cannot collide."""
    return f"agentrun/{tenant_id}/{run_id}"


def run_ref_from_workflow_id(workflow_id: str) -> tuple[str, str]:
    """Inverse of :func:`workflow_id_for`: returns ``(tenant_id, run_id)``."""
    prefix, tenant_id, run_id = workflow_id.split("/", 2)
    if prefix != "agentrun":
        raise ValueError(f"not an agentrun workflow id: {workflow_id!r}")
    return tenant_id, run_id


# ---------------------------------------------------------------------------
# The run's state machine
# ---------------------------------------------------------------------------


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class TerminalReason(StrEnum):
    """Why a run ended. `completed` is the only success."""

    COMPLETED = "completed"
    MAX_STEPS = "max_steps"
    DEADLINE = "deadline"
    BUDGET = "budget"
    CANCELLED = "cancelled"
    ERROR = "error"


# ---------------------------------------------------------------------------
# The run specification (what a client launches)
# ---------------------------------------------------------------------------


class ToolName(StrEnum):
    SHELL = "shell"
    READ_FILE = "read_file"
    WRITE_FILE = "write_file"
    LIST_FILES = "list_files"
    FINISH = "finish"


class ScriptedToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, JsonValue] | str = Field(default_factory=dict)
    """A dict, or a raw string to simulate a model emitting malformed JSON."""


class ScriptedTurn(BaseModel):
    """One deterministic model response, for the `scripted` provider (the LLM test double).

    The provider answers turn N with the N-th entry, N being the number of assistant
    messages already in the conversation, so it is stateless and retry-safe.
    """

    model_config = ConfigDict(extra="forbid")
    content: str | None = None
    tool_calls: list[ScriptedToolCall] = Field(default_factory=list)
    input_tokens: int = Field(default=10, ge=0)
    output_tokens: int = Field(default=10, ge=0)
    delay_seconds: float = Field(default=0.0, ge=0, le=600)
    fail_attempts: int = Field(default=0, ge=0, le=10)
    """The first `fail_attempts` activity attempts of this turn fail with `fail_status`."""
    fail_status: int = Field(default=503, ge=400, le=599)
    fail_after_chunks: int = Field(default=0, ge=0, le=10000)
    """When the reply is streamed, a failing attempt first streams this many chunks
    (partial output that a client must drop once the retried attempt streams)."""


class ModelRef(BaseModel):
    """Which model a run uses. Endpoints and keys are operator configuration, never here."""

    model_config = ConfigDict(extra="forbid")
    provider: Literal["default", "openai", "anthropic", "scripted"] = "default"
    """`default` is whatever the deployment configured (the embedded model out of the box)."""
    name: str | None = Field(default=None, max_length=200)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_output_tokens: int = Field(default=1024, ge=1, le=65536)
    script: list[ScriptedTurn] | None = Field(default=None, max_length=10000)
    """Only for provider `scripted`; stored in the artifact store at run start."""


class ApprovalPolicy(BaseModel):
    """Which tool calls wait for a human decision before they run."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["never", "always", "tools"] = "never"
    tools: list[str] = Field(default_factory=list, max_length=64)
    """With mode `tools`: the tool names that need approval."""
    timeout_seconds: float | None = Field(default=3600.0, gt=0, le=30 * 86400)
    """A pending approval expires after this long; `None` waits forever."""
    on_timeout: Literal["deny", "approve"] = "deny"

    def requires_approval(self, tool: str) -> bool:
        if tool == ToolName.FINISH:
            return False
        return self.mode == "always" or (self.mode == "tools" and tool in self.tools)


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_steps: int = Field(default=20, ge=1, le=100_000)
    """One step is one model call plus the tool calls it asked for."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Token budget (input + output over all model calls)."""
    deadline_seconds: float | None = Field(default=None, gt=0, le=90 * 86400)
    """Wall-clock limit measured from the run's start."""
    tool_timeout_seconds: float = Field(default=120.0, gt=0, le=86400)
    max_tool_output_bytes: int = Field(default=16 * 1024, ge=256, le=1024 * 1024)
    """What the model sees of a tool's output; the rest is stored as an artifact."""


class SandboxPolicy(BaseModel):
    """Per-run sandbox settings; each is clamped to what the operator allows."""

    model_config = ConfigDict(extra="forbid")
    image: str | None = Field(default=None, max_length=300)
    """Must be in the deployment's image allow-list; `None` is the default image."""
    network: bool = False
    memory_mb: int | None = Field(default=None, ge=16, le=1024 * 1024)
    cpus: float | None = Field(default=None, gt=0, le=256)
    pids: int | None = Field(default=None, ge=8, le=1_000_000)
    workspace_mb: int | None = Field(default=None, ge=1, le=1024 * 1024)
    keep_workspace: bool | None = None
    """Keep the workspace volume after the run ends; `None` follows the deployment default."""


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2000, examples=["https://hooks.example.com/agentrun"])
    on_approval_request: bool = False

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("webhook url must be an absolute http(s) URL")
        return value


class RunSpec(BaseModel):
    """What a client asks for when it launches a run."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "goal": "Write hello.txt containing 'hello' and finish.",
                    "tools": ["shell", "write_file", "read_file", "finish"],
                    "limits": {"max_steps": 8},
                    "labels": {"team": "docs"},
                }
            ]
        },
    )
    goal: str = Field(min_length=1, max_length=20_000)
    instructions: str | None = Field(default=None, max_length=50_000)
    """Extra system instructions appended to the platform's system prompt."""
    agent: str = Field(default="default", pattern=NAME_PATTERN)
    model: ModelRef = Field(default_factory=ModelRef)
    tools: list[ToolName] = Field(default_factory=lambda: list(ToolName))
    limits: Limits = Field(default_factory=Limits)
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    sandbox: SandboxPolicy = Field(default_factory=SandboxPolicy)
    secrets: list[SecretName] = Field(default_factory=list, max_length=64)
    """Names of secrets the broker may inject into tool executions (never their values)."""
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    """Free-form labels, searchable as `key=value` in the API and the Temporal Web UI."""
    webhook: WebhookSpec | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not re.match(r"^[A-Za-z0-9_.\-]{1,63}$", key):
                raise ValueError(f"label key {key!r} must match [A-Za-z0-9_.-]{{1,63}}")
            if len(val) > 200 or "\n" in val:
                raise ValueError(f"label {key!r}: value must be one line of at most 200 chars")
        return value

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list[ToolName]) -> list[ToolName]:
        if ToolName.FINISH not in value:
            value = [*value, ToolName.FINISH]
        return list(dict.fromkeys(value))

    def spec_digest(self) -> str:
        return digest_of(canonical_json(self.model_dump(mode="json")))


class Actor(BaseModel):
    """Who asked for something. Every control action carries one (audit trail)."""

    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1, max_length=200, examples=["alice@example.com"])
    kind: Literal["user", "service", "engineer", "system"] = "user"
    tenant_id: str | None = None


SYSTEM_ACTOR = Actor(subject="agentrun", kind="system")


class RunInput(BaseModel):
    """The workflow's single input; `carried` is set only on continue-as-new."""

    run_id: str
    tenant_id: str
    spec: RunSpec
    created_by: Actor
    created_at: datetime | None = None
    continue_as_new_every: int = Field(default=200, ge=1)
    """Continue-as-new after this many steps in one Temporal run (or when the SDK suggests)."""
    carried: CarriedState | None = None


# ---------------------------------------------------------------------------
# Conversation, tool calls and results (by reference)
# ---------------------------------------------------------------------------


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


class Message(BaseModel):
    """One conversation message, as stored (once) in the artifact store."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[RawToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None


class RawToolCall(BaseModel):
    """A tool call as the model emitted it: hostile input until validated."""

    id: str
    name: str
    arguments: str
    """The raw JSON text the model produced (may be malformed)."""


class ToolCall(BaseModel):
    """A tool call as the workflow sees it: arguments by reference, small preview."""

    id: str = Field(description="Deterministic: `s<step>-c<index>`")
    name: str
    arguments_digest: Digest
    """sha256 of the raw argument text; the blob with that digest holds it. Approvals
    must name this digest, so an approval cannot be replayed against other arguments."""
    preview: str = ""
    """At most 300 characters of the arguments, for humans deciding on approvals."""


class ToolResult(BaseModel):
    call_id: str
    name: str
    ok: bool
    error_type: str | None = None
    """For failures: `bad_arguments`, `unknown_tool`, `timeout`, `output_limit`, `denied`, …"""
    summary: str = Field(default="", max_length=600)
    exit_code: int | None = None
    duration_ms: int | None = None
    message_digest: Digest | None = None
    """The tool message appended to the conversation (holds the model's view)."""
    output_artifact: ArtifactRef | None = None
    """The full output when it was larger than the model's view."""
    final_answer: str | None = None
    """Set by `finish`."""
    attempt: int = 1
    """The activity attempt that produced this result."""


class ArtifactRef(BaseModel):
    digest: Digest
    name: str
    size: int
    content_type: str = "application/octet-stream"
    created_at: datetime | None = None


class PendingApproval(BaseModel):
    approval_id: str
    call: ToolCall
    requested_at: datetime
    expires_at: datetime | None = None
    on_timeout: Literal["deny", "approve"] = "deny"


class Step(BaseModel):
    index: int
    tool_calls: list[ToolCall] = Field(default_factory=list)
    results: list[ToolResult] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)


# ---------------------------------------------------------------------------
# Activity contracts
# ---------------------------------------------------------------------------


class InitRunInput(BaseModel):
    run_id: str
    tenant_id: str
    system_prompt: str
    goal: str
    script: list[ScriptedTurn] | None = None


class InitRunOutput(BaseModel):
    conversation_head: Digest
    script_digest: Digest | None = None


class ModelCallInput(BaseModel):
    run_id: str
    tenant_id: str
    step: int
    model: ModelRef
    """With `script` stripped: the script travels as `script_digest`."""
    script_digest: Digest | None = None
    conversation_head: Digest
    append: list[Digest] = Field(default_factory=list)
    """Messages (tool results) to append before calling the model."""
    user_messages: list[str] = Field(default_factory=list)
    """Steering messages sent mid-run, appended as user messages."""
    tools: list[str]


class ModelCallOutput(BaseModel):
    conversation_head: Digest
    """The new head, including the appended messages and the assistant's reply."""
    text_preview: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    stop_reason: str | None = None
    attempt: int = 1


class DispatchToolInput(BaseModel):
    run_id: str
    tenant_id: str
    call: ToolCall
    sandbox: SandboxPolicy
    secrets: list[str] = Field(default_factory=list)
    timeout_seconds: float
    max_output_bytes: int
    denied_reason: str | None = None
    """When set, the call is not executed: a denial message is recorded for the model."""


class SandboxControlInput(BaseModel):
    run_id: str
    tenant_id: str
    action: Literal["pause", "resume", "destroy"]
    keep_workspace: bool | None = None


class StoreArtifactInput(BaseModel):
    """Collect files the run changed in its workspace into the artifact store."""

    run_id: str
    tenant_id: str
    paths: list[str] = Field(default_factory=list)
    """Empty: every regular file in the workspace (bounded by the collector's limits)."""
    collect_workspace: bool = True
    conversation_head: Digest | None = None
    """When set, the conversation is also stored, as the artifact `transcript.json`."""


class StoreArtifactOutput(BaseModel):
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)


class StoreEventsInput(BaseModel):
    run_id: str
    tenant_id: str
    events: list[RunEvent]


class EventSegment(BaseModel):
    """Events flushed to the artifact store (on continue-as-new), by reference."""

    first_seq: int
    last_seq: int
    digest: Digest


class WebhookInput(BaseModel):
    run_id: str
    tenant_id: str
    url: str
    event: RunEvent


class WebhookOutput(BaseModel):
    status_code: int
    attempts: int


# ---------------------------------------------------------------------------
# Events, control payloads, queries, results
# ---------------------------------------------------------------------------


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


class RunEvent(BaseModel):
    seq: int = Field(ge=1, description="Monotonic over the whole run, across continue-as-new")
    type: EventType
    at: datetime
    attempt: int | None = None
    """The activity attempt the event came from, when it came from one."""
    payload: dict[str, JsonValue] = Field(default_factory=dict)


class ControlRequest(BaseModel):
    """Payload of pause / resume / cancel."""

    model_config = ConfigDict(extra="forbid")
    actor: Actor
    reason: str | None = Field(default=None, max_length=2000)
    abort_in_flight: bool = False
    """For cancel: abort the in-flight step instead of letting it finish."""


class ApprovalDecision(BaseModel):
    """Payload of approve / deny. Must name the exact pending call and its arguments."""

    model_config = ConfigDict(extra="forbid")
    approval_id: str
    arguments_digest: Digest
    actor: Actor
    reason: str | None = Field(default=None, max_length=2000)


class UserMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=8000)
    actor: Actor


class ControlResult(BaseModel):
    status: RunStatus
    detail: str = ""


class RunStatusView(BaseModel):
    """The `status` query."""

    run_id: str
    tenant_id: str
    status: RunStatus
    reason: TerminalReason | None = None
    steps: int = 0
    usage: Usage = Field(default_factory=Usage)
    pending_approval: PendingApproval | None = None
    final_answer: str | None = None
    error: str | None = None
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    last_seq: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    continued: int = 0
    """How many times the run continued-as-new."""
    conversation_head: Digest | None = None
    """Digest of the conversation's newest node in the artifact store."""


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


class RunResult(BaseModel):
    run_id: str
    tenant_id: str
    status: RunStatus
    reason: TerminalReason
    final_answer: str | None = None
    error: str | None = None
    steps: int = 0
    usage: Usage = Field(default_factory=Usage)
    artifacts: list[ArtifactRef] = Field(default_factory=list)


class CarriedState(BaseModel):
    """Everything the loop needs to continue in a fresh run (continue-as-new)."""

    status: RunStatus
    step: int
    usage: Usage
    conversation_head: Digest
    script_digest: Digest | None = None
    append: list[Digest] = Field(default_factory=list)
    user_messages: list[str] = Field(default_factory=list)
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    started_at: datetime
    deadline: datetime | None = None
    last_seq: int
    events: list[RunEvent] = Field(default_factory=list)
    """The events not yet flushed (kept small: flushed before continuing)."""
    segments: list[EventSegment] = Field(default_factory=list)
    continued: int = 0
    sandbox_started: bool = False


for _model in (RunInput, Message, ToolResult, CarriedState, StoreEventsInput, WebhookInput):
    _model.model_rebuild()
