"""OpenAI-compatible Chat Completions: OpenAI, vLLM, Ollama, llama.cpp servers.

Two ways to get tool calls out of a model:

* **native** (``json_schema_tools=False``): send ``tools`` (their schemas cleaned
  as constrained mode cleans them: grammar-based servers compile them, see
  :func:`~activities.models.constrained.native_tools`) and ``tool_choice``, and
  read ``message.tool_calls``. Right for OpenAI and for servers whose chat template
  implements tool calling (llama-cpp-python's ``chatml-function-calling``).
* **schema-constrained** (``json_schema_tools=True``, the default, made for small
  local models such as the embedded SmolLM2-135M): describe the tools in the
  system prompt and send a ``response_format`` whose JSON schema admits exactly
  one object ``{"tool": <name>, "arguments": {...}}``, so grammar-constrained
  decoding (llama.cpp, vLLM) *cannot* emit anything else and even a tiny model
  always yields a parseable call (see :mod:`activities.models.constrained`). The
  reply becomes one ``RawToolCall`` with the deterministic id ``call_<turn>_0``.

``ModelRef.tool_choice`` (resolved by the registry; ``None`` means ``auto``):
native mode sends ``"auto"`` explicitly (llama-cpp-python treats a missing
``tool_choice`` as ``none``), ``"required"`` (as a named choice when only one tool
is offered: the same meaning, and servers without ``required`` accept it), and for
``"none"`` offers no tools. Constrained mode's schema already requires a call; for
``"none"`` it sends neither the schema nor the tool catalogue.

Either way the arguments string is kept as the model produced it: it is hostile
input, parsed and validated after the activity, never here (constrained mode
makes one lexical repair, described in :mod:`activities.models.constrained`).
Streamed replies are folded back into the body a plain call returns
(:mod:`activities.models.openai_stream`), so one ``_reply`` reads both.

This module must not retry (Temporal does) and must not log or quote the API key.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from activities.models._http import bad_shape, make_client, post_json, stream_json
from activities.models.base import ModelReply, ModelRequest, ToolSchema, turn_index
from activities.models.constrained import (
    SchemaFormat,
    envelope_text,
    native_tools,
    parse_tool_envelope,
    response_format,
    tools_prompt,
)
from activities.models.errors import config_error
from activities.models.openai_stream import ESTIMATED, StreamedCompletion, is_done
from agentrun.contracts import Message, RawToolCall, Usage

__all__ = ["OpenAICompatProvider", "wire_messages"]

PROVIDER = "openai"


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
        choice = request.model.tool_choice or "auto"
        tools = request.tools if choice != "none" else []
        constrained = self._constrained and bool(request.tools)
        body: dict[str, Any] = {
            "model": model,
            "messages": wire_messages(request.messages, tools, constrained=constrained),
            "max_tokens": request.model.max_output_tokens,
            "stream": False,
        }
        if request.model.temperature is not None:
            body["temperature"] = request.model.temperature
        if constrained and tools:
            body["response_format"] = response_format(tools, self._schema_format)
        elif tools:
            body["tools"] = native_tools(tools)
            body["tool_choice"] = _tool_choice(choice, tools)
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
                is_end=is_done,
                fold=StreamedCompletion(body),
                sink=request.on_delta,
            )
        # With tool_choice "none" an envelope-shaped text is text, not a call.
        enveloped = constrained and bool(tools)
        return self._reply(data, turn_index(request.messages), constrained=enveloped)

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
# Wire format (pure functions: unit-testable without a server)
# ---------------------------------------------------------------------------


def wire_messages(
    messages: list[Message], tools: list[ToolSchema], *, constrained: bool
) -> list[dict[str, Any]]:
    """Convert conversation messages to Chat Completions messages.

    Native mode uses ``tool_calls`` / ``tool_call_id``, with ``"content": ""`` (not
    null) beside the calls: llama-cpp-python answers 500 to a null content. Constrained
    mode has no native tool protocol, so it replays past calls as the JSON the model
    wrote and tool results as user messages, and puts the catalogue of ``tools`` (if
    any) in the system prompt.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            if constrained:
                text = "\n".join(envelope_text(c) for c in m.tool_calls)
                out.append({"role": "assistant", "content": text})
            else:
                out.append(
                    {
                        "role": "assistant",
                        "content": m.content or "",
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
    if constrained and tools:
        catalogue = tools_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{catalogue}"}
        else:
            out.insert(0, {"role": "system", "content": catalogue})
    return out


def _tool_choice(choice: str, tools: list[ToolSchema]) -> str | dict[str, Any]:
    if choice == "required" and len(tools) == 1:
        return {"type": "function", "function": {"name": tools[0].name}}
    return choice


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
        estimated=raw.get(ESTIMATED) is True,
    )
