"""The tool registry: what the model may call, with JSON-schema'd arguments.

Tool arguments come from the model and are hostile input. Each tool has a strict
pydantic model; arguments that do not parse or validate become a tool error the
model sees (`ErrorKind.BAD_ARGUMENTS`, or `UNKNOWN_TOOL` for a name that is
not a tool), never an exception that fails the run.

Providers never import this module: they see the tools only as the `ToolSchema`s
(`activities.models.base`) it builds, so the dependency runs one way.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from activities.models.base import ToolSchema
from agentrun.contracts import ToolName

RELATIVE_PATH_PATTERN = r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$"
"""Advertised in the schema so constrained decoding cannot emit absolute paths.

Validation itself is more lenient (any relative path; the sandbox confines it):
the pattern only steers models, small ones especially, towards usable names."""
GRAMMAR_SAFE_PATTERNS = frozenset({RELATIVE_PATH_PATTERN})
"""Patterns simple enough for grammar compilers (llama.cpp) to honour; every
schema carries them (``ToolSchema.grammar_safe_patterns``) for the providers."""


def _path_field(default: str | None = None) -> Any:
    return Field(
        default=... if default is None else default,
        min_length=1,
        max_length=4096,
        description="Path relative to the workspace, e.g. notes/todo.txt",
        json_schema_extra={"pattern": RELATIVE_PATH_PATTERN},
    )


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShellArgs(_Args):
    command: str = Field(min_length=1, max_length=20_000, description="A /bin/sh command line")
    timeout_seconds: float | None = Field(
        default=None, gt=0, le=3600, description="Optional; capped by the run's tool timeout"
    )
    env_secrets: list[str] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Optional; environment variables granted to the run (its exec_env) to set for "
            "this one command only, by name"
        ),
    )


class ReadFileArgs(_Args):
    path: str = _path_field()


class WriteFileArgs(_Args):
    path: str = _path_field()
    content: str = Field(max_length=4 * 1024 * 1024, description="The whole new file content")


class ListFilesArgs(_Args):
    path: str = _path_field(".")


class HttpRequestArgs(_Args):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str = Field(
        min_length=1,
        max_length=8000,
        description="An absolute http(s) URL on a host the run may reach",
    )
    headers: dict[str, str] = Field(default_factory=dict, max_length=32)
    body: str | None = Field(default=None, max_length=1024 * 1024)


class FinishArgs(_Args):
    answer: str = Field(min_length=1, max_length=100_000, description="The final answer")


@dataclass(frozen=True)
class ToolDef:
    name: ToolName
    description: str
    args: type[_Args]

    def schema(self) -> ToolSchema:
        return ToolSchema(
            name=self.name.value,
            description=self.description,
            # A copy: providers may adapt the schema they send.
            parameters=copy.deepcopy(_parameters(self.args)),
            grammar_safe_patterns=GRAMMAR_SAFE_PATTERNS,
        )


@functools.cache
def _parameters(args: type[_Args]) -> dict[str, Any]:
    """A tool's JSON schema, built once: pydantic's schema generation is a few
    milliseconds, and every model call sends every tool's schema."""
    params = args.model_json_schema()
    params.pop("title", None)
    for prop in params.get("properties", {}).values():
        prop.pop("title", None)
    return params


TOOLS: dict[str, ToolDef] = {
    t.name.value: t
    for t in (
        ToolDef(ToolName.SHELL, "Run a shell command in the workspace.", ShellArgs),
        ToolDef(ToolName.READ_FILE, "Read a text file from the workspace.", ReadFileArgs),
        ToolDef(ToolName.WRITE_FILE, "Create or overwrite a file in the workspace.", WriteFileArgs),
        ToolDef(ToolName.LIST_FILES, "List files in a workspace directory.", ListFilesArgs),
        ToolDef(
            ToolName.HTTP_REQUEST,
            "Send an HTTP request to an API the run may reach (credentials are added for you).",
            HttpRequestArgs,
        ),
        ToolDef(ToolName.FINISH, "Finish the run with a final answer.", FinishArgs),
    )
}


class ToolArgumentError(ValueError):
    """The model's arguments were malformed; the message is shown to the model."""


class UnknownTool(ToolArgumentError):
    """The model called a tool that does not exist; the message lists the real ones.

    A subclass, so a caller that only cares that the call was unusable catches
    ``ToolArgumentError``; one that reports why (``ErrorKind.UNKNOWN_TOOL`` rather
    than ``BAD_ARGUMENTS``) tells them apart by type, never by message text.
    """


def tool_schemas(names: list[str]) -> list[ToolSchema]:
    return [TOOLS[n].schema() for n in names if n in TOOLS]


def parse_arguments(name: str, raw: str) -> _Args:
    """Parse and validate raw argument text for tool `name`.

    Raises `UnknownTool` when `name` is not a tool, `ToolArgumentError` when the
    arguments are not a JSON object that the tool's model accepts.
    """
    tool = TOOLS.get(name)
    if tool is None:
        raise UnknownTool(f"unknown tool {name[:64]!r}; available: {', '.join(TOOLS)}")
    try:
        value: Any = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise ToolArgumentError(f"arguments are not valid JSON: {exc.msg} at {exc.pos}") from None
    if not isinstance(value, dict):
        raise ToolArgumentError("arguments must be a JSON object")
    try:
        return tool.args.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ToolArgumentError(f"invalid arguments for {name}: {problems}") from None
