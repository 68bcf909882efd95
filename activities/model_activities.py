"""The `call_model` activity: one model call per loop step.

Input and output are small: the conversation arrives as a head digest plus the
digests of messages to append, and the reply leaves as a new head digest plus
tool calls whose arguments are stored by reference. The provider is chosen by
the run's `ModelRef`; it classifies its own errors (see `activities.models.base`),
and Temporal does the retrying. With a delta log, the reply is streamed and its
fragments are logged for SSE followers as they arrive (see `store.delta_log`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

from pydantic import TypeAdapter
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.models.base import ModelProvider, ModelRequest
from activities.tools import tool_schemas
from agentrun.contracts import (
    Message,
    ModelCallInput,
    ModelCallOutput,
    RawToolCall,
    ScriptedTurn,
    ToolCall,
)
from store.artifacts import ArtifactStore, get_bytes
from store.conversation import ConversationStore
from store.delta_log import DeltaLog

HEARTBEAT_EVERY = 2.0
PREVIEW_CHARS = 300
TEXT_CHARS = 16_000
_TOOL_NAME = re.compile(r"[^A-Za-z0-9_\-]")
_SCRIPT = TypeAdapter(list[ScriptedTurn])


@contextlib.asynccontextmanager
async def heartbeating(every: float = HEARTBEAT_EVERY) -> AsyncIterator[None]:
    """Heartbeat in the background so a dead worker is noticed within the timeout."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class ModelActivities:
    def __init__(
        self, router: ModelProvider, store: ArtifactStore, deltas: DeltaLog | None = None
    ) -> None:
        self._router = router
        self._store = store
        self._deltas = deltas
        self._conversations = ConversationStore(store)
        self._scripts: dict[str, list[ScriptedTurn]] = {}

    @activity.defn(name="call_model")
    async def call_model(self, inp: ModelCallInput) -> ModelCallOutput:
        attempt = activity.info().attempt
        conv = self._conversations
        new_digests = list(inp.append)
        for text in inp.user_messages:
            new_digests.append(
                await asyncio.to_thread(conv.put_message, Message(role="user", content=text))
            )
        history = await asyncio.to_thread(conv.load, inp.conversation_head)
        appended = [await asyncio.to_thread(conv.get_message, d) for d in new_digests]
        request = ModelRequest(
            model=inp.model,
            messages=history + appended,
            tools=tool_schemas(inp.tools),
            script=await self._script(inp.script_digest),
            attempt=attempt,
        )
        async with heartbeating():
            if self._deltas is None:
                reply = await self._router.complete(request)
            else:
                async with self._deltas.writer(
                    inp.tenant_id, inp.run_id, inp.step, attempt
                ) as sink:
                    request.on_delta = sink
                    reply = await self._router.complete(request)

        calls: list[ToolCall] = []
        stored_calls: list[RawToolCall] = []
        for index, raw in enumerate(reply.tool_calls):
            call_id = f"s{inp.step}-c{index}"
            name = _TOOL_NAME.sub("_", raw.name)[:64] or "unnamed"
            args_digest = await asyncio.to_thread(self._store.put, raw.arguments.encode())
            calls.append(
                ToolCall(
                    id=call_id,
                    name=name,
                    arguments_digest=args_digest,
                    preview=raw.arguments[:PREVIEW_CHARS],
                )
            )
            # Our deterministic ids replace the provider's, so tool messages match them.
            stored_calls.append(RawToolCall(id=call_id, name=name, arguments=raw.arguments))
        assistant = Message(role="assistant", content=reply.text, tool_calls=stored_calls)
        assistant_digest = await asyncio.to_thread(conv.put_message, assistant)
        head = await asyncio.to_thread(
            conv.append, inp.conversation_head, [*new_digests, assistant_digest]
        )
        return ModelCallOutput(
            conversation_head=head,
            text_preview=(reply.text or "")[:TEXT_CHARS],
            tool_calls=calls,
            usage=reply.usage,
            stop_reason=reply.stop_reason,
            attempt=attempt,
        )

    async def _script(self, digest: str | None) -> list[ScriptedTurn] | None:
        if digest is None:
            return None
        if digest not in self._scripts:
            raw = await asyncio.to_thread(get_bytes, self._store, digest)
            try:
                turns = _SCRIPT.validate_json(raw)
            except ValueError as exc:
                raise ApplicationError(
                    f"stored model script is invalid: {exc}",
                    type="ModelConfigError",
                    non_retryable=True,
                ) from None
            self._scripts[digest] = turns
        return self._scripts[digest]
