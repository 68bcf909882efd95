"""The conversation, tool calls and their results, by reference."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from agentrun.contracts._ids import Digest, ErrorKind

# ---------------------------------------------------------------------------
# Conversation, tool calls and results (by reference)
# ---------------------------------------------------------------------------


class Usage(BaseModel):
    """What a run (or one model call, one tool call) used; runs sum theirs with `+`."""

    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    """Some of the counts are agentrun's estimate (a server that reported no usage):
    a token budget may trip somewhat early or late on them."""
    tool_seconds: float = Field(default=0.0, ge=0)
    """Wall time the run's tool calls took, as measured by the tool activity
    (`ToolResult.tool_seconds`). Runs recorded before it was measured hold 0."""
    sandbox_seconds: float = Field(default=0.0, ge=0)
    """How long the run held a sandbox: from its first sandbox tool call to the
    container's removal, paused time included (a paused container still holds its
    memory and workspace). Added when the sandbox is removed, at the run's end."""

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            estimated=self.estimated or other.estimated,
            tool_seconds=self.tool_seconds + other.tool_seconds,
            sandbox_seconds=self.sandbox_seconds + other.sandbox_seconds,
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


class EgressAudit(BaseModel):
    """One request the egress broker handled (allowed or refused): the audit record.

    Names the secret it injected, never its value; no path or query either (a query
    may be where a tool tried to smuggle data out).
    """

    run_id: str
    step: int | None = None
    call_id: str
    tool: str
    method: str
    host: str
    port: int | None = None
    allowed: bool
    secret: str | None = None
    """The name of the secret the broker injected, if any."""
    status: int | None = None
    """The upstream's HTTP status; None when refused or when the upstream failed."""
    error: str | None = None
    """Why the request was refused or failed (a fixed sentence, no value)."""


class ToolResult(BaseModel):
    call_id: str
    name: str
    ok: bool
    error_type: ErrorKind | None = None
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
    egress: list[EgressAudit] = Field(default_factory=list)
    """The egress broker's audit records of this call's requests, in order (the
    workflow emits each as an `egress.request` event). Empty before egress existed."""
    tool_seconds: float = Field(default=0.0, ge=0)
    """Wall time the tool took in the activity (container start-up included; for a
    shell command re-attached after a worker crash, at least the command's own run
    time). 0 for a call that executed nothing (denied, `finish`, unknown tool or
    arguments that do not parse). Results recorded before it hold 0."""


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
