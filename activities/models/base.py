"""The model provider interface behind the `call_model` activity.

A provider turns a list of conversation messages plus tool schemas into one
assistant reply. Providers never retry by themselves (Temporal does: "retries
belong to Temporal, not the LLM client"); they classify failures instead:

- transient (429, 5xx, timeouts, connection errors): raise `ApplicationError`
  with `non_retryable=False` and a type from `RETRYABLE_TYPES`, and
  `next_retry_delay` when the server sent `Retry-After`;
- permanent (401/403 auth, 400/404/422 validation, unknown model, a 500 repeated
  on every attempt): raise `ApplicationError(..., non_retryable=True)` with a type
  from `PERMANENT_TYPES`.

Error messages must never include API keys or request headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from agentrun.contracts import DeltaSink, Message, ModelRef, RawToolCall, ScriptedTurn, Usage

RETRYABLE_TYPES = ("ModelRateLimited", "ModelUnavailable", "ModelTimeout")
PERMANENT_TYPES = (
    "ModelAuthError",
    "ModelBadRequest",
    "ModelNotFound",
    "ModelConfigError",
    "ModelServerError",
)


@dataclass
class ToolSchema:
    """A tool as providers describe it to a model.

    The tool registry (``activities.tools``) builds these; providers read them and
    never import the registry, so the dependency runs one way only.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the arguments object."""
    grammar_safe_patterns: frozenset[str] = frozenset()
    """The ``pattern`` values in ``parameters`` simple enough for grammar compilers
    (llama.cpp) to honour; schema-constrained decoding keeps these and drops the
    rest (see ``activities.models.constrained.grammar_schema``)."""


@dataclass
class ModelRequest:
    model: ModelRef
    messages: list[Message]
    tools: list[ToolSchema]
    script: list[ScriptedTurn] | None = None
    """Only for the scripted provider."""
    attempt: int = 1
    """The activity attempt (the scripted provider uses it to simulate transient errors)."""
    on_delta: DeltaSink | None = None
    """When set, a provider that can stream asks for a streamed reply and reports
    each fragment here as it arrives; the returned ``ModelReply`` is unchanged."""


@dataclass
class ModelReply:
    text: str | None
    tool_calls: list[RawToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None


def turn_index(messages: list[Message]) -> int:
    """The turn a reply answers: how many assistant messages the conversation holds.

    Providers derive deterministic tool-call ids from it (``call_<turn>_<i>``), and
    the scripted provider picks its script entry with it; both only depend on the
    request, so a retried activity produces the same ids.
    """
    return sum(1 for message in messages if message.role == "assistant")


class ModelProvider(Protocol):
    async def complete(self, request: ModelRequest) -> ModelReply: ...

    async def aclose(self) -> None: ...
