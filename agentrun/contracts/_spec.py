"""What a client launches: the run specification and who asked for it."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from agentrun.contracts._ids import NAME_PATTERN, SecretName, canonical_json, digest_of
from agentrun.contracts._json_typed import JsonTyped

# ---------------------------------------------------------------------------
# The run specification (what a client launches)
# ---------------------------------------------------------------------------


class ToolName(StrEnum):
    SHELL = "shell"
    READ_FILE = "read_file"
    WRITE_FILE = "write_file"
    LIST_FILES = "list_files"
    FINISH = "finish"
    HTTP_REQUEST = "http_request"
    """Executed by the egress broker in the worker, never in the sandbox; a run lists it
    explicitly (it is not among the default tools) and needs `RunSpec.egress` rules."""


DEFAULT_TOOLS = (
    ToolName.SHELL,
    ToolName.READ_FILE,
    ToolName.WRITE_FILE,
    ToolName.LIST_FILES,
    ToolName.FINISH,
)
"""The tools of a spec that names none (every tool but `http_request`)."""


class ScriptedToolCall(JsonTyped):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, JsonValue] | str = Field(default_factory=dict)
    """A dict, or a raw string to simulate a model emitting malformed JSON."""


class ScriptedTurn(JsonTyped):
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


class ModelRef(JsonTyped):
    """Which model a run uses. Endpoints and keys are operator configuration, never here."""

    model_config = ConfigDict(extra="forbid")
    provider: Literal["default", "openai", "anthropic", "scripted"] = "default"
    """`default` is whatever the deployment configured (the embedded model out of the box)."""
    name: str | None = Field(default=None, max_length=200)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_output_tokens: int = Field(default=1024, ge=1, le=65536)
    tool_choice: Literal["auto", "required", "none"] | None = None
    """Whether the model must call a tool (`required`), may (`auto`) or may not (`none`);
    `None` takes the deployment's `AGENTRUN_TOOL_CHOICE`. Small models on `auto` often
    answer in prose instead of calling a tool."""
    script: list[ScriptedTurn] | None = Field(default=None, max_length=10000)
    """Only for provider `scripted`; stored in the artifact store at run start."""


class ApprovalPolicy(JsonTyped):
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


class Limits(JsonTyped):
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
    max_tool_calls_per_turn: int | None = Field(default=None, ge=1, le=1000)
    """Tool calls one model reply may make; the calls beyond it are not run, and the
    model gets a tool message saying so for each. Never above the deployment's
    `AGENTRUN_MAX_TOOL_CALLS_PER_TURN` (32 by default), which `None` means."""


class SandboxPolicy(JsonTyped):
    """Per-run sandbox settings, within what the operator allows.

    A value over the deployment's maximum (`AGENTRUN_SANDBOX_MAX_*`), an image outside
    its allow-list, or network where it is off is refused, never clamped: the API
    answers 422 naming the limit before the run starts, and the worker refuses it
    again when it creates the sandbox (`cpus` within the maximum are still capped at
    what the Docker host has). The bounds below are the most any deployment may
    allow; a deployment's own maxima are in its OpenAPI document. `None` takes the
    deployment's default (`AGENTRUN_SANDBOX_MEMORY_MB` …).
    """

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


class WebhookSpec(JsonTyped):
    """Where the run's events are POSTed (signed; see docs/api.md, "Webhooks")."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        max_length=2000,
        examples=["https://hooks.example.com/agentrun"],
        description=(
            "An http(s) URL without credentials; an IP host is four decimal octets or a "
            "plain IPv6 address. Deliveries go only to public addresses (checked after "
            "DNS) unless the operator allow-lists the host or its network."
        ),
    )
    on_approval_request: bool = False

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # Deliberately as loose as ever: this model is decoded again inside workflows
        # that started under older rules, and a stricter check here would leave them
        # unable to decode their input. The URL rules (`parse_destination`) and the
        # allow-list are applied by the API at launch (422) and again at delivery.
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("webhook url must be an absolute http(s) URL")
        return value


EGRESS_HOST_PATTERN = (
    r"^(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?$"
)
"""A lower-case DNS name or dotted IPv4 address (no wildcards, ports or schemes)."""
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~\-]{1,100}$"
ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class EgressInjection(JsonTyped):
    """A credential the broker adds to every request to its rule's host.

    Exactly one of `header`, `query` or `basic_username`: a header whose value is
    `template` with `{value}` replaced by the secret, a query parameter (same
    template), or HTTP basic auth with the secret as the password. The value is
    resolved in the worker at request time; neither the sandbox nor the model sees it.
    """

    model_config = ConfigDict(extra="forbid")
    secret: SecretName
    """A name listed in `RunSpec.secrets`."""
    header: str | None = Field(default=None, pattern=HEADER_NAME_PATTERN)
    query: str | None = Field(default=None, min_length=1, max_length=100)
    basic_username: str | None = Field(default=None, max_length=200)
    template: str = Field(default="{value}", max_length=500, examples=["Bearer {value}"])

    @model_validator(mode="after")
    def _one_place(self) -> EgressInjection:
        places = [p for p in (self.header, self.query, self.basic_username) if p is not None]
        if len(places) != 1:
            raise ValueError("an injection sets exactly one of header, query, basic_username")
        if self.template.count("{value}") != 1:
            raise ValueError("template must contain {value} exactly once")
        if self.basic_username is not None and ":" in self.basic_username:
            raise ValueError("basic_username must not contain ':'")
        return self


class EgressRule(JsonTyped):
    """One destination a run's tools may reach through the egress broker.

    Tools talk plain HTTP to the broker's proxy (`http://host/...`, with
    `HTTP_PROXY` set for them); the broker speaks `scheme` to `host:port` upstream,
    so it can add the credential (a CONNECT tunnel could not: it carries TLS the
    broker cannot read). Everything not matched by a rule is refused (403).
    """

    model_config = ConfigDict(extra="forbid")
    host: str = Field(max_length=253, pattern=EGRESS_HOST_PATTERN, examples=["api.example.com"])
    scheme: Literal["https", "http"] = "https"
    port: int | None = Field(default=None, ge=1, le=65535)
    """`None`: 443 for https, 80 for http."""
    inject: EgressInjection | None = None

    @property
    def effective_port(self) -> int:
        return self.port or (443 if self.scheme == "https" else 80)


SINCE_DIGESTS = ("egress", "exec_env")
"""`RunSpec` fields newer than its first digests (see `RunSpec.spec_digest`)."""


class RunSpec(JsonTyped):
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
    tools: list[ToolName] = Field(default_factory=lambda: list(DEFAULT_TOOLS))
    limits: Limits = Field(default_factory=Limits)
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    sandbox: SandboxPolicy = Field(default_factory=SandboxPolicy)
    secrets: list[SecretName] = Field(default_factory=list, max_length=64)
    """Names of secrets the broker may inject into tool executions (never their values)."""
    egress: list[EgressRule] = Field(default_factory=list, max_length=64)
    """Destinations the run's tools may reach through the egress broker (default: none;
    the sandbox itself never has a route). See docs/api.md, "Egress"."""
    exec_env: dict[str, SecretName] = Field(default_factory=dict, max_length=32)
    """Environment variable name -> secret name: a `shell` call that lists the variable
    in its `env_secrets` argument gets the value in its own process environment only."""
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    """Free-form labels, searchable as `key=value` in the API and the Temporal Web UI."""
    webhook: WebhookSpec | None = None
    finish: Literal["tool", "text"] | None = None
    """What ends the run successfully: a call of the `finish` tool (`tool`), or also a
    reply of plain text without tool calls (`text`). `None` means `tool` when the run
    has tools besides `finish`, else `text`. An empty reply is never an answer."""

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

    @field_validator("exec_env")
    @classmethod
    def _exec_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.match(ENV_VAR_PATTERN, name):
                raise ValueError(f"exec_env: {name!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _grants(self) -> RunSpec:
        granted = set(self.secrets)
        named = [r.inject.secret for r in self.egress if r.inject is not None]
        named += list(self.exec_env.values())
        missing = sorted({n for n in named if n not in granted})
        if missing:
            names = ", ".join(missing)
            raise ValueError(
                f"secrets used by egress or exec_env must be listed in secrets: {names}"
            )
        if ToolName.HTTP_REQUEST in self.tools and not self.egress:
            raise ValueError("the http_request tool needs at least one egress rule")
        return self

    def spec_digest(self) -> str:
        dumped = self.model_dump(mode="json")
        # Fields added since digests were first recorded are left out while empty, so
        # a spec's digest (an idempotent launch's identity, kept in the run's memo)
        # stays what it was before they existed.
        for name in SINCE_DIGESTS:
            if not dumped[name]:
                del dumped[name]
        return digest_of(canonical_json(dumped))


class Actor(JsonTyped):
    """Who asked for something. Every control action carries one (audit trail)."""

    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1, max_length=200, examples=["alice@example.com"])
    kind: Literal["user", "service", "engineer", "system"] = "user"
    tenant_id: str | None = None
    on_behalf_of: str | None = Field(default=None, max_length=200)
    """The end user a service key acted for (`X-Agentrun-On-Behalf-Of`); `subject` is
    the key's owner. Optional, so histories recorded before it decode unchanged."""


SYSTEM_ACTOR = Actor(subject="agentrun", kind="system")
