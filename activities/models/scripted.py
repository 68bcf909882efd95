"""The scripted provider: the deterministic LLM test double.

It answers turn N with ``request.script[N]``, N being the number of assistant
messages already in ``request.messages``. It keeps no state, so a retried or
replayed activity (after a worker crash, say) gets exactly the same answer; and
its simulated failures are built by the same helper that classifies real provider
errors, so the workflow cannot tell a scripted 503 from a real one.

It must never call anything outside the process: it is what workflow tests use
instead of a model.
"""

from __future__ import annotations

import asyncio
import json

from activities.models.base import ModelReply, ModelRequest, turn_index
from activities.models.errors import config_error, error_for_status
from agentrun.contracts import RawToolCall, ScriptedTurn, Usage

__all__ = ["ScriptedProvider"]

PROVIDER = "scripted"


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
        if request.attempt <= turn.fail_attempts:
            raise error_for_status(
                turn.fail_status,
                provider=PROVIDER,
                excerpt=f"simulated failure (attempt {request.attempt} of "
                f"{turn.fail_attempts} failing attempts at turn {n})",
            )
        if turn.delay_seconds:
            await asyncio.sleep(turn.delay_seconds)
        return _reply(n, turn)

    async def aclose(self) -> None:
        """Nothing to close; present to satisfy ``ModelProvider``."""


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
