"""Server-sent events: follow a run live, durable events and model token deltas,
resumable with `Last-Event-ID`.

Durable events come from the run's `events` query, polled every
`api_sse_poll_seconds` by the run's feed (`api.feed`), which all connections
following the run share; the query addresses the workflow id, never a Temporal
run id, so the stream follows continue-as-new (older events come from the
segments flushed to the artifact store). Each event is written once, in `seq`
order.

Model token deltas (`event: model.delta`, data a `ModelDelta`) come from the delta
store (`store.delta_log`: files, or Redis Streams across hosts), polled every
`DELTA_POLL_SECONDS` while a model call is open. A step's stream opens with its
`model.started` event and closes with its `model.called` event (or
`run.finished`); the log is drained before the closing event is written, so every
delta of the step arrives before it.

Every message's `id:` is a resume cursor: `<seq>` when no model stream is open,
`<seq>.<step>.<n>` while one is (the last durable event sent, the open step, and
the last delta of that step sent). Reconnecting with it as `Last-Event-ID`
resumes after exactly that point: no gap, no duplicate. A bare `<seq>` from a
client that only tracks durable events (or `?after=`) also works: the deltas of a
model call open at that point are then sent from its first one.

Idle streams get a `: keep-alive` comment every `api_sse_keepalive_seconds`. The
stream ends with an `end` event (no id, so it never moves `Last-Event-ID`) once
the run reports `terminal` and every event up to `last_seq` was sent, or when
Temporal says the execution ended without the workflow finishing (terminated).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from agentrun.contracts import (
    DELTA_EVENT,
    EventsPage,
    EventType,
    ModelCalledEvent,
    ModelDelta,
    ModelStartedEvent,
    RunEvent,
)
from api.errors import NotFound
from api.feed import RunFeed, RunFeeds
from api.schemas import SSE_CURSOR_PATTERN, EndReason, StreamEnd
from store.delta_log import DeltaTail

DELTA_POLL_SECONDS = 0.05
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_CLOSES_STREAM = (EventType.MODEL_STARTED, EventType.MODEL_CALLED, EventType.RUN_FINISHED)

TailOpener = Callable[[int, int], DeltaTail]
"""`(step, after_n)` → a tail of that step's delta log of this run."""


@dataclass
class Cursor:
    """Where a client is in the stream; its text form is the SSE `id:`."""

    seq: int
    step: int | None = None
    """The step whose model stream is open, if one is."""
    n: int = 0
    """The last delta of that step sent."""

    def __str__(self) -> str:
        return str(self.seq) if self.step is None else f"{self.seq}.{self.step}.{self.n}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        # `fullmatch` and ASCII digits only: exactly what the OpenAPI pattern admits,
        # around HTTP's own optional whitespace (spaces and tabs; Python's `strip()`
        # would also drop Unicode spaces the pattern refuses).
        text = text.strip(" \t")
        if not re.fullmatch(SSE_CURSOR_PATTERN, text):
            raise ValueError(text)
        seq, _, rest = text.partition(".")
        if not rest:
            return cls(int(seq))
        step, _, n = rest.partition(".")
        return cls(int(seq), int(step), int(n))


def format_event(event: RunEvent, cursor: Cursor) -> str:
    return f"id: {cursor}\nevent: {event.type.value}\ndata: {event.model_dump_json()}\n\n"


def format_delta(delta: ModelDelta, cursor: Cursor) -> str:
    return f"id: {cursor}\nevent: {DELTA_EVENT}\ndata: {delta.model_dump_json()}\n\n"


def _end(last_seq: int, reason: EndReason) -> str:
    end = StreamEnd(last_seq=last_seq, reason=reason)
    return f"event: end\ndata: {end.model_dump_json()}\n\n"


class _Interleaver:
    """Turns polled events and delta-store reads into SSE messages, moving the cursor.

    Opening a tail does no I/O; polling one does (a file read in a thread, or a Redis
    call). One interleaver serves one connection.
    """

    def __init__(self, cursor: Cursor, opener: TailOpener | None) -> None:
        self.cursor = cursor
        self._opener = opener
        self._tail: DeltaTail | None = None
        self._closed_step: int | None = None
        if opener is None:
            cursor.step, cursor.n = None, 0
        self._bare_start = cursor.step is None
        if opener is not None and cursor.step is not None:
            self._tail = opener(cursor.step, cursor.n)

    def busy(self, events: list[RunEvent]) -> bool:
        """Whether :meth:`events` has anything to do (saves a delta read per idle poll)."""
        return bool(events) or self._tail is not None or self._bare_start

    @property
    def streaming(self) -> bool:
        return self._tail is not None

    async def deltas(self) -> list[str]:
        """Deltas of the open stream that arrived since the last read."""
        if self._tail is None:
            return []
        out = []
        for delta in await self._tail.poll():
            self.cursor.n = delta.n
            out.append(format_delta(delta, self.cursor))
        return out

    async def events(self, events: list[RunEvent], page: EventsPage | None) -> list[str]:
        out: list[str] = []
        if self._bare_start and page is not None:
            # A bare `<seq>` cursor inside a model call: send that call's deltas from 1.
            self._bare_start = False
            call = page.model_call
            if self._opener and call is not None and call.started_seq <= self.cursor.seq:
                self._open(call.step)
                out += await self.deltas()
        for event in events:
            if event.type in _CLOSES_STREAM and self._tail is not None:
                out += await self.deltas()
                self._closed_step, self._tail, self.cursor.step = self.cursor.step, None, None
            elif (
                isinstance(event, ModelCalledEvent)
                and self._opener is not None
                and event.payload.step != self._closed_step
            ):
                step = event.payload.step
                # Opened before this connection's cursor (bare `<seq>` resume): all of it.
                self._open(step)
                out += await self.deltas()
                self._closed_step, self._tail, self.cursor.step = step, None, None
            self.cursor.seq = event.seq
            if isinstance(event, ModelStartedEvent) and self._opener:
                self._open(event.payload.step)
            out.append(format_event(event, self.cursor))
            out += await self.deltas()  # a finished call's deltas are all there already
        return out

    def _open(self, step: int) -> None:
        assert self._opener is not None
        self._tail = self._opener(step, 0)
        self.cursor.step, self.cursor.n = step, 0


async def event_stream(
    request: Request, feeds: RunFeeds, handle: Any, start: Cursor, opener: TailOpener | None
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    settings = feeds.settings
    weave = _Interleaver(Cursor(start.seq, start.step, start.n), opener)
    last_write = loop.time()
    yield "retry: 1000\n\n"
    async with feeds.follow(handle, start.seq) as feed:
        while True:
            if await request.is_disconnected():
                return
            try:
                events, page = await feed.read(weave.cursor.seq)
            except NotFound:
                yield _end(weave.cursor.seq, "not_found")
                return
            messages = await weave.events(events, page) if weave.busy(events) else []
            if messages:
                yield "".join(messages)
                last_write = loop.time()
            last = weave.cursor.seq
            if page is not None and page.terminal and last >= page.last_seq:
                yield _end(last, "terminal")
                return
            if events and last < feed.last_seq:
                continue  # catching up: no waiting
            if feed.ended is not None:
                yield _end(last, feed.ended)
                return
            if loop.time() - last_write >= settings.api_sse_keepalive_seconds:
                yield ": keep-alive\n\n"
                last_write = loop.time()
            async for chunk in _deltas_until_change(feed, weave, settings.api_sse_poll_seconds):
                yield chunk
                last_write = loop.time()


async def _deltas_until_change(
    feed: RunFeed, weave: _Interleaver, seconds: float
) -> AsyncIterator[str]:
    """Wait for the feed to change (at most `seconds`), meanwhile relaying the open
    model stream's deltas."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        if not weave.streaming:
            await feed.wait(left)
            return
        if await feed.wait(min(DELTA_POLL_SECONDS, left)):
            return
        messages = await weave.deltas()
        if messages:
            yield "".join(messages)


def sse_response(stream: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
