"""OpenAI-compatible Chat Completions: OpenAI, vLLM, Ollama, llama.cpp servers.

Two ways to get tool calls out of a model:

* **native** (``json_schema_tools=False``): send ``tools`` and read
  ``message.tool_calls``. Right for OpenAI and for servers whose chat template
  implements tool calling.
* **schema-constrained** (``json_schema_tools=True``, the default, made for small
  local models such as the embedded SmolLM2-135M): describe the tools in the
  system prompt and send a ``response_format`` whose JSON schema admits exactly
  one object ``{"tool": <name>, "arguments": {...}}`` (an ``anyOf`` with one
  branch per tool, each branch pinning ``tool`` to a constant and ``arguments``
  to that tool's parameter schema). Grammar-constrained decoding (llama.cpp,
  vLLM) then *cannot* emit anything else, so even a tiny model always yields a
  parseable call. The reply becomes one ``RawToolCall`` with the deterministic
  id ``call_<turn>_0``.

Either way the arguments string is kept as the model produced it: it is hostile
input, parsed and validated after the activity, never here. One lexical repair is
made in constrained mode: llama-cpp-python's JSON grammar lets raw control
characters (a literal newline, say) into strings, which JSON forbids, so they are
escaped (to ``\\n``); nothing else changes, not even whitespace. Without it every
multi-line ``write_file`` from the embedded model would fail validation.

This module must not retry (Temporal does) and must not log or quote the API key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from activities.models._http import bad_shape, make_client, post_json, stream_json
from activities.models.base import Delta, ModelReply, ModelRequest, ToolSchema, turn_index
from activities.models.errors import config_error
from activities.tools import GRAMMAR_SAFE_PATTERNS
from agentrun.contracts import Message, RawToolCall, Usage

__all__ = [
    "GRAMMAR_LENGTH_BOUND",
    "OpenAICompatProvider",
    "escape_control_characters",
    "grammar_schema",
    "parse_tool_envelope",
    "tool_call_schema",
    "tools_prompt",
    "wire_messages",
]

PROVIDER = "openai"

SchemaFormat = Literal["json_object", "json_schema"]


class OpenAICompatProvider:
    """A ``ModelProvider`` for any OpenAI-compatible ``/chat/completions`` endpoint.

    >>> provider = OpenAICompatProvider(base_url="http://127.0.0.1:8081/v1")
    >>> reply = await provider.complete(request)  # doctest: +SKIP
    >>> await provider.aclose()  # doctest: +SKIP

    ``default_model`` is used when ``request.model.name`` is unset (the registry
    normally resolves the name before calling). ``transport`` is for tests.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 300.0,
        json_schema_tools: bool = True,
        schema_format: SchemaFormat = "json_object",
        default_model: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = make_client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._secrets = (api_key,)
        self._constrained = json_schema_tools
        self._schema_format = schema_format
        self._default_model = default_model

    async def complete(self, request: ModelRequest) -> ModelReply:
        model = request.model.name or self._default_model
        if not model:
            raise config_error(
                PROVIDER, "no model name: set ModelRef.name or AGENTRUN_DEFAULT_MODEL"
            )
        constrained = self._constrained and bool(request.tools)
        body: dict[str, Any] = {
            "model": model,
            "messages": wire_messages(request.messages, request.tools, constrained=constrained),
            "max_tokens": request.model.max_output_tokens,
            "stream": False,
        }
        if request.model.temperature is not None:
            body["temperature"] = request.model.temperature
        if constrained:
            body["response_format"] = _response_format(request.tools, self._schema_format)
        elif request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        if request.on_delta is None:
            data = await post_json(
                self._client, "chat/completions", body, provider=PROVIDER, secrets=self._secrets
            )
        else:
            data = await stream_json(
                self._client,
                "chat/completions",
                {**body, "stream": True, "stream_options": {"include_usage": True}},
                provider=PROVIDER,
                secrets=self._secrets,
                is_end=_is_done,
                fold=_StreamedCompletion(body),
                sink=request.on_delta,
            )
        return self._reply(data, turn_index(request.messages), constrained=constrained)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _reply(self, data: dict[str, Any], turn: int, *, constrained: bool) -> ModelReply:
        try:
            choice = data["choices"][0]
            message = choice["message"]
            content = message.get("content")
            finish = choice.get("finish_reason")
            wire_calls = message.get("tool_calls") or []
            if content is not None and not isinstance(content, str):
                raise TypeError("content is not a string")
            calls = [_native_call(c, turn, i) for i, c in enumerate(wire_calls)]
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise bad_shape(
                PROVIDER, f"unexpected chat completion shape ({exc})", self._secrets
            ) from exc
        usage = _usage(data.get("usage"))
        stop = finish if isinstance(finish, str) else None
        if constrained and not calls and content is not None:
            envelope = parse_tool_envelope(content, call_id=f"call_{turn}_0")
            if envelope is not None:
                return ModelReply(text=None, tool_calls=[envelope], usage=usage, stop_reason=stop)
        # No envelope (e.g. cut off before the tool name): the text goes back as
        # plain text, and the agent loop treats "no tool call" as it always does.
        return ModelReply(text=content, tool_calls=calls, usage=usage, stop_reason=stop)


# ---------------------------------------------------------------------------
# Streaming: chunks folded back into the completion a non-streamed call returns
# ---------------------------------------------------------------------------


def _is_done(event: str, data: str) -> bool:
    return data.strip() == "[DONE]"


@dataclass
class _StreamedCall:
    id: str | None = None
    name: str | None = None
    arguments: list[str] | None = None
    """String fragments; None until one arrives."""
    arguments_object: object = None
    """Arguments some servers (Ollama) send whole, as a JSON value."""


@dataclass
class _StreamedCompletion:
    """Folds ``chat.completion.chunk`` objects into a ``chat.completion`` body.

    A :class:`~activities.models._http.StreamFold`: ``add`` returns a chunk's
    fragments as deltas; ``result`` returns the body that a non-streamed call for
    the same reply would have returned, so the one
    :meth:`OpenAICompatProvider._reply` reads both. ``request`` is the request body
    (for the usage estimate). Tool calls are keyed by the chunk's ``index`` and
    kept in order of first appearance (the delta ``index`` is that position, the
    same as in ``ModelReply.tool_calls``).
    """

    request: dict[str, Any]
    content: list[str] | None = None
    calls: dict[int, _StreamedCall] = field(default_factory=dict)
    finish_reason: object = None
    usage: dict[str, Any] | None = None
    token_chunks: int = 0
    """Chunks that carried generated output: the output-token estimate when the
    server reports no usage (llama-cpp-python streams one chunk per token)."""

    def add(self, event: str, chunk: dict[str, Any]) -> list[Delta]:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            # The final chunk (OpenAI, vLLM, llama-server), or the last choice
            # chunk (Ollama); the last one wins.
            self.usage = usage
        choices = chunk.get("choices") or []
        if not choices:
            return []
        choice = choices[0]
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        deltas: list[Delta] = []
        content = delta.get("content")
        if content is not None:
            if not isinstance(content, str):
                raise TypeError("content is not a string")
            self.content = self.content or []
            self.content.append(content)
            if content:
                deltas.append(Delta(kind="text", text=content))
        wire_calls = delta.get("tool_calls") or []
        for wire in wire_calls:
            deltas += self._add_call(wire)
        if content is not None or wire_calls:
            self.token_chunks += 1
        return deltas

    def _add_call(self, wire: dict[str, Any]) -> list[Delta]:
        function = wire.get("function") or {}
        call_id, name = wire.get("id"), function.get("name")
        key = wire.get("index")
        if not isinstance(key, int):
            # No index (some servers send whole calls): a fragment that names a call
            # or carries an id starts a new one, any other continues the last one.
            last = next(reversed(self.calls), -1)
            key = last + 1 if call_id or name or last < 0 else last
        call = self.calls.setdefault(key, _StreamedCall())
        position = list(self.calls).index(key)
        if isinstance(call_id, str) and call_id and call.id is None:
            call.id = call_id
        named = None
        if isinstance(name, str) and name and call.name is None:
            call.name = named = name
        arguments = function.get("arguments")
        text = ""
        if isinstance(arguments, str):
            call.arguments = call.arguments or []
            call.arguments.append(arguments)
            text = arguments
        elif arguments is not None:
            call.arguments_object = arguments
            text = json.dumps(arguments)
        if not text and named is None:
            return []
        return [Delta(kind="tool_call", text=text, index=position, name=named)]

    def result(self) -> dict[str, Any]:
        """The ``chat.completion`` body."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if self.content is None else "".join(self.content),
        }
        if self.calls:
            message["tool_calls"] = [_wire_call(call) for call in self.calls.values()]
        usage = self.usage
        if usage is None:
            usage = {
                "prompt_tokens": _estimated_prompt_tokens(self.request),
                "completion_tokens": self.token_chunks,
            }
        return {
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": usage,
        }


def _wire_call(call: _StreamedCall) -> dict[str, Any]:
    function: dict[str, Any] = {
        "arguments": call.arguments_object if call.arguments is None else "".join(call.arguments)
    }
    if call.name is not None:  # else _reply reports the unnamed call as a bad shape
        function["name"] = call.name
    return {"id": call.id, "type": "function", "function": function}


def _estimated_prompt_tokens(body: dict[str, Any]) -> int:
    """About how many tokens the prompt took: one per four characters of its JSON.

    Only for servers that report no usage in streams at all (llama-cpp-python's
    server, the embedded model's, drops it): zeros would let a run slip past its
    token budget. Against SmolLM2's real counts, the JSON of the messages (and of
    native tool definitions) over four errs high by a few percent for prompts of
    a hundred tokens or more; tiny prompts come out a few tokens short.
    """
    prompt = [body.get("messages"), *([body["tools"]] if body.get("tools") else [])]
    return -(-len(json.dumps(prompt)) // 4)


# ---------------------------------------------------------------------------
# Wire format (pure functions: unit-testable without a server)
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


def grammar_schema(schema: object, *, root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A copy of a tool's parameter schema that grammar compilers handle safely.

    Keeps only structural keywords (type, properties, required, items, enum,
    const, anyOf/oneOf/allOf) and small length bounds; drops descriptions,
    defaults, formats, numeric ranges and patterns other than the few known to
    compile (``activities.tools.GRAMMAR_SAFE_PATTERNS``; unsupported pattern syntax
    makes llama.cpp fail the request; the validator checks them anyway); inlines
    local ``$ref``s, because each tool's schema ends up nested inside the
    envelope where its ``#/$defs/...`` would no longer resolve.
    """
    if not isinstance(schema, dict):
        return schema
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve_ref(root, ref) if depth < _MAX_REF_DEPTH else None
        return {} if target is None else grammar_schema(target, root=root, depth=depth + 1)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {
                name: grammar_schema(sub, root=root, depth=depth) for name, sub in value.items()
            }
        elif key in ("items", "additionalProperties"):
            out[key] = grammar_schema(value, root=root, depth=depth)
        elif key in _COMBINATORS and isinstance(value, list):
            out[key] = [grammar_schema(sub, root=root, depth=depth) for sub in value]
        elif (
            key in _STRUCTURAL
            or _small_bound(key, value)
            or (key == "pattern" and value in GRAMMAR_SAFE_PATTERNS)
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
                "arguments": grammar_schema(tool.parameters) or {"type": "object"},
            },
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def _response_format(tools: list[ToolSchema], schema_format: SchemaFormat) -> dict[str, Any]:
    schema = tool_call_schema(tools)
    if schema_format == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema}}
    return {"type": "json_object", "schema": schema}


def _envelope_text(call: RawToolCall) -> str:
    """How a past tool call looks to a constrained model: the JSON it emitted."""
    return f'{{"tool": {json.dumps(call.name)}, "arguments": {call.arguments}}}'


def wire_messages(
    messages: list[Message], tools: list[ToolSchema], *, constrained: bool
) -> list[dict[str, Any]]:
    """Convert conversation messages to Chat Completions messages.

    Native mode uses ``tool_calls`` / ``tool_call_id``. Constrained mode has no
    native tool protocol, so it replays past calls as the JSON the model wrote and
    tool results as user messages, and puts the tool catalogue in the system prompt.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            if constrained:
                text = "\n".join(_envelope_text(c) for c in m.tool_calls)
                out.append({"role": "assistant", "content": text})
            else:
                out.append(
                    {
                        "role": "assistant",
                        "content": m.content,
                        "tool_calls": [
                            {
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.arguments},
                            }
                            for c in m.tool_calls
                        ],
                    }
                )
        elif m.role == "tool":
            if constrained:
                label = m.name or m.tool_call_id or "tool"
                out.append({"role": "user", "content": f"Result of {label}:\n{m.content or ''}"})
            else:
                out.append(
                    {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content or ""}
                )
        else:
            out.append({"role": m.role, "content": m.content or ""})
    if constrained:
        catalogue = tools_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{catalogue}"}
        else:
            out.insert(0, {"role": "system", "content": catalogue})
    return out


def _native_call(wire: dict[str, Any], turn: int, index: int) -> RawToolCall:
    function = wire["function"]
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        # Some servers (Ollama) send an object; anything else is kept as JSON text.
        arguments = json.dumps(arguments if arguments is not None else {})
    call_id = wire.get("id")
    return RawToolCall(
        id=call_id if isinstance(call_id, str) and call_id else f"call_{turn}_{index}",
        name=str(function["name"]),
        arguments=arguments,
    )


def _usage(raw: object) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    return Usage(
        input_tokens=prompt if isinstance(prompt, int) else 0,
        output_tokens=completion if isinstance(completion, int) else 0,
    )


# ---------------------------------------------------------------------------
# Reading the constrained envelope without re-serialising the arguments
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
