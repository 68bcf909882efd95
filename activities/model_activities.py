"""The `call_model` activity: one model call per loop step.

Input and output are small: the conversation arrives as a head digest plus the
digests of messages to append, and the reply leaves as a new head digest plus
tool calls whose arguments are stored by reference. The provider is chosen by
the run's `ModelRef`; it classifies its own errors (see `activities.models.base`),
and Temporal does the retrying. With a delta log, the reply is streamed and its
fragments are logged for SSE followers as they arrive (see `store.delta_log`).

A reply may make at most the per-turn cap of tool calls (`activities.turn_cap`):
the calls beyond it never reach the workflow, and the conversation answers each
of them with a refusal the model reads on its next call.

The values of the run's granted secrets (`ModelCallInput.secrets`, names resolved by
`activities.secret_values`) are redacted from the reply, its tool calls, the
streamed deltas and any error before they leave (`agentrun.redaction`).

Every blob (the conversation, the script, tool arguments) is read and written
through the run's tenant's view of the store (`ModelCallInput.tenant_id`; tenant
prefixes: `store/artifacts.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Literal

from pydantic import TypeAdapter
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import heartbeating
from activities.models.base import ModelProvider, ModelReply, ModelRequest
from activities.secret_values import SecretValues, redacted_errors
from activities.tools import tool_schemas
from activities.turn_cap import refusal, tool_call_cap
from agentrun.config import DEFAULT_MAX_TOOL_CALLS_PER_TURN
from agentrun.contracts import (
    Delta,
    DeltaSink,
    Message,
    ModelCallInput,
    ModelCallOutput,
    RawToolCall,
    ScriptedTurn,
    ToolCall,
)
from agentrun.redaction import Redactor, StreamRedactor
from store.artifacts import TenantStores, get_bytes
from store.conversation import ConversationStore
from store.delta_log import DeltaStore
from telemetry.tracing import capturing_content, model_call_span, record_model_reply

PREVIEW_CHARS = 300
TEXT_CHARS = 16_000
_TOOL_NAME = re.compile(r"[^A-Za-z0-9_\-]")
_SCRIPT = TypeAdapter(list[ScriptedTurn])


class ModelActivities:
    def __init__(
        self,
        router: ModelProvider,
        store: TenantStores,
        deltas: DeltaStore | None = None,
        *,
        max_tool_calls_per_turn: int = DEFAULT_MAX_TOOL_CALLS_PER_TURN,
        secrets: SecretValues | None = None,
    ) -> None:
        self._router = router
        # Granted values, redacted from replies; without a store a run granted secrets fails.
        self._secrets = secrets or SecretValues(None)
        self._stores = store
        self._deltas = deltas
        self._max_tool_calls = max_tool_calls_per_turn
        self._conversations = ConversationStore(store)
        self._scripts: dict[tuple[str, str], list[ScriptedTurn]] = {}
        """Parsed scripts by (tenant, digest), like the conversation cache."""

    @activity.defn(name="call_model")
    async def call_model(self, inp: ModelCallInput) -> ModelCallOutput:
        # Heartbeats for the whole call: the conversation's blobs and a reply with many
        # tool calls take time to read and store, as the provider takes time to answer.
        async with heartbeating():
            # A model never holds a granted value legitimately; one it writes anyway (a
            # prompt injection's echo, a guess) is redacted from the reply, its tool
            # calls' arguments, the streamed deltas and errors, before any leaves.
            redactor = (
                await asyncio.to_thread(self._secrets.redactor, inp.tenant_id, inp.secrets)
                if inp.secrets
                else Redactor()  # nothing granted: no lookup, no thread hop
            )
            with redacted_errors(redactor):
                return await self._call_model(inp, redactor)

    async def _call_model(self, inp: ModelCallInput, redactor: Redactor) -> ModelCallOutput:
        attempt = activity.info().attempt
        conv, tenant = self._conversations, inp.tenant_id
        store = self._stores.for_tenant(tenant)
        # The store's reads and writes before and after the model call, each in one
        # thread hop: a hop per blob cost more than a cached read itself.
        new_digests, history, appended = await asyncio.to_thread(self._prompt, inp)
        request = ModelRequest(
            model=inp.model,
            messages=history + appended,
            tools=tool_schemas(inp.tools),
            script=await self._script(tenant, inp.script_digest),
            attempt=attempt,
        )
        reply = await self._complete(inp, request, redactor)
        reply_text = redactor.redact(reply.text) if reply.text else reply.text

        # Our deterministic ids replace the provider's, so tool messages match them.
        stored_calls = [
            RawToolCall(
                id=f"s{inp.step}-c{index}",
                name=_TOOL_NAME.sub("_", redactor.redact(raw.name))[:64] or "unnamed",
                arguments=redactor.redact(raw.arguments),
            )
            for index, raw in enumerate(reply.tool_calls)
        ]
        cap = tool_call_cap(inp.max_tool_calls, self._max_tool_calls)
        kept, refused = stored_calls[:cap], stored_calls[cap:]
        assistant = Message(role="assistant", content=reply_text, tool_calls=stored_calls)
        # The refused calls are answered here, right after the assistant message; the
        # kept calls' results follow with the next model call (in `append`).
        refusal_messages = [refusal(c, len(stored_calls), cap) for c in refused]

        def store_reply() -> tuple[list[str], str]:
            arguments = [store.put(raw.arguments.encode()) for raw in kept]
            replies = [assistant, *refusal_messages]
            digests = [conv.put_message(tenant, m) for m in replies]
            head = conv.append(
                tenant, inp.conversation_head, [*new_digests, *digests], [*appended, *replies]
            )
            return arguments, head

        arguments, head = await asyncio.to_thread(store_reply)
        calls = [
            ToolCall(
                id=raw.id,
                name=raw.name,
                arguments_digest=digest,
                preview=raw.arguments[:PREVIEW_CHARS],
            )
            for raw, digest in zip(kept, arguments, strict=True)
        ]
        return ModelCallOutput(
            conversation_head=head,
            text_preview=(reply_text or "")[:TEXT_CHARS],
            tool_calls=calls,
            usage=reply.usage,
            stop_reason=reply.stop_reason,
            attempt=attempt,
            refused_tool_calls=len(refused),
        )

    def _prompt(self, inp: ModelCallInput) -> tuple[list[str], list[Message], list[Message]]:
        """(digests of the messages this call appends, the conversation so far, those
        messages): the user's new messages stored, the rest read (mostly cached)."""
        conv, tenant = self._conversations, inp.tenant_id
        new_digests = list(inp.append)
        for text in inp.user_messages:
            new_digests.append(conv.put_message(tenant, Message(role="user", content=text)))
        history = conv.load(tenant, inp.conversation_head)
        return new_digests, history, [conv.get_message(tenant, d) for d in new_digests]

    async def _complete(
        self, inp: ModelCallInput, request: ModelRequest, redactor: Redactor
    ) -> ModelReply:
        """The provider's call, in its GenAI span (`telemetry.tracing`): model, usage,
        finish reason, cost; prompt and reply only with `AGENTRUN_TRACE_CONTENT`."""
        with model_call_span(
            provider=inp.model.provider,
            model=inp.model.name,
            run=inp,
            step=inp.step,
            attempt=request.attempt,
            max_tokens=inp.model.max_output_tokens,
            temperature=inp.model.temperature,
        ) as span:
            if self._deltas is None:
                reply = await self._router.complete(request)
            else:
                async with self._deltas.writer(
                    inp.tenant_id, inp.run_id, inp.step, request.attempt
                ) as sink:
                    redacting = _RedactingSink(sink, redactor)
                    request.on_delta = redacting
                    try:
                        reply = await self._router.complete(request)
                    finally:
                        redacting.flush()
            record_model_reply(
                span,
                model=inp.model.name,
                input_tokens=reply.usage.input_tokens,
                output_tokens=reply.usage.output_tokens,
                finish_reason=reply.stop_reason,
                estimated_usage=reply.usage.estimated,
                prompt=[{"role": m.role, "content": m.content} for m in request.messages]
                if capturing_content()
                else None,
                completion=reply.text,
                redactor=redactor,
            )
        return reply

    async def _script(self, tenant: str, digest: str | None) -> list[ScriptedTurn] | None:
        if digest is None:
            return None
        key = (tenant, digest)
        if key not in self._scripts:
            raw = await asyncio.to_thread(get_bytes, self._stores.for_tenant(tenant), digest)
            try:
                turns = _SCRIPT.validate_json(raw)
            except ValueError as exc:
                raise ApplicationError(
                    f"stored model script is invalid: {exc}",
                    type="ModelConfigError",
                    non_retryable=True,
                ) from None
            self._scripts[key] = turns
        return self._scripts[key]


class _RedactingSink:
    """Passes a reply's deltas on with granted values redacted, one stream per part
    (the text, each tool call's arguments), holding back what could begin a value."""

    def __init__(self, sink: DeltaSink, redactor: Redactor) -> None:
        self._sink = sink
        self._redactor = redactor
        self._streams: dict[tuple[Literal["text", "tool_call"], int], StreamRedactor] = {}

    def __call__(self, delta: Delta) -> None:
        if not self._redactor:
            self._sink(delta)
            return
        key = (delta.kind, delta.index)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = self._redactor.stream()
        text = stream.feed(delta.text)
        if text or delta.name is not None:
            self._sink(dataclasses.replace(delta, text=text))

    def flush(self) -> None:
        """Pass on what each stream still holds (the reply ended, or failed)."""
        for (kind, index), stream in self._streams.items():
            rest = stream.flush()
            if rest:
                self._sink(Delta(kind=kind, text=rest, index=index))
        self._streams.clear()
