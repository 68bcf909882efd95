"""Schema-constrained tool calls: the envelope a model without native tools writes.

Small local models (the embedded SmolLM2-135M, say) have no usable tool-calling
template, so :class:`~activities.models.openai_compat.OpenAICompatProvider` can
describe the tools in the system prompt (:func:`tools_prompt`) and send a
``response_format`` (:func:`response_format`) whose JSON schema admits exactly one
object ``{"tool": <name>, "arguments": {...}}``: an ``anyOf`` with one branch per
tool, each branch pinning ``tool`` to a constant and ``arguments`` to that tool's
parameter schema (:func:`tool_call_schema`). Grammar-constrained decoding
(llama.cpp, vLLM) then *cannot* emit anything else, so even a tiny model always
yields a parseable call, which :func:`parse_tool_envelope` reads back.

Design (why it looks like this):

* The parameter schemas are cleaned first (:func:`grammar_schema`): grammar
  compilers choke on huge length bounds, unsupported ``pattern`` syntax and
  ``$ref``s that no longer resolve once nested in the envelope. The validator
  after the activity enforces the real schema, so the grammar only has to
  guarantee a parseable shape. Native tool calling compiles the parameter
  schemas too (into a grammar, on llama.cpp), so its ``tools`` array is cleaned
  the same way (:func:`native_tools`).
* The arguments are kept as the model produced them: they are hostile input,
  parsed and validated after the activity, never here. One lexical repair is made:
  llama-cpp-python's JSON grammar lets raw control characters (a literal newline,
  say) into strings, which JSON forbids, so they are escaped (to ``\\n``); nothing
  else changes, not even whitespace. Without it every multi-line ``write_file``
  from the embedded model would fail validation.
* The envelope's shape is written down once, here: the schema, the prompt that
  asks for it, the text past calls are replayed as, and the reader all agree.

This module must not do I/O, and must not import the tool registry
(``activities.tools``): which patterns are safe for a grammar arrives with each
``ToolSchema`` (``grammar_safe_patterns``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from activities.models.base import ToolSchema
from agentrun.contracts import RawToolCall

__all__ = [
    "GRAMMAR_LENGTH_BOUND",
    "SchemaFormat",
    "envelope_text",
    "escape_control_characters",
    "grammar_schema",
    "native_tools",
    "parse_tool_envelope",
    "response_format",
    "tool_call_schema",
    "tools_prompt",
]

SchemaFormat = Literal["json_object", "json_schema"]
"""How the envelope schema is sent: llama.cpp's ``json_object`` + ``schema``, or
OpenAI's (and vLLM's) ``json_schema``."""


# ---------------------------------------------------------------------------
# What the model reads: the tool catalogue
# ---------------------------------------------------------------------------


def _type_label(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, str):
        return kind
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    options = schema.get("anyOf") or schema.get("oneOf") or []
    labels = [_type_label(o) for o in options if isinstance(o, dict)]
    return " or ".join(label for label in labels if label) or "any"


def tools_prompt(tools: list[ToolSchema]) -> str:
    """The tool catalogue a schema-constrained model reads in its system prompt.

    Without native tool support the model only learns the tools from text (the
    grammar then keeps its reply well-formed). Arguments are listed as
    ``name (type, required): description`` rather than as raw JSON schema: fewer
    tokens, and easier for a 135M-parameter model to follow.
    """
    lines = [
        "You act only by calling tools. Reply with exactly one JSON object and nothing "
        'else: {"tool": "<tool name>", "arguments": {<the tool\'s arguments>}}.',
        "Tools:",
    ]
    for tool in tools:
        props = tool.parameters.get("properties")
        required = set(tool.parameters.get("required") or ())
        args = []
        if isinstance(props, dict):
            for name, prop in props.items():
                prop = prop if isinstance(prop, dict) else {}
                flags = _type_label(prop) + (", required" if name in required else "")
                about = prop.get("description")
                args.append(f"{name} ({flags})" + (f": {about}" if about else ""))
        arguments = "; ".join(args) if args else "none"
        lines.append(f"- {tool.name}: {tool.description} Arguments: {arguments}")
    return "\n".join(lines)


def envelope_text(call: RawToolCall) -> str:
    """How a past tool call looks to a constrained model: the JSON it emitted."""
    return f'{{"tool": {json.dumps(call.name)}, "arguments": {call.arguments}}}'


# ---------------------------------------------------------------------------
# What the grammar admits: the envelope schema
# ---------------------------------------------------------------------------

GRAMMAR_LENGTH_BOUND = 64
"""Largest minLength/maxLength/minItems/maxItems kept in the constraint schema.

llama.cpp compiles ``maxLength: N`` into N nested grammar rules: the real tool
schemas' ``maxLength: 4194304`` makes a grammar of tens of megabytes and crashes
the server. Larger bounds are dropped; the validator after the activity enforces
the real limits (the grammar only has to guarantee a parseable shape)."""

_STRUCTURAL = {"type", "properties", "required", "additionalProperties", "items", "enum", "const"}
_COMBINATORS = {"anyOf", "oneOf", "allOf", "prefixItems"}
_BOUNDS = {"minLength", "maxLength", "minItems", "maxItems"}
_MAX_REF_DEPTH = 8


def grammar_schema(
    schema: object,
    *,
    safe_patterns: frozenset[str] = frozenset(),
    descriptions: bool = False,
    root: dict[str, Any] | None = None,
    depth: int = 0,
) -> Any:
    """A copy of a tool's parameter schema that grammar compilers handle safely.

    Keeps only structural keywords (type, properties, required, items, enum,
    const, anyOf/oneOf/allOf) and small length bounds; drops descriptions,
    defaults, formats, numeric ranges and patterns other than ``safe_patterns``
    (the tool's ``ToolSchema.grammar_safe_patterns``; unsupported pattern syntax
    makes llama.cpp fail the request; the validator checks them anyway); inlines
    local ``$ref``s, because each tool's schema ends up nested inside the
    envelope where its ``#/$defs/...`` would no longer resolve.

    With ``descriptions`` the ``description`` texts are kept: native tool calling
    (:func:`native_tools`) shows the schema to the model, which reads them, while
    grammar compilers ignore them.
    """
    if not isinstance(schema, dict):
        return schema
    root = schema if root is None else root

    def clean(sub: object, depth: int = depth) -> Any:
        return grammar_schema(
            sub, safe_patterns=safe_patterns, descriptions=descriptions, root=root, depth=depth
        )

    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve_ref(root, ref) if depth < _MAX_REF_DEPTH else None
        return {} if target is None else clean(target, depth + 1)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: clean(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = clean(value)
        elif key in _COMBINATORS and isinstance(value, list):
            out[key] = [clean(sub) for sub in value]
        elif (
            key in _STRUCTURAL
            or _small_bound(key, value)
            or (key == "pattern" and value in safe_patterns)
            or (descriptions and key == "description" and isinstance(value, str))
        ):
            out[key] = value
    return out


def _small_bound(key: str, value: object) -> bool:
    return key in _BOUNDS and isinstance(value, int) and value <= GRAMMAR_LENGTH_BOUND


def _resolve_ref(root: dict[str, Any], ref: str) -> dict[str, Any] | None:
    if not ref.startswith("#/"):
        return None  # remote refs are never fetched
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def tool_call_schema(tools: list[ToolSchema]) -> dict[str, Any]:
    """The JSON schema that admits exactly one call to one of ``tools``.

    One ``anyOf`` branch per tool, so the arguments are constrained by *that*
    tool's parameters (an enum of names plus a union of argument schemas would let
    the model pair ``finish`` with ``shell``'s arguments). ``tool`` comes first so
    the model commits to a tool before writing its arguments. Parameter schemas
    pass through :func:`grammar_schema`.
    """
    branches = [
        {
            "type": "object",
            "properties": {
                "tool": {"type": "string", "const": tool.name},
                "arguments": grammar_schema(
                    tool.parameters, safe_patterns=tool.grammar_safe_patterns
                )
                or {"type": "object"},
            },
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def native_tools(tools: list[ToolSchema]) -> list[dict[str, Any]]:
    """The ``tools`` array of a native Chat Completions request, with compilable schemas.

    Servers that implement native tool calling with a grammar (llama-cpp-python's
    ``chatml-function-calling``, llama.cpp's ``llama-server``, vLLM) compile each
    tool's parameter schema as :func:`response_format`'s schema is compiled; the
    raw ``maxLength: 4194304`` crashes llama.cpp's. So native mode sends the same
    :func:`grammar_schema` cleaning, descriptions kept for the model to read.
    """
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": grammar_schema(
                    tool.parameters, safe_patterns=tool.grammar_safe_patterns, descriptions=True
                )
                or {"type": "object"},
            },
        }
        for tool in tools
    ]


def response_format(tools: list[ToolSchema], schema_format: SchemaFormat) -> dict[str, Any]:
    """The request's ``response_format``: :func:`tool_call_schema` in ``schema_format``."""
    schema = tool_call_schema(tools)
    if schema_format == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema}}
    return {"type": "json_object", "schema": schema}


# ---------------------------------------------------------------------------
# What the model wrote: reading the envelope without re-serialising the arguments
# ---------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")
_MISSING = object()


def _ws(text: str, i: int) -> int:
    match = _WS.match(text, i)
    return match.end() if match else i


def _members(text: str) -> dict[str, tuple[object, str]]:
    """Top-level members of a JSON object as ``key -> (value, raw text of the value)``.

    Stops at the first syntax error; a value that fails to decode (typically cut
    off by ``max_tokens``) is returned as ``(_MISSING, rest of the text)`` so its
    raw text still reaches the validator.
    """
    out: dict[str, tuple[object, str]] = {}
    i = _ws(text, 0)
    if not text.startswith("{", i):
        return out
    i += 1
    while True:
        i = _ws(text, i)
        try:
            key, i = _DECODER.raw_decode(text, i)
        except ValueError:
            return out
        if not isinstance(key, str):
            return out
        i = _ws(text, i)
        if not text.startswith(":", i):
            return out
        i = _ws(text, i + 1)
        try:
            value, end = _DECODER.raw_decode(text, i)
        except ValueError:
            out[key] = (_MISSING, text[i:].rstrip())
            return out
        out[key] = (value, text[i:end])
        i = _ws(text, end)
        if not text.startswith(",", i):
            return out
        i += 1


_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def escape_control_characters(text: str) -> str:
    """Escape raw U+0000..U+001F characters that occur *inside* JSON strings.

    Outside strings they are whitespace (or garbage the parser rejects anyway) and
    are left alone; the string/escape state is tracked character by character.
    """
    if not any(ord(ch) < 0x20 for ch in text):
        return text
    out: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            elif ord(ch) < 0x20:
                ch = _CONTROL_ESCAPES.get(ch, f"\\u{ord(ch):04x}")
        elif ch == '"':
            in_string = True
        out.append(ch)
    return "".join(out)


def parse_tool_envelope(content: str, *, call_id: str) -> RawToolCall | None:
    """``{"tool": name, "arguments": ...}`` → a ``RawToolCall``, or None without a name.

    The arguments are the model's raw text (a slice of ``content``), not a
    re-serialisation: malformed or truncated arguments are passed on for the
    validator to reject and report back to the model. The only change is
    :func:`escape_control_characters` (see the module docstring).
    """
    members = _members(escape_control_characters(content))
    name, _ = members.get("tool", (None, ""))
    if not isinstance(name, str) or not name:
        return None
    _, raw_arguments = members.get("arguments", (_MISSING, ""))
    return RawToolCall(id=call_id, name=name, arguments=raw_arguments)
