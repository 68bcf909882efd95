"""`/v1/runs`: launch, list, inspect, follow and control runs.

Routes are thin: they validate HTTP input, resolve the tenant, and call
`agentrun.runs` (launching) or `api.service` (Temporal reads and updates).
Every run a route touches is addressed through `workflow_id_for(tenant, run)`,
so a run of another tenant is simply not found (404).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BeforeValidator
from temporalio.service import RPCError, RPCStatusCode

from activities.delta_log import DeltaLog
from agentrun.contracts import (
    ApprovalDecision,
    ControlRequest,
    ControlResult,
    Digest,
    RunSpec,
    RunStatus,
    UserMessage,
)
from agentrun.runs import IdempotencyConflict, run_handle, start_run
from api.deps import ActorDep, ClientDep, SettingsDep, StoreDep, TenantDep
from api.errors import BadRequest, Conflict, NotFound, Unavailable, problems
from api.feed import RunFeeds
from api.schemas import (
    RUN_ID_PATTERN,
    ApprovalBody,
    ArtifactList,
    ControlBody,
    ControlResponse,
    EventsResponse,
    MessageBody,
    RunCreated,
    RunLinks,
    RunList,
    RunSummary,
    RunView,
)
from api.service import (
    RunNotAnswering,
    SegmentReader,
    describe,
    execute_control,
    fetch_events,
    memo_goal,
    run_view,
    summary_from_execution,
)
from api.sse import Cursor, TailOpener, event_stream, sse_response
from workflows.agent_run import AgentRunWorkflow

router = APIRouter(prefix="/v1/runs", tags=["runs"])

RunId = Annotated[
    str,
    Path(pattern=RUN_ID_PATTERN, description="The run id", examples=["01jbq0m3c8x2v7h9k4n6p8r0sa"]),
]
LABEL_FILTER = r"^[A-Za-z0-9_.\-]{1,63}=[^'\"\\\x00-\x1f\x7f]{0,200}$"
"""`key=value`; quotes, backslashes and control characters are refused outright,
so no filter value can ever break out of its string literal in the visibility query."""
_SAFE_LITERAL = re.compile(r"^[^'\"\\\x00-\x1f\x7f]*$")
SSE_MEDIA = "text/event-stream"
CHUNK = 64 * 1024


def _iso_only(value: Any) -> Any:
    """Timestamps must be RFC 3339 strings; pydantic alone would also take `0.5` as
    seconds since the epoch, which the OpenAPI `date-time` format does not allow."""
    if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}", value):
        raise ValueError("expected an RFC 3339 date-time, e.g. 2025-01-01T00:00:00Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_iso_only)]


def _reader(request: Request) -> SegmentReader:
    reader: SegmentReader = request.app.state.segments
    return reader


# ------------------------------------------------------------------- launch


@router.post(
    "",
    status_code=201,
    response_model=RunCreated,
    summary="Launch a run",
    responses={
        200: {"model": RunCreated, "description": "Idempotent retry: the run this key started"},
        **problems(409, 413, 422, 503),
    },
)
async def create_run(
    spec: Annotated[RunSpec, Body()],
    response: Response,
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    actor: ActorDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=r"^[\x21-\x7e]{1,255}$",
            description="Retry-safe launches: the same key and body always give the same run",
            examples=["launch-2025-01-01-report"],
        ),
    ] = None,
) -> RunCreated:
    """Start a run from a `RunSpec`. With an `Idempotency-Key`, retries (even
    concurrent ones) return the same run: 201 for the first, 200 afterwards; the
    same key with a different body is a 409."""
    if spec.webhook is not None and not settings.webhook_secret:
        raise BadRequest(
            "the spec names a webhook but this deployment has no AGENTRUN_WEBHOOK_SECRET "
            "to sign deliveries with; ask the operator to set it, or drop `webhook`"
        )
    try:
        started = await start_run(client, settings, tenant, spec, actor, idempotency_key)
    except IdempotencyConflict as exc:
        raise Conflict(str(exc), kind="idempotency-key-reused") from None
    links = RunLinks.for_run(started.run_id)
    response.headers["Location"] = links.self
    if not started.created:
        response.status_code = 200
    return RunCreated(
        run_id=started.run_id,
        workflow_id=started.workflow_id,
        created=started.created,
        spec_digest=started.spec_digest,
        links=links,
    )


# --------------------------------------------------------------------- list


def _literal(value: str) -> str:
    if not _SAFE_LITERAL.match(value):
        raise BadRequest("filter values may not contain quotes, backslashes or control characters")
    return f"'{value}'"


def _timestamp(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return _literal(value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _status_clause(status: RunStatus) -> str:
    own = f"AgentRunStatus = {_literal(status.value)}"
    if status == RunStatus.FAILED:
        return f"({own} OR ExecutionStatus IN ('Failed', 'Terminated', 'TimedOut'))"
    if status == RunStatus.CANCELLED:
        return f"({own} OR ExecutionStatus = 'Canceled')"
    if status == RunStatus.COMPLETED:
        return own
    return f"({own} AND ExecutionStatus = 'Running')"


def build_list_query(
    tenant: str,
    statuses: list[RunStatus],
    agent: str | None,
    labels: list[str],
    created_after: datetime | None,
    created_before: datetime | None,
) -> str:
    """The visibility query for a listing. Every value is validated and quoted by
    :func:`_literal`; nothing the user sent is interpolated raw."""
    clauses = [
        f"AgentRunTenant = {_literal(tenant)}",
        "WorkflowType = 'AgentRunWorkflow'",
        # Each continue-as-new leaves a closed execution behind: list runs, not executions.
        "ExecutionStatus != 'ContinuedAsNew'",
    ]
    if statuses:
        clauses.append("(" + " OR ".join(_status_clause(s) for s in dict.fromkeys(statuses)) + ")")
    if agent:
        clauses.append(f"AgentRunAgent = {_literal(agent)}")
    clauses.extend(f"AgentRunLabels = {_literal(label)}" for label in dict.fromkeys(labels))
    if created_after:
        clauses.append(f"StartTime >= {_timestamp(created_after)}")
    if created_before:
        clauses.append(f"StartTime < {_timestamp(created_before)}")
    return " AND ".join(clauses)


CURSOR_VERSION = b"c1"


def _query_tag(query: str) -> bytes:
    return hashlib.sha256(query.encode()).digest()[:8]


def encode_cursor(query: str, token: bytes) -> str:
    """A cursor is Temporal's page token tagged with the query it belongs to, so a
    cursor reused with other filters (or a made-up one) is refused with a 422
    instead of being sent to Temporal."""
    raw = CURSOR_VERSION + _query_tag(query) + token
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(query: str, cursor: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    head = len(CURSOR_VERSION) + 8
    if (
        len(raw) <= head
        or not raw.startswith(CURSOR_VERSION)
        or raw[len(CURSOR_VERSION) : head] != _query_tag(query)
    ):
        raise BadRequest(
            "cursor is not a `next_cursor` returned by this endpoint for these same filters"
        )
    return raw[head:]


@router.get(
    "",
    response_model=RunList,
    summary="List runs",
    responses=problems(422, 503),
)
async def list_runs(
    client: ClientDep,
    tenant: TenantDep,
    status: Annotated[
        list[RunStatus] | None, Query(description="Repeatable; any of these statuses")
    ] = None,
    agent: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")] = None,
    label: Annotated[
        list[str] | None,
        Query(
            description="Repeatable `key=value`; a run must carry every label given",
            examples=["team=docs"],
        ),
    ] = None,
    created_after: Annotated[
        Timestamp | None,
        Query(description="Started at or after", examples=["2025-01-01T00:00:00Z"]),
    ] = None,
    created_before: Annotated[Timestamp | None, Query(description="Started before")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=4096, pattern=r"^[A-Za-z0-9_\-]+$")] = None,
) -> RunList:
    """Runs of the caller's tenant, from Temporal visibility (eventually consistent:
    a run started a moment ago may take a second to appear). Open runs come first,
    then ended runs, most recently closed first."""
    for item in label or []:
        if not re.match(LABEL_FILTER, item):
            raise BadRequest(
                f"label filter {item[:80]!r} must be key=value (key: [A-Za-z0-9_.-]{{1,63}}; "
                "value: up to 200 characters without quotes or backslashes)"
            )
    query = build_list_query(
        tenant, status or [], agent, label or [], created_after, created_before
    )
    token = decode_cursor(query, cursor) if cursor else None
    pages = client.list_workflows(
        query, page_size=limit, next_page_token=token, rpc_timeout=timedelta(seconds=10)
    )
    try:
        await pages.fetch_next_page()
    except RPCError as err:
        if token is None or err.status == RPCStatusCode.UNAVAILABLE:
            raise
        raise BadRequest("cursor is invalid or has expired; list again without it") from None
    runs: list[RunSummary] = []
    for wf in pages.current_page or []:
        run_id = wf.id.split("/", 2)[-1]
        runs.append(summary_from_execution(run_id, wf, await memo_goal(wf)))
    next_token = pages.next_page_token
    return RunList(
        runs=runs,
        next_cursor=encode_cursor(query, next_token) if next_token else None,
    )


# --------------------------------------------------------------------- read


@router.get(
    "/{run_id}",
    response_model=RunView,
    summary="Get a run",
    responses=problems(404, 422, 503),
)
async def get_run(
    run_id: RunId, client: ClientDep, settings: SettingsDep, tenant: TenantDep
) -> RunView:
    """Status, steps, usage, pending approval, final answer or error, timestamps."""
    return await run_view(client, settings, tenant, run_id)


SSE_EXAMPLE = (
    'id: 4.1.0\nevent: model.started\ndata: {"seq":4,"type":"model.started",…}\n\n'
    'id: 4.1.1\nevent: model.delta\ndata: {"step":1,"n":1,"attempt":1,"kind":"text",'
    '"text":"Hello",…}\n\n'
    'id: 5\nevent: model.called\ndata: {"seq":5,"type":"model.called",…}\n\n'
)
EVENTS_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A page of events (JSON), or an SSE stream with `Accept: text/event-stream`",
        "content": {
            SSE_MEDIA: {
                "schema": {"type": "string"},
                "example": SSE_EXAMPLE,
            }
        },
    }
}


def _start_cursor(after: int, last_event_id: str | None) -> Cursor:
    if last_event_id is None or not last_event_id.strip():
        return Cursor(after)
    try:
        return Cursor.parse(last_event_id)
    except ValueError:
        raise BadRequest(
            "Last-Event-ID must be the `id:` of the last message received: "
            "`<seq>` or `<seq>.<step>.<n>`"
        ) from None


def _tails(request: Request, tenant: str, run_id: str, wanted: bool) -> TailOpener | None:
    deltas: DeltaLog | None = request.app.state.deltas
    if not wanted or deltas is None:
        return None
    return lambda step, after_n: deltas.tail(tenant, run_id, step, after_n)


DeltasParam = Annotated[
    bool,
    Query(description="SSE only: also stream model token deltas (`model.delta` messages)"),
]


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
    after: Annotated[int, Query(ge=0, le=10**15, description="Events with seq > after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    deltas: DeltasParam = True,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", include_in_schema=False)
    ] = None,
) -> Any:
    """Every event of the run in `seq` order, across continue-as-new (older events
    come from segments in the artifact store)."""
    handle = run_handle(client, tenant, run_id)
    if accept and SSE_MEDIA in accept:
        start = _start_cursor(after, last_event_id)
        return await _stream(
            request, handle, settings, start, _tails(request, tenant, run_id, deltas)
        )
    try:
        events, page = await fetch_events(
            handle, _reader(request), after, limit, settings.api_query_timeout_seconds
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


async def _stream(
    request: Request, handle: Any, settings: Any, start: Cursor, opener: TailOpener | None
) -> StreamingResponse:
    await describe(handle)  # 404 before the stream starts
    feeds: RunFeeds = request.app.state.feeds
    return sse_response(event_stream(request, feeds, handle, start, opener))


@router.get(
    "/{run_id}/events/stream",
    summary="Follow a run's events (server-sent events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`text/event-stream`: `event:` is the event type (or "
            "`model.delta` for a token delta), `data:` the event (or delta) JSON, `id:` a "
            "resume cursor (`<seq>`, or `<seq>.<step>.<n>` while a model call streams); "
            "ends with an `end` event after the terminal event. Resume with `Last-Event-ID`.",
            "content": {
                SSE_MEDIA: {
                    "schema": {"type": "string"},
                    "example": SSE_EXAMPLE,
                }
            },
        },
        **problems(404, 422, 503),
    },
)
async def stream_events(
    request: Request,
    run_id: RunId,
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    after: Annotated[int, Query(ge=0, le=10**15, description="Start after this seq")] = 0,
    deltas: DeltasParam = True,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this cursor: the `id:` of the last message received, "
            "`<seq>` or `<seq>.<step>.<n>` (takes precedence over `after`)",
            max_length=40,
        ),
    ] = None,
) -> StreamingResponse:
    handle = run_handle(client, tenant, run_id)
    start = _start_cursor(after, last_event_id)
    return await _stream(request, handle, settings, start, _tails(request, tenant, run_id, deltas))


# ------------------------------------------------------------------ control


async def _control(
    client: Any,
    settings: Any,
    tenant: str,
    run_id: str,
    update: Any,
    arg: Any,
    action: str,
) -> ControlResponse:
    handle = run_handle(client, tenant, run_id)
    result: ControlResult = await execute_control(
        handle, update, arg, settings.api_update_timeout_seconds, action
    )
    return ControlResponse(run_id=run_id, status=result.status, detail=result.detail)


CONTROL_RESPONSES = problems(404, 409, 413, 422, 503, 504)


def _add_control_route(action: str, update: Any, summary: str) -> None:
    """pause, resume and cancel differ only in the update they send (and cancel's
    `abort_in_flight`); each keeps its own path, summary and operation id."""

    async def control(
        run_id: RunId,
        client: ClientDep,
        settings: SettingsDep,
        tenant: TenantDep,
        actor: ActorDep,
        body: Annotated[ControlBody | None, Body()] = None,
    ) -> ControlResponse:
        body = body or ControlBody()
        abort = action == "cancel" and body.abort_in_flight
        req = ControlRequest(actor=actor, reason=body.reason, abort_in_flight=abort)
        return await _control(client, settings, tenant, run_id, update, req, action)

    router.post(
        f"/{{run_id}}/{action}",
        response_model=ControlResponse,
        summary=summary,
        responses=CONTROL_RESPONSES,
        name=f"{action}_run",
    )(control)


_add_control_route("pause", AgentRunWorkflow.pause, "Pause a run (after its in-flight step)")
_add_control_route("resume", AgentRunWorkflow.resume, "Resume a paused run")
_add_control_route("cancel", AgentRunWorkflow.cancel, "Cancel a run")


@router.post(
    "/{run_id}/approvals/{approval_id}",
    response_model=ControlResponse,
    summary="Approve or deny a pending tool call",
    responses=CONTROL_RESPONSES,
)
async def decide_approval(
    run_id: RunId,
    approval_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-]{1,200}$")],
    body: ApprovalBody,
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    actor: ActorDep,
) -> ControlResponse:
    """The decision must name the pending call's `arguments_digest`, so an approval
    can never apply to arguments the approver did not see."""
    decision = ApprovalDecision(
        approval_id=approval_id,
        arguments_digest=body.arguments_digest,
        actor=actor,
        reason=body.reason,
    )
    update = AgentRunWorkflow.approve if body.decision == "approve" else AgentRunWorkflow.deny
    return await _control(
        client, settings, tenant, run_id, update, decision, "decide on an approval of"
    )


@router.post(
    "/{run_id}/messages",
    response_model=ControlResponse,
    summary="Send a steering message (delivered with the next model call)",
    responses=CONTROL_RESPONSES,
)
async def send_message(
    run_id: RunId,
    body: MessageBody,
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    actor: ActorDep,
) -> ControlResponse:
    msg = UserMessage(text=body.text, actor=actor)
    return await _control(
        client, settings, tenant, run_id, AgentRunWorkflow.send_message, msg, "send a message to"
    )


# ---------------------------------------------------------------- artifacts


@router.get(
    "/{run_id}/artifacts",
    response_model=ArtifactList,
    summary="List a run's artifacts",
    responses=problems(404, 422, 503),
)
async def list_artifacts(
    run_id: RunId, client: ClientDep, settings: SettingsDep, tenant: TenantDep
) -> ArtifactList:
    view = await run_view(client, settings, tenant, run_id)
    return ArtifactList(artifacts=view.artifacts)


def _content_disposition(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1] or "artifact"
    ascii_name = re.sub(r"[^A-Za-z0-9._\-]", "_", base)[:200] or "artifact"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(base)}"


@router.get(
    "/{run_id}/artifacts/{digest}",
    summary="Download an artifact",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The artifact's bytes, with its content type and file name",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        **problems(404, 422, 503),
    },
)
async def download_artifact(
    run_id: RunId,
    digest: Annotated[Digest, Path()],
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    store: StoreDep,
) -> StreamingResponse:
    """Only digests listed in the run's artifacts are served (404 otherwise)."""
    view = await run_view(client, settings, tenant, run_id)
    ref = next((a for a in view.artifacts if a.digest == digest), None)
    if ref is None:
        raise NotFound(f"run {run_id} has no artifact {digest}")
    try:
        fh = store.open(digest)
    except KeyError:
        raise NotFound(f"artifact {digest} is listed but missing from the artifact store") from None
    size = store.size(digest)

    def chunks() -> Iterator[bytes]:
        with fh:
            while block := fh.read(CHUNK):
                yield block

    return StreamingResponse(
        chunks(),
        media_type=ref.content_type or "application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": _content_disposition(ref.name),
            "X-Content-Type-Options": "nosniff",
        },
    )
