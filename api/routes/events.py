"""`/v1/runs/{run_id}/events`: a run's events, as JSON pages or server-sent events.

Both routes serve the same typed events: each is one model of the `RunEvent`
union (discriminated on `type`, one payload model per event type), listed in the
OpenAPI document under `#/components/schemas/RunEvent`. A JSON page holds them in
`events`; an SSE message carries one as its `data:`. How the stream interleaves
model token deltas and resumes with `Last-Event-ID` is `api.sse`'s business.

This module must not: poll Temporal itself (the run's feed in `api.feed` does, once
for all the connections following a run) or read the delta log (`api.sse` does).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import ClientDep, DeltasDep, FeedsDep, SegmentsDep, SettingsDep, TenantDep
from api.errors import BadRequest, Unavailable, problems
from api.feed import RunFeeds
from api.launcher import run_handle
from api.routes.params import RunId, runs_router
from api.schemas import SSE_CURSOR_PATTERN, EventsResponse
from api.service import Handle, RunNotAnswering, describe, fetch_events
from api.sse import Cursor, TailOpener, event_stream, sse_response
from store.delta_log import DeltaStore

router = runs_router()

SSE_MEDIA = "text/event-stream"
SSE_EXAMPLE = (
    'id: 4.1.0\nevent: model.started\ndata: {"seq":4,"type":"model.started",…}\n\n'
    'id: 4.1.1\nevent: model.delta\ndata: {"step":1,"n":1,"attempt":1,"kind":"text",'
    '"text":"Hello",…}\n\n'
    'id: 5\nevent: model.called\ndata: {"seq":5,"type":"model.called",…}\n\n'
)
SSE_CONTENT = {
    # Before OpenAPI 3.2's `itemSchema`, the schema of an event-stream content is the
    # schema of each of its messages (`SseMessage`: `id`, `event` and `data`).
    SSE_MEDIA: {"schema": {"$ref": "#/components/schemas/SseMessage"}, "example": SSE_EXAMPLE}
}
SSE_MESSAGES = (
    "each message is an `SseMessage`: `event:` the event type and `data:` the event "
    "(a `RunEvent`, as in `EventsResponse.events`), or `event: model.delta` and a "
    "`ModelDelta`; `id:` a resume cursor (`<seq>`, or `<seq>.<step>.<n>` while a model "
    "call streams). The stream ends with an `end` message (`StreamEnd`) after the "
    "terminal event. Resume with `Last-Event-ID`."
)
EVENTS_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A page of events (JSON, each a `RunEvent`), or an SSE stream with "
        "`Accept: text/event-stream` (the messages of `/events/stream`)",
        "content": SSE_CONTENT,
    }
}
STREAM_200: dict[int | str, dict[str, Any]] = {
    200: {"description": f"`{SSE_MEDIA}`: {SSE_MESSAGES}", "content": SSE_CONTENT}
}

DeltasParam = Annotated[
    bool,
    Query(description="SSE only: also stream model token deltas (`model.delta` messages)"),
]


LastEventId = Annotated[
    str,
    Header(
        alias="Last-Event-ID",
        description="Resume after this cursor: the `id:` of the last message received, "
        "`<seq>` or `<seq>.<step>.<n>` (takes precedence over `after`; empty: none)",
        json_schema_extra={"pattern": f"^$|{SSE_CURSOR_PATTERN}"},
    ),
]
"""Validated by `_start_cursor` (with a message that says what a cursor is), against
the same pattern the document states."""


def _start_cursor(after: int, last_event_id: str) -> Cursor:
    if not last_event_id:
        return Cursor(after)
    try:
        return Cursor.parse(last_event_id)
    except ValueError:
        raise BadRequest(
            "Last-Event-ID must be the `id:` of the last message received: "
            "`<seq>` or `<seq>.<step>.<n>`"
        ) from None


def _tails(deltas: DeltaStore | None, tenant: str, run_id: str, wanted: bool) -> TailOpener | None:
    if not wanted or deltas is None:
        return None
    return lambda step, after_n: deltas.tail(tenant, run_id, step, after_n)


async def _stream(
    request: Request, feeds: RunFeeds, handle: Handle, start: Cursor, opener: TailOpener | None
) -> StreamingResponse:
    await describe(handle)  # 404 before the stream starts
    return sse_response(event_stream(request, feeds, handle, start, opener))


@router.get(
    "/{run_id}/events",
    response_model=EventsResponse,
    summary="Get a run's events (JSON pages, or SSE with Accept: text/event-stream)",
    responses={**EVENTS_200, **problems(404, 422, 503)},
)
async def get_events(
    request: Request,
    run_id: RunId,
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    segments: SegmentsDep,
    feeds: FeedsDep,
    delta_log: DeltasDep,
    after: Annotated[int, Query(ge=0, le=10**15, description="Events with seq > after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    deltas: DeltasParam = True,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id: LastEventId = "",
) -> EventsResponse | StreamingResponse:
    """Every event of the run in `seq` order, across continue-as-new (older events
    come from segments in the artifact store). `Last-Event-ID` is read with
    `Accept: text/event-stream` only, but checked always."""
    handle = run_handle(client, tenant, run_id)
    start = _start_cursor(after, last_event_id)
    if accept and SSE_MEDIA in accept:
        return await _stream(
            request, feeds, handle, start, _tails(delta_log, tenant, run_id, deltas)
        )
    try:
        events, page = await fetch_events(
            handle, segments, after, limit, settings.api_query_timeout_seconds
        )
    except RunNotAnswering:
        await describe(handle)  # 404 when the run does not exist
        raise Unavailable(
            "no worker answered the events query in time; is an agentrun worker running?"
        ) from None
    next_after = events[-1].seq if events else after
    return EventsResponse(
        events=events,
        last_seq=page.last_seq,
        next_after=next_after,
        terminal=page.terminal and next_after >= page.last_seq,
    )


@router.get(
    "/{run_id}/events/stream",
    summary="Follow a run's events (server-sent events)",
    response_class=StreamingResponse,
    responses={**STREAM_200, **problems(404, 422, 503)},
)
async def stream_events(
    request: Request,
    run_id: RunId,
    client: ClientDep,
    tenant: TenantDep,
    feeds: FeedsDep,
    delta_log: DeltasDep,
    after: Annotated[int, Query(ge=0, le=10**15, description="Start after this seq")] = 0,
    deltas: DeltasParam = True,
    last_event_id: LastEventId = "",
) -> StreamingResponse:
    handle = run_handle(client, tenant, run_id)
    start = _start_cursor(after, last_event_id)
    return await _stream(request, feeds, handle, start, _tails(delta_log, tenant, run_id, deltas))
