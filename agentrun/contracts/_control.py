"""Control payloads (updates), queries' answers, the workflow's input, result and loop state."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from agentrun.contracts._events import EventSegment, RunEvent
from agentrun.contracts._ids import Digest, RunStatus, TerminalReason
from agentrun.contracts._json_typed import JsonTyped
from agentrun.contracts._records import ArtifactRef, PendingApproval, ToolCall, Usage
from agentrun.contracts._slots import RunSlot
from agentrun.contracts._spec import Actor, RunSpec


class ControlRequest(JsonTyped):
    """Payload of pause / resume / cancel."""

    model_config = ConfigDict(extra="forbid")
    actor: Actor
    reason: str | None = Field(default=None, max_length=2000)
    abort_in_flight: bool = False
    """For cancel: abort the in-flight step instead of letting it finish."""


class ApprovalDecision(JsonTyped):
    """Payload of approve / deny. Must name the exact pending call and its arguments."""

    model_config = ConfigDict(extra="forbid")
    approval_id: str
    arguments_digest: Digest
    actor: Actor
    reason: str | None = Field(default=None, max_length=2000)


class UserMessage(JsonTyped):
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


class RunInput(BaseModel):
    """The workflow's single input; `carried` is set only on continue-as-new."""

    run_id: str
    tenant_id: str
    spec: RunSpec
    created_by: Actor
    continue_as_new_every: int = Field(default=200, ge=1)
    """Continue-as-new after this many steps in one Temporal run (or when the SDK suggests)."""
    carried: LoopState | None = None
    """The loop state handed over by the previous run (field name kept: durable)."""
    slot: RunSlot | None = None
    """The tenant slot the run holds (`held`) or waits for (`queued`); None: the tenant
    has no concurrency quota (and runs recorded before slots existed)."""
    idle_stop_seconds: float | None = Field(default=None, gt=0)
    """Stop the run's sandbox container after waiting this long for an approval or
    paused (the workspace stays; the next tool call or the resume starts it again).
    Set at launch from `AGENTRUN_SANDBOX_IDLE_STOP_SECONDS`, in the input so every
    replay decides alike; None: never (and runs launched before it existed)."""
    local_tool_seconds: float | None = Field(default=None, gt=0, le=5)
    """Run each sandbox tool call first as a local activity for at most this long, then
    as a normal activity (`workflows.loop`). Set at launch from
    `AGENTRUN_LOCAL_TOOL_CALL_SECONDS`; None: always a normal activity (and runs
    launched before it existed)."""


class LoopState(BaseModel):
    """The agent loop's whole state: what one Temporal run hands the next on continue-as-new.

    The workflow holds exactly one of these (`AgentRunWorkflow._state`) and carries it
    whole: `continue_as_new(inp.model_copy(update={"carried": state}))`. Adding a field
    to the loop is one line here, with a default.

    Durable: runs continued before this model existed carried the same fields under
    the name `CarriedState` (see `tests/histories/continue_as_new.json`); they still
    validate into it. Never rename or retype a field; a new one gets a default.

    What one Temporal run holds and does *not* carry (pending approval, the run's
    outcome, ...) lives in `workflows.state.RunLocal`; its pause flag and cancel
    request are copied into `paused`/`cancel` at the hand-over.
    """

    status: RunStatus = RunStatus.QUEUED
    """The loop's phase (never `paused`: pausing is a per-run flag over the phase)."""
    step: int = 0
    usage: Usage = Field(default_factory=Usage)
    conversation_head: Digest | None = None
    """Digest of the conversation's newest node; set by `init_run` before step 1."""
    script_digest: Digest | None = None
    append: list[Digest] = Field(default_factory=list)
    """Tool-result messages to append to the conversation with the next model call."""
    user_messages: list[str] = Field(default_factory=list)
    """Steering messages waiting for the next model call."""
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    started_at: datetime | None = None
    """Set when the run starts (before step 1)."""
    deadline: datetime | None = None
    last_seq: int = 0
    events: list[RunEvent] = Field(default_factory=list)
    """The events not yet flushed (kept small: flushed before continuing; the ones an
    update emitted while that flush ran are carried here to the next run)."""
    segments: list[EventSegment] = Field(default_factory=list)
    continued: int = 0
    """How many times the run continued-as-new."""
    sandbox_started: bool = False
    """A sandbox tool ran, so there is a container to pause, collect and destroy."""
    sandbox_since: datetime | None = None
    """`workflow.now()` at the first sandbox tool call: the run holds a sandbox from
    then until it is removed (`Usage.sandbox_seconds`). None before that, and for runs
    whose sandbox started before it was recorded (they count no sandbox time)."""
    turn_calls: list[ToolCall] = Field(default_factory=list)
    """The current turn's tool calls not yet run. Carried only when the run continues
    in the middle of a turn; small, as calls hold their arguments by digest and a
    turn has at most the per-turn cap of them."""
    paused: bool = False
    """The run was paused when it continued-as-new (a pause can land while the last
    segment is stored); the next run starts paused. Written only at the hand-over:
    within a run the flag lives in `RunLocal.paused`. Runs continued before it was
    carried start unpaused, as they did."""
    cancel: ControlRequest | None = None
    """The cancel request answered before the run continued-as-new; the next run
    ends cancelled at its first boundary. Written only at the hand-over (within a run
    it lives in `RunLocal.cancel`); absent for runs continued before it was carried."""
