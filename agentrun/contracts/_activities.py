"""Activity inputs and outputs: one model in, one model out, per activity."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agentrun.contracts._events import RunEvent
from agentrun.contracts._ids import Digest
from agentrun.contracts._records import ArtifactRef, ToolCall, Usage
from agentrun.contracts._spec import EgressRule, ModelRef, SandboxPolicy, ScriptedTurn

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
    max_tool_calls: int | None = None
    """The run's `Limits.max_tool_calls_per_turn`; the activity applies the smaller of
    it and the deployment's cap, and refuses the calls beyond."""
    secrets: list[str] = Field(default_factory=list)
    """The run's granted secret names (never values): their values are redacted from
    the reply. Empty in inputs recorded before redaction."""


class ModelCallOutput(BaseModel):
    conversation_head: Digest
    """The new head, including the appended messages and the assistant's reply."""
    text_preview: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    stop_reason: str | None = None
    attempt: int = 1
    refused_tool_calls: int = 0
    """Calls of the reply beyond the per-turn cap: not in `tool_calls`, never run; the
    conversation holds a refusal tool message for each."""


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
    step: int | None = None
    """The run's step (for the egress audit records); None in inputs recorded before."""
    egress: list[EgressRule] = Field(default_factory=list)
    """The run's egress rules (`RunSpec.egress`): names of secrets, never values."""
    exec_env: dict[str, str] = Field(default_factory=dict)
    """`RunSpec.exec_env`: environment variable -> secret name."""


class SandboxControlInput(BaseModel):
    run_id: str
    tenant_id: str
    action: Literal["pause", "resume", "destroy", "stop"]
    """`stop`: stop the container of an idle run (processes and memory gone, the
    workspace kept); its next tool call or `resume` starts it again."""
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
    secrets: list[str] = Field(default_factory=list)
    """The run's granted secret names (never values): their values are redacted from
    every file stored. Empty in inputs recorded before redaction."""


class StoreArtifactOutput(BaseModel):
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)


class StoreEventsInput(BaseModel):
    run_id: str
    tenant_id: str
    events: list[RunEvent]


class WebhookInput(BaseModel):
    run_id: str
    tenant_id: str
    url: str
    event: RunEvent


class WebhookOutput(BaseModel):
    status_code: int
    attempts: int
