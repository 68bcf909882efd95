"""Anthropic Messages API (``POST /v1/messages``).

Differences from Chat Completions that this module absorbs:

* the system prompt is a top-level ``system`` field, not a message;
* tool calls are ``tool_use`` content blocks whose ``input`` is a JSON *object*,
  and results are ``tool_result`` blocks inside the next *user* message;
* consecutive messages of one role are merged (all results for one assistant turn
  must arrive in the single user message that follows it);
* ``max_tokens`` is required; auth is ``x-api-key`` plus ``anthropic-version``;
* ``ModelRef.tool_choice`` becomes ``tool_choice: {"type": "auto" | "any" | "none"}``
  (``required`` is Anthropic's ``any``), sent only with tools (``None`` is ``auto``);
* an assistant turn that only calls tools has no text block (Anthropic rejects
  empty ones), where Chat Completions sends ``"content": ""``.

Errors are classified by the shared helper (529 "overloaded" is retryable). The
module must not retry (Temporal does) and must not log or quote the API key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from activities.models._http import bad_shape, make_client, post_json, stream_json
from activities.models.base import ModelReply, ModelRequest, ToolSchema
from activities.models.errors import config_error
from agentrun.contracts import Delta, Message, RawToolCall, Usage

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider", "wire_request"]

PROVIDER = "anthropic"
ANTHROPIC_VERSION = "2023-06-01"
"""The API version header; the Messages API shape used here is stable under it."""
TOOL_CHOICE = {"auto": "auto", "required": "any", "none": "none"}
"""``ModelRef.tool_choice`` → the Messages API's ``tool_choice.type``."""


class AnthropicProvider:
    """A ``ModelProvider`` for Anthropic's Messages API.

    >>> provider = AnthropicProvider(api_key=key)  # doctest: +SKIP
    >>> reply = await provider.complete(request)  # doctest: +SKIP

    ``transport`` is for tests (Anthropic cannot be reached from CI).
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = "https://api.anthropic.com",
        timeout: float = 300.0,
        default_model: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}
        self._client = make_client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._secrets = (api_key,)
        self._default_model = default_model

    async def complete(self, request: ModelRequest) -> ModelReply:
        model = request.model.name or self._default_model
        if not model:
            raise config_error(
                PROVIDER, "no model name: set ModelRef.name (e.g. claude-sonnet-4-5)"
            )
        body = wire_request(request.messages, request.tools)
        body["model"] = model
        body["max_tokens"] = request.model.max_output_tokens
        if request.tools:
            body["tool_choice"] = {"type": TOOL_CHOICE[request.model.tool_choice or "auto"]}
        if request.model.temperature is not None:
            # Anthropic accepts 0..1; ModelRef allows up to 2 (OpenAI's range).
            body["temperature"] = min(request.model.temperature, 1.0)
        if request.on_delta is None:
            data = await post_json(
                self._client, "v1/messages", body, provider=PROVIDER, secrets=self._secrets
            )
        else:
            data = await stream_json(
                self._client,
                "v1/messages",
                {**body, "stream": True},
                provider=PROVIDER,
                secrets=self._secrets,
                is_end=_is_message_stop,
                fold=_StreamedMessage(),
                sink=request.on_delta,
            )
        return _reply(data, self._secrets)

    async def aclose(self) -> None:
        await self._client.aclose()


def _reply(data: dict[str, Any], secrets: Sequence[str | None]) -> ModelReply:
    """A Messages response (non-streamed, or folded from a stream) as a ``ModelReply``."""
    try:
        blocks = data["content"]
        texts = [b["text"] for b in blocks if b.get("type") == "text"]
        calls = [
            RawToolCall(id=str(b["id"]), name=str(b["name"]), arguments=_arguments(b))
            for b in blocks
            if b.get("type") == "tool_use"
        ]
    except (KeyError, TypeError, AttributeError) as exc:
        raise bad_shape(PROVIDER, f"unexpected message shape ({exc})", secrets) from exc
    stop = data.get("stop_reason")
    return ModelReply(
        text="".join(texts) if texts else None,
        tool_calls=calls,
        usage=_usage(data.get("usage")),
        stop_reason=stop if isinstance(stop, str) else None,
    )


_RAW_INPUT = "agentrun_raw_input"
"""Set on a streamed ``tool_use`` block whose ``partial_json`` did not parse."""


def _arguments(block: dict[str, Any]) -> str:
    raw = block.get(_RAW_INPUT)
    if isinstance(raw, str):
        return raw  # passed on as the model wrote it: the validator rejects it
    # Anthropic returns parsed input; this is its canonical text.
    return json.dumps(block.get("input", {}), ensure_ascii=False)


def _is_message_stop(event: str, data: str) -> bool:
    return event == "message_stop"


@dataclass
class _StreamedMessage:
    """Folds Messages stream events into the body a non-streamed call returns.

    A :class:`~activities.models._http.StreamFold`. Events: ``message_start``
    (usage so far), ``content_block_start`` (a text or ``tool_use`` block),
    ``content_block_delta`` (``text_delta`` or ``input_json_delta``),
    ``content_block_stop``, ``message_delta`` (stop reason, cumulative usage),
    ``ping``; unknown events and delta types (thinking, say) are ignored, as
    Anthropic asks. ``message_stop`` and ``error`` are handled by
    :func:`~activities.models._http.stream_json`. A tool call's delta ``index``
    is its position among the ``tool_use`` blocks, as in ``ModelReply.tool_calls``.
    """

    blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    json_parts: dict[int, list[str]] = field(default_factory=dict)
    """``partial_json`` fragments per content-block index of a ``tool_use`` block."""
    tool_positions: dict[int, int] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    stop_reason: object = None

    def add(self, event: str, data: dict[str, Any]) -> list[Delta]:
        kind = data.get("type") or event
        if kind == "message_start":
            self._add_usage(data["message"].get("usage"))
        elif kind == "message_delta":
            self.stop_reason = data["delta"].get("stop_reason", self.stop_reason)
            self._add_usage(data.get("usage"))
        elif kind == "content_block_start":
            return self._start(int(data["index"]), dict(data["content_block"]))
        elif kind == "content_block_delta":
            return self._delta(int(data["index"]), data["delta"])
        return []

    def _add_usage(self, usage: object) -> None:
        if isinstance(usage, dict):  # message_delta's counts are cumulative
            self.usage.update({k: v for k, v in usage.items() if isinstance(v, int)})

    def _start(self, index: int, block: dict[str, Any]) -> list[Delta]:
        self.blocks[index] = block
        if block.get("type") == "tool_use":
            position = self.tool_positions[index] = len(self.tool_positions)
            self.json_parts[index] = []
            return [Delta(kind="tool_call", text="", index=position, name=str(block["name"]))]
        text = block.get("text")
        if block.get("type") == "text" and isinstance(text, str) and text:
            return [Delta(kind="text", text=text)]
        return []

    def _delta(self, index: int, delta: dict[str, Any]) -> list[Delta]:
        block, kind = self.blocks[index], delta.get("type")
        if kind == "text_delta":
            text = delta["text"]
            if not isinstance(text, str):
                raise TypeError("text_delta text is not a string")
            block["text"] = str(block.get("text") or "") + text
            return [Delta(kind="text", text=text)] if text else []
        if kind == "input_json_delta":
            part = delta["partial_json"]
            if not isinstance(part, str):
                raise TypeError("partial_json is not a string")
            self.json_parts[index].append(part)
            position = self.tool_positions[index]
            return [Delta(kind="tool_call", text=part, index=position)] if part else []
        return []

    def result(self) -> dict[str, Any]:
        """The Messages response body the stream amounts to."""
        for index, parts in self.json_parts.items():
            raw = "".join(parts)
            if not raw.strip():
                continue  # no arguments streamed: the start block's input (``{}``)
            try:
                self.blocks[index]["input"] = json.loads(raw)
            except ValueError:
                self.blocks[index][_RAW_INPUT] = raw
        return {
            "content": [self.blocks[index] for index in sorted(self.blocks)],
            "stop_reason": self.stop_reason,
            "usage": self.usage,
        }


def _input_object(arguments: str) -> dict[str, Any]:
    """A past call's ``input`` must be an object; malformed raw arguments are wrapped.

    Only calls produced by another provider (or the scripted double) can be
    malformed; wrapping keeps the history truthful without breaking the request.
    """
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"raw_arguments": arguments}
    return value if isinstance(value, dict) else {"raw_arguments": arguments}


def wire_request(messages: list[Message], tools: list[ToolSchema]) -> dict[str, Any]:
    """``system``, ``messages`` (merged by role) and ``tools`` for a Messages request."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for m in messages:
        if m.role == "system":
            if m.content:
                system.append(m.content)
        elif m.role == "tool":
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": m.tool_call_id or "",
                        "content": m.content or "",
                    }
                ],
            )
        else:
            # Anthropic rejects empty text blocks, so they are left out.
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": m.content}] if m.content else []
            )
            if m.role == "assistant":
                blocks += [
                    {
                        "type": "tool_use",
                        "id": c.id,
                        "name": c.name,
                        "input": _input_object(c.arguments),
                    }
                    for c in m.tool_calls
                ]
            add(m.role, blocks)
    body: dict[str, Any] = {"messages": turns}
    if system:
        body["system"] = "\n\n".join(system)
    if tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in tools
        ]
    return body


def _usage(raw: object) -> Usage:
    """Input tokens include prompt-cache reads and writes: all of them count toward budgets."""
    if not isinstance(raw, dict):
        return Usage()

    def count(key: str) -> int:
        value = raw.get(key)
        return value if isinstance(value, int) else 0

    return Usage(
        input_tokens=count("input_tokens")
        + count("cache_creation_input_tokens")
        + count("cache_read_input_tokens"),
        output_tokens=count("output_tokens"),
    )
