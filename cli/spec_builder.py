"""Building a run's spec from `agentrun run`'s file and flags.

    agentrun run spec.yaml --goal "..." --tool shell --label team=docs
    agentrun run examples/approval.json --approve-tools shell,write_file --memory-mb 512

The spec file (JSON or YAML, `-` for stdin) is the base and each flag
overrides its field. The result is the JSON body of ``POST /v1/runs``: the API
validates it as a `RunSpec`, so its error messages stay the one source of truth
about what a spec may hold (the bounds of a deployment's sandbox limits are
known only to it); this module only checks what the API cannot (a goal is
present at all, labels are ``key=value``, `--approval tools` names tools) and
what argparse would otherwise let slip (`--max-steps 0`). A flag given is
always sent as given: ``0`` is a value, never "unset".

This module must not: talk to the API.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from agentrun.contracts import ApprovalPolicy, ModelRef, RunSpec, ToolName
from cli.errors import EXIT_USAGE, CliError

TOOLS = [tool.value for tool in ToolName]
"""`--tool` choices."""
PROVIDERS = list(get_args(ModelRef.model_fields["provider"].annotation))
"""`--provider` choices."""
APPROVAL_MODES = list(get_args(ApprovalPolicy.model_fields["mode"].annotation))
"""`--approval` choices."""


def _literal_values(annotation: Any) -> list[str]:
    """The values of a ``Literal[...] | None`` annotation."""
    return [v for arg in get_args(annotation) for v in get_args(arg) if isinstance(v, str)]


TOOL_CHOICES = _literal_values(ModelRef.model_fields["tool_choice"].annotation)
"""`--tool-choice` choices."""
FINISH_MODES = _literal_values(RunSpec.model_fields["finish"].annotation)
"""`--finish` choices."""
SANDBOX_FLAGS = ("memory_mb", "cpus", "pids", "workspace_mb", "network")
"""Flags whose value is the `sandbox` field of the same name."""


def at_least_one(text: str) -> int:
    """argparse type of `--max-steps`: 0 would mean no step at all, never a default."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def tool_list(text: str) -> list[str]:
    """argparse type of `--approve-tools`: ``shell,write_file`` → its names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TOOLS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown tool {', '.join(unknown)} (tools: {', '.join(TOOLS)})"
        )
    return names


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = _load_spec_file(args.spec) if args.spec else {}
    if args.goal:
        spec["goal"] = args.goal
    if not spec.get("goal"):
        raise CliError("a run needs a goal: pass --goal or a spec file with `goal`", EXIT_USAGE)
    if args.agent:
        spec["agent"] = args.agent
    if args.instructions:
        spec["instructions"] = args.instructions
    if args.tool:
        spec["tools"] = args.tool
    if args.max_steps is not None:
        spec.setdefault("limits", {})["max_steps"] = args.max_steps
    model_flags = {
        "provider": args.provider,
        "name": args.model,
        "temperature": args.temperature,
        "tool_choice": args.tool_choice,
    }
    _override(spec, "model", model_flags)
    if args.finish is not None:
        spec["finish"] = args.finish
    _override(spec, "sandbox", {name: getattr(args, name) for name in SANDBOX_FLAGS})
    _approval(spec, args)
    if args.label:
        spec["labels"] = {**spec.get("labels", {}), **parse_labels(args.label)}
    return spec


def _override(spec: dict[str, Any], field: str, flags: dict[str, Any]) -> None:
    """Set each flag given (not None) on `spec[field]`, keeping the file's other keys."""
    given = {key: value for key, value in flags.items() if value is not None}
    if given:
        section = spec.get(field)
        spec[field] = {**(section if isinstance(section, dict) else {}), **given}


def _approval(spec: dict[str, Any], args: argparse.Namespace) -> None:
    mode = args.approval
    if args.approve_tools and mode is None:
        mode = "tools"  # naming the tools that need approval asks for approval of them
    if mode is not None and mode != "tools" and args.approve_tools:
        raise CliError(f"--approve-tools needs --approval tools, not {mode}", EXIT_USAGE)
    flags: dict[str, Any] = {"mode": mode, "timeout_seconds": args.approval_timeout}
    if args.approve_tools:
        flags["tools"] = [name for names in args.approve_tools for name in names]
    _override(spec, "approval", flags)
    approval = spec.get("approval")
    if isinstance(approval, dict) and approval.get("mode") == "tools" and not approval.get("tools"):
        raise CliError(
            "--approval tools needs the tools to approve: --approve-tools shell,write_file "
            "(or `approval.tools` in the spec file)",
            EXIT_USAGE,
        )


def parse_labels(items: Sequence[str] | None) -> dict[str, str]:
    """``["team=docs", ...]`` → ``{"team": "docs", ...}``."""
    labels: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--label {item!r}: expected key=value", EXIT_USAGE)
        labels[key] = value
    return labels


def _load_spec_file(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else _read(path)
    if path.endswith((".yaml", ".yml")):
        try:
            # Optional dependency: only YAML specs need it.
            import yaml  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            raise CliError("YAML specs need PyYAML: pip install pyyaml", EXIT_USAGE) from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(f"{path}: not valid JSON ({exc})", EXIT_USAGE) from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: a run spec must be a JSON/YAML object", EXIT_USAGE)
    return data


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
