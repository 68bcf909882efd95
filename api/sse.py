"""Server-sent events: follow a run's events live, resumable with `Last-Event-ID`.

The stream polls the run's `events` query (every `api_sse_poll_seconds`) and
writes each new event once, in `seq` order, with `id: <seq>`; a client that
reconnects with `Last-Event-ID: <seq>` (browsers do it automatically) resumes
right after it. Because the query always addresses the workflow id, never a
Temporal run id, the stream follows continue-as-new: older events come from the
flushed segments in the artifact store, newer ones from the new run's memory.

Idle streams get a `: keep-alive` comment every `api_sse_keepalive_seconds`. The
stream ends with an `end` event (no id, so it never moves `Last-Event-ID`) once
the run reports `terminal` and every event up to `last_seq` was sent, or when
Temporal says the execution ended without the workflow finishing (terminated).

Model token deltas are not streamed: the workflow does not produce them yet.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from agentrun.config import Settings
from agentrun.contracts import RunEvent
from api.errors import NotFound
from api.service import RunNotAnswering, SegmentReader, describe, fetch_events

log = logging.getLogger("agentrun.api.sse")

PAGE = 500
CLOSED_CHECK_SECONDS = 2.0
"""With no new event for this long, ask Temporal whether the execution ended."""
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def format_event(event: RunEvent) -> str:
    return f"id: {event.seq}\nevent: {event.type.value}\ndata: {event.model_dump_json()}\n\n"


def _end(last_seq: int, reason: str) -> str:
    return f"event: end\ndata: {json.dumps({'last_seq': last_seq, 'reason': reason})}\n\n"


async def event_stream(
    request: Request,
    handle: Any,
    reader: SegmentReader,
    settings: Settings,
    after: int,
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    poll = settings.api_sse_poll_seconds
    keepalive = settings.api_sse_keepalive_seconds
    last = after
    last_write = last_event = loop.time()
    yield "retry: 1000\n\n"
    while True:
        if await request.is_disconnected():
            return
        try:
            events, page = await fetch_events(
                handle, reader, last, PAGE, settings.api_query_timeout_seconds
            )
        except RunNotAnswering:
            # Between two Temporal runs (continue-as-new) or no worker up: keep waiting.
            events, page = [], None
        except NotFound:
            yield _end(last, "not_found")
            return
        except RPCError as err:
            log.warning("events poll for %s failed: %s", handle.id, err)
            events, page = [], None
        now = loop.time()
        if events:
            yield "".join(format_event(e) for e in events)
            last = events[-1].seq
            last_write = last_event = now
            if len(events) >= PAGE:
                continue  # more are waiting: no sleep
        if page is not None and page.terminal and last >= page.last_seq:
            yield _end(last, "terminal")
            return
        if now - last_event >= CLOSED_CHECK_SECONDS:
            last_event = now
            if await _ended_without_finishing(handle):
                yield _end(last, "execution_closed")
                return
        if now - last_write >= keepalive:
            yield ": keep-alive\n\n"
            last_write = now
        await asyncio.sleep(poll)


async def _ended_without_finishing(handle: Any) -> bool:
    """True when Temporal closed the execution but the workflow never said `terminal`
    (terminated, timed out): no more events will come."""
    try:
        desc = await describe(handle)
    except (NotFound, RPCError):
        return False
    return desc.status in (
        WorkflowExecutionStatus.TERMINATED,
        WorkflowExecutionStatus.TIMED_OUT,
        WorkflowExecutionStatus.FAILED,
    )


def sse_response(
    request: Request, handle: Any, reader: SegmentReader, settings: Settings, after: int
) -> StreamingResponse:
    return StreamingResponse(
        event_stream(request, handle, reader, settings, after),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )
