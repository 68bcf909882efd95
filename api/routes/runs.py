"""`/v1/runs` and `/v1/runs/{run_id}`: launch, list and inspect runs.

Routes are thin: they validate HTTP input, resolve the tenant, and call
`api.launcher` (launching), `api.queries` (the listing's visibility query and
cursor) or `api.service` (Temporal reads). Every run a route touches is addressed
through `workflow_id_for(tenant, run)`, so a run of another tenant is simply not
found (404).

The rest of a run's routes live beside this module: `events` (pages and SSE),
`control` (pause, resume, cancel, approvals, messages) and `artifacts`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Body, Header, Query, Request, Response
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from agentrun.config import Settings
from agentrun.contracts import Actor, RunSpec, RunStatus
from api.accounts_conn import AccountsConnection
from api.admission import refusals
from api.auth import call_record
from api.deps import AccountsDep, ActorDep, ClientDep, SettingsDep, TenantDep
from api.errors import (
    PROBLEM_RESPONSES,
    BadRequest,
    Conflict,
    NotFound,
    UpstreamTimeout,
    problems,
)
from api.launcher import IdempotencyConflict, StartedRun, launched_by_key, start_run
from api.metering import record_view
from api.queries import (
    CURSOR_PATTERN,
    LABEL_FILTER,
    InvalidListing,
    Timestamp,
    UnknownCursor,
    build_list_query,
    decode_cursor,
    encode_cursor,
)
from api.quotas import busy, check_launch
from api.routes.params import RunId, runs_router
from api.schemas import RunCreated, RunLinks, RunList, RunSummary, RunView
from api.secret_grants import check_grants
from api.service import memo_goal, run_view, summary_from_execution
from api.slots import SlotRefused, SlotsNotAnswering
from telemetry.metrics import instruments

router = runs_router()

LIST_RPC_TIMEOUT = timedelta(seconds=10)


# ------------------------------------------------------------------- launch


@router.post(
    "",
    status_code=201,
    response_model=RunCreated,
    summary="Launch a run",
    responses={
        200: {"model": RunCreated, "description": "Idempotent retry: the run this key started"},
        202: {
            "model": RunCreated,
            "description": "The tenant runs its maximum of concurrent runs and queues "
            "launches (quota `queue_when_busy`): the run is created `queued` and starts "
            "when a slot frees (`queued: true`)",
        },
        **problems(409, 413, 422, 503, 504),
        422: {
            **PROBLEM_RESPONSES[422],
            "description": "Invalid request, or a spec this deployment does not run: a "
            "sandbox value over its maximum, an image outside its allow-list, network where "
            "it is off, a `webhook` without AGENTRUN_WEBHOOK_SECRET, steps or tokens over the "
            "tenant's quota, `secrets` the tenant does not have (`errors` lists each)",
        },
        429: {
            **PROBLEM_RESPONSES[429],
            "description": "The tenant runs its maximum of concurrent runs "
            "(`quota-exceeded`), or spent its budget (`budget-exhausted`); see `Retry-After`",
        },
    },
)
async def create_run(
    spec: Annotated[RunSpec, Body()],
    request: Request,
    response: Response,
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    actor: ActorDep,
    accounts: AccountsDep,
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
    same key with a different body is a 409. A spec over this deployment's limits
    (`api.admission`, also stated in this document's schemas) is a 422 before
    anything starts, and so is one over the tenant's quota (`api.quotas`: steps and
    tokens 422, concurrent runs and budgets 429). A tenant that queues launches at
    its maximum of concurrent runs gets 202: the run is created `queued`."""
    try:
        started = (
            await launched_by_key(client, tenant, spec, idempotency_key)
            if idempotency_key
            else None
        )
        if started is None:
            started = await _launch(
                client, settings, accounts, tenant, spec, actor, idempotency_key
            )
    except IdempotencyConflict as exc:
        raise Conflict(str(exc), kind="idempotency-key-reused") from None
    call_record(request).target = started.run_id
    outcome = "queued" if started.queued else "started" if started.created else "existing"
    instruments().runs_launched.add(1, {"outcome": outcome})
    links = RunLinks.for_run(started.run_id)
    response.headers["Location"] = links.self
    if not started.created:
        response.status_code = 200
    elif started.queued:
        response.status_code = 202
    return RunCreated(
        run_id=started.run_id,
        workflow_id=started.workflow_id,
        created=started.created,
        spec_digest=started.spec_digest,
        links=links,
        queued=started.queued,
    )


async def _launch(
    client: Client,
    settings: Settings,
    accounts: AccountsConnection,
    tenant: str,
    spec: RunSpec,
    actor: Actor,
    idempotency_key: str | None,
) -> StartedRun:
    """The launch checks (deployment limits, grants, quota), then the start."""
    refused = refusals(settings, spec)
    if refused:
        raise BadRequest("; ".join(r.msg for r in refused), errors=[r.as_error() for r in refused])
    # Before any slot is taken: a run never starts without a secret it was granted.
    await check_grants(accounts, tenant, spec)
    slots = await check_launch(client, settings, accounts, tenant, spec)
    try:
        return await start_run(client, settings, tenant, spec, actor, idempotency_key, slots=slots)
    except SlotRefused as exc:
        raise busy(exc) from None
    except SlotsNotAnswering as exc:
        raise UpstreamTimeout(str(exc)) from None


# --------------------------------------------------------------------- list


@router.get(
    "",
    response_model=RunList,
    summary="List runs",
    responses={
        **problems(422, 503),
        404: {**PROBLEM_RESPONSES[404], "description": "The cursor names no page of this listing"},
    },
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
            description="Repeatable `key=value`; a run must carry every label given. Values "
            "may not hold quotes, backslashes or control characters",
            examples=["team=docs"],
            # Checked by `build_list_query` (its 422 says what a filter must look like).
            json_schema_extra={"items": {"type": "string", "pattern": LABEL_FILTER}},
        ),
    ] = None,
    created_after: Annotated[
        Timestamp | None,
        Query(description="Started at or after", examples=["2025-01-01T00:00:00Z"]),
    ] = None,
    created_before: Annotated[Timestamp | None, Query(description="Started before")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(
            pattern=CURSOR_PATTERN,
            description="A `next_cursor` of this listing with the same filters (404 for "
            "one that names no page: another listing's, made up, or expired)",
        ),
    ] = None,
) -> RunList:
    """Runs of the caller's tenant, from Temporal visibility (eventually consistent:
    a run started a moment ago may take a second to appear). Open runs come first,
    then ended runs, most recently closed first."""
    try:
        query = build_list_query(
            tenant, status or [], agent, label or [], created_after, created_before
        )
        token = decode_cursor(query, cursor) if cursor else None
    except UnknownCursor as exc:
        raise NotFound(f"{exc}; list again without it") from None
    except InvalidListing as exc:
        raise BadRequest(str(exc)) from None
    pages = client.list_workflows(
        query, page_size=limit, next_page_token=token, rpc_timeout=LIST_RPC_TIMEOUT
    )
    try:
        await pages.fetch_next_page()
    except RPCError as err:
        if token is None or err.status == RPCStatusCode.UNAVAILABLE:
            raise
        raise NotFound(
            "cursor names no page (it may have expired); list again without it"
        ) from None
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
    run_id: RunId,
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    accounts: AccountsDep,
) -> RunView:
    """Status, steps, usage, pending approval, final answer or error, timestamps."""
    view = await run_view(client, settings, tenant, run_id)
    await record_view(accounts, view)  # an ended run's usage, into the ledger
    return view
