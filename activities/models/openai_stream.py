"""Streamed Chat Completions: chunks folded back into the completion a plain call returns.

:class:`StreamedCompletion` is the :class:`~activities.models._http.StreamFold` of
:class:`~activities.models.openai_compat.OpenAICompatProvider`. It hands each
``chat.completion.chunk``'s fragments on as deltas and, at the end, returns
the ``chat.completion`` body a non-streamed call for the same reply would have
returned.

Design (why it looks like this): the provider reads a streamed and a plain reply
with one and the same ``_reply``, so whatever the servers disagree on (OpenAI,
vLLM, Ollama, llama.cpp each stream a little differently: calls without an
``index``, arguments sent whole as an object, usage in the last chunk or not at
all) is absorbed here, and the reply a run records cannot depend on whether it was
streamed. Deltas are a live preview only; nothing here parses or validates them.

A ``[DONE]`` without a finish reason is an incomplete reply, not a short one:
llama-cpp-python ends a stream that way when a newer request interrupts it (a role
chunk, maybe some content, then ``[DONE]``). :meth:`StreamedCompletion.result`
raises :class:`~activities.models.errors.IncompleteStreamError` for it, so the
call is retried instead of recording an empty or truncated reply.

This module must not do I/O (``activities.models._http.stream_json`` reads the
stream) and must not classify errors: a chunk of the wrong shape raises
``KeyError``/``TypeError`` & co., which ``stream_json`` classifies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from activities.models.errors import IncompleteStreamError
from agentrun.contracts import Delta

__all__ = ["ESTIMATED", "StreamedCompletion", "is_done"]

ESTIMATED = "agentrun_estimated"
"""Set (true) in the folded body's ``usage`` when its counts are estimates."""
CHARS_PER_TOKEN = 4
"""Characters per token of prompt text, as SmolLM2's tokenizer (and OpenAI's) count
English and JSON (calibrated in tests/test_models_native_server.py)."""
TOKENS_PER_MESSAGE = 4
"""Each message's frame in the chat template (``<|im_start|>role\n … <|im_end|>\n``)."""


def is_done(event: str, data: str) -> bool:
    """The terminator of a Chat Completions stream: ``data: [DONE]``."""
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
class StreamedCompletion:
    """Folds ``chat.completion.chunk`` objects into a ``chat.completion`` body.

    A :class:`~activities.models._http.StreamFold`: ``add`` returns a chunk's
    fragments as deltas; ``result`` returns the body that a non-streamed call for
    the same reply would have returned, so the provider's one ``_reply`` reads
    both. ``request`` is the request body (for the usage estimate). Tool calls are
    keyed by the chunk's ``index`` and kept in order of first appearance (the delta
    ``index`` is that position, the same as in ``ModelReply.tool_calls``).
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
        """The ``chat.completion`` body; an incomplete stream raises (see the module)."""
        if self.finish_reason is None:
            raise IncompleteStreamError(
                "[DONE] arrived before any chunk gave a finish_reason "
                f"({self.token_chunks} chunks of output); the server may have abandoned "
                "this stream for a newer request"
            )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if self.content is None else "".join(self.content),
        }
        if self.calls:
            message["tool_calls"] = [_wire_call(call) for call in self.calls.values()]
        usage = self.usage
        if usage is None:
            usage = {
                "prompt_tokens": estimated_prompt_tokens(self.request),
                "completion_tokens": self.token_chunks,
                ESTIMATED: True,
            }
        return {
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": usage,
        }


def _wire_call(call: _StreamedCall) -> dict[str, Any]:
    function: dict[str, Any] = {
        "arguments": call.arguments_object if call.arguments is None else "".join(call.arguments)
    }
    if call.name is not None:  # else the provider reports the unnamed call as a bad shape
        function["name"] = call.name
    return {"id": call.id, "type": "function", "function": function}


def estimated_prompt_tokens(body: dict[str, Any]) -> int:
    """About how many tokens the prompt of a Chat Completions ``body`` takes.

    Only for servers that report no usage in streams at all (llama-cpp-python's
    server, the embedded model's, drops it): zeros would let a run slip past its
    token budget. What the model reads is counted, not the request's JSON (whose
    quotes, keys and escapes made the old estimate 2.9 times the real count):
    each message's text and its calls' names and arguments, plus a frame per
    message, and each native tool's name, description and compact parameter
    schema. Calibrated against SmolLM2's real counts (within a factor of 1.5, in
    tests/test_models_native_server.py); chat templates that add instructions of
    their own for tools are counted short by those.
    """
    chars = 0
    messages = body.get("messages") or []
    for message in messages:
        chars += len(_text(message.get("content")))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            chars += len(_text(function.get("name"))) + len(_text(function.get("arguments")))
    for tool in body.get("tools") or []:
        function = tool.get("function") or {}
        chars += len(_text(function.get("name"))) + len(_text(function.get("description")))
        chars += len(json.dumps(function.get("parameters"), separators=(",", ":")))
    return -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
