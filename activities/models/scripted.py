"""The scripted provider: the deterministic LLM test double.

It answers turn N with ``request.script[N]``, N being the number of assistant
messages already in ``request.messages``. It keeps no state, so a retried or
replayed activity (after a worker crash, say) gets exactly the same answer; and
its simulated failures are built by the same helper that classifies real provider
errors, so the workflow cannot tell a scripted 503 from a real one.

When the request asks for deltas (``on_delta``), it streams the reply in word-sized
text chunks and 16-character argument chunks, spreading ``delay_seconds`` over
them, so tests see deltas arrive live; a failing attempt first streams
``fail_after_chunks`` chunks, the partial output that clients must drop.

It must never call anything outside the process: it is what workflow tests use
instead of a model.
"""

from __future__ import annotations

import asyncio
import json
import re

from activities.models.base import ModelReply, ModelRequest, turn_index
from activities.models.errors import config_error, error_for_status
from agentrun.contracts import Delta, DeltaSink, RawToolCall, ScriptedTurn, Usage

__all__ = ["ScriptedProvider"]

PROVIDER = "scripted"
ARGUMENT_CHUNK = 16
_WORDS = re.compile(r"\s*\S+\s*|\s+")


class ScriptedProvider:
    """Replays ``ModelRequest.script``; see the module docstring.

    >>> reply = await ScriptedProvider().complete(request)  # doctest: +SKIP
    """

    async def complete(self, request: ModelRequest) -> ModelReply:
        if request.script is None:
            raise config_error(PROVIDER, "no script: a `scripted` model needs ModelRef.script")
        n = turn_index(request.messages)
        if n >= len(request.script):
            raise config_error(
                PROVIDER,
                f"script exhausted at turn {n} (the script has {len(request.script)} turns); "
                "add turns or make the last one call `finish`",
            )
        turn = request.script[n]
        reply = _reply(n, turn)
        failing = request.attempt <= turn.fail_attempts
        if request.on_delta is not None:
            chunks = _chunks(reply)
            pause = turn.delay_seconds / max(len(chunks), 1)
            if failing:
                chunks = chunks[: turn.fail_after_chunks]
            await _stream(chunks, request.on_delta, pause)
        elif turn.delay_seconds and not failing:
            await asyncio.sleep(turn.delay_seconds)
        if failing:
            raise error_for_status(
                turn.fail_status,
                provider=PROVIDER,
                excerpt=f"simulated failure (attempt {request.attempt} of "
                f"{turn.fail_attempts} failing attempts at turn {n})",
            )
        return reply

    async def aclose(self) -> None:
        """Nothing to close; present to satisfy ``ModelProvider``."""


def _chunks(reply: ModelReply) -> list[Delta]:
    chunks = [Delta("text", word) for word in _WORDS.findall(reply.text or "")]
    for i, call in enumerate(reply.tool_calls):
        pieces = [
            call.arguments[k : k + ARGUMENT_CHUNK]
            for k in range(0, len(call.arguments), ARGUMENT_CHUNK)
        ] or [""]
        chunks += [
            Delta("tool_call", piece, index=i, name=call.name if k == 0 else None)
            for k, piece in enumerate(pieces)
        ]
    return chunks


async def _stream(chunks: list[Delta], sink: DeltaSink, pause: float) -> None:
    """Hand ``chunks`` to ``sink`` one by one, ``pause`` seconds apart (at least one pause)."""
    if not chunks:
        await asyncio.sleep(pause)
    for chunk in chunks:
        if pause:
            await asyncio.sleep(pause)
        sink(chunk)


def _reply(n: int, turn: ScriptedTurn) -> ModelReply:
    calls = [
        RawToolCall(
            id=f"call_{n}_{i}",
            name=call.name,
            # A str is passed through untouched to simulate a model emitting
            # malformed arguments; validation happens after the activity.
            arguments=call.arguments
            if isinstance(call.arguments, str)
            else json.dumps(call.arguments, ensure_ascii=False),
        )
        for i, call in enumerate(turn.tool_calls)
    ]
    return ModelReply(
        text=turn.content,
        tool_calls=calls,
        usage=Usage(input_tokens=turn.input_tokens, output_tokens=turn.output_tokens),
        stop_reason="tool_calls" if calls else "stop",
    )
