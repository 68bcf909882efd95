"""Building a run's spec from `agentrun run`'s file and flags.

    agentrun run spec.yaml --goal "..." --tool shell --label team=docs

The spec file (JSON or YAML, `-` for stdin) is the base and each flag
overrides its field. The result is the JSON body of ``POST /v1/runs``: the API
validates it as a `RunSpec`, so its error messages stay the one source of truth
about what a spec may hold; this module only checks what the API cannot (a
goal is present at all, labels are ``key=value``).

This module must not: talk to the API.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from agentrun.contracts import ModelRef, ToolName
from cli.errors import EXIT_USAGE, CliError

TOOLS = [tool.value for tool in ToolName]
"""`--tool` choices."""
PROVIDERS = list(get_args(ModelRef.model_fields["provider"].annotation))
"""`--provider` choices."""


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
    if args.max_steps:
        spec.setdefault("limits", {})["max_steps"] = args.max_steps
    if args.provider or args.model:
        model = spec.setdefault("model", {})
        if args.provider:
            model["provider"] = args.provider
        if args.model:
            model["name"] = args.model
    if args.label:
        spec["labels"] = {**spec.get("labels", {}), **parse_labels(args.label)}
    return spec


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
