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
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    """Some of the counts are agentrun's estimate (a server that reported no usage):
    a token budget may trip somewhat early or late on them."""

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            estimated=self.estimated or other.estimated,
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
