"""The configuration reference (`docs/configuration.md`), generated from `Settings`.

    python -m agentrun.config_docs            # rewrite docs/configuration.md
    python -m agentrun.config_docs --check    # exit 1 when it is out of date

Design (why it looks like this):

* **`Settings` is the only source.** A hand-kept table drifted: six settings were
  missing from it. Each row here is one field: its environment variable, its type
  with the bounds the field enforces, its default and its docstring, so a new
  setting cannot be undocumented (`tests/test_config_reference.py` regenerates the
  page, compares it with the committed one and names what is missing).
* **Deterministic output** (field order, no timestamps), so the comparison is exact.

This module must not: read the environment (defaults are the class's, not this
machine's), or import anything of the project but `agentrun.config`.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from agentrun.config import Settings

__all__ = ["DEFAULT_OUTPUT", "env_var", "main", "render", "undocumented"]

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
"""Where the reference lives in the source tree."""

HEADER = """\
# Configuration reference

<!-- Generated from `agentrun.config.Settings` by `python -m agentrun.config_docs`;
     edit the field docstrings there, not this file. -->

Every setting is an environment variable with the prefix `AGENTRUN_`, read and
validated when a process starts (worker, API, CLI). A bad value, or two values that
cannot hold together (a sandbox default above its maximum, say), stops the process
with one line naming the variables, e.g.

    agentrun worker: invalid configuration: AGENTRUN_SANDBOX_MEMORY_MB=8192 is above
    AGENTRUN_SANDBOX_MAX_MEMORY_MB=4096: lower the default or raise the maximum …

Lists are JSON (`AGENTRUN_SANDBOX_IMAGE_ALLOWLIST='["python:3.12-slim"]'`); booleans
are `true`/`false`. "—" means unset.

| variable | type | default | meaning |
|---|---|---|---|
"""


def env_var(field: str) -> str:
    return f"AGENTRUN_{field.upper()}"


def undocumented() -> list[str]:
    """The variables whose field has no docstring (or description)."""
    return [
        env_var(name)
        for name, info in Settings.model_fields.items()
        if not (info.description or "").strip()
    ]


def render() -> str:
    """The whole reference page, one table row per field of `Settings`."""
    rows = [
        "| `{}` | {} | {} | {} |".format(
            env_var(name), _type(info), _default(info), _cell(info.description or "")
        )
        for name, info in Settings.model_fields.items()
    ]
    return HEADER + "\n".join(rows) + "\n"


def _type(info: FieldInfo) -> str:
    text = _annotation(info.annotation)
    bounds = []
    for item in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attr, None)
            if isinstance(item, annotated_types.BaseMetadata) and value is not None:
                bounds.append(f"{sign} {_number(value)}")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            bounds.append(f"matching `{pattern}`")
    return _cell(f"{text}, {', '.join(bounds)}" if bounds else text)


def _annotation(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " or ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        parts = [_annotation(a) for a in get_args(annotation) if a is not type(None)]
        return " or ".join(dict.fromkeys(parts))  # IPv4Network | IPv6Network: one "CIDR"
    if origin is list:
        (item,) = get_args(annotation)
        return f"JSON list of {_annotation(item)}"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " or ".join(f"`{member.value}`" for member in annotation)
    names = {
        "str": "string",
        "int": "integer",
        "float": "number",
        "bool": "boolean",
        "Path": "path",
        "IPv4Network": "CIDR",
        "IPv6Network": "CIDR",
    }
    name = getattr(annotation, "__name__", str(annotation))
    return names.get(name, name)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, list):
        return f"`{value!r}`".replace("'", '"')
    return f"`{_number(value) if isinstance(value, int | float) else value}`"


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _cell(text: str) -> str:
    """One table cell: the docstring's lines joined, pipes escaped."""
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agentrun.config_docs",
        description="Write the configuration reference generated from agentrun's Settings.",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 when the file is out of date"
    )
    args = parser.parse_args(argv)
    missing = undocumented()
    if missing:
        print(f"settings without a docstring: {', '.join(missing)}", file=sys.stderr)
        return 1
    page = render()
    current = args.output.read_text() if args.output.exists() else ""
    if args.check:
        if current != page:
            print(f"{args.output} is out of date: run python -m agentrun.config_docs")
            return 1
        return 0
    if current != page:
        args.output.write_text(page)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
