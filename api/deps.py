"""Typed FastAPI dependencies: everything a route needs from the process or the request.

The app factory builds one :class:`ApiState` (settings, the Temporal connection,
the artifact store, the segment reader, the run feeds, the delta log) and keeps it
on `app.state`; this module is the only reader of `app.state`. Routes ask for
what they use by type (`SettingsDep`, `ClientDep`, `StoreDep`, `SegmentsDep`,
`FeedsDep`, `DeltasDep`), so a route's signature lists everything it touches and
a test can build the state without a server.

Tenancy is resolved here and nowhere else. Today the API runs without API keys
(the local default): every request belongs to `settings.dev_tenant`, and the
actor is whoever the optional `X-Agentrun-Actor` header names. When API keys
arrive, `get_tenant` and `get_actor` resolve them from the key instead and no
route changes: routes only ever see `TenantDep` and `ActorDep`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.applications import Starlette
from temporalio.client import Client

from agentrun.config import Settings
from agentrun.contracts import Actor
from agentrun.temporal import connect
from api.errors import BadRequest, Unavailable
from api.feed import RunFeeds
from api.service import SegmentReader
from store.artifacts import ArtifactStore
from store.delta_log import DeltaLog

log = logging.getLogger("agentrun.api")

ACTOR_HEADER = "X-Agentrun-Actor"
ANONYMOUS = "anonymous"
ACTOR_PATTERN = "^[A-Za-z0-9_.@+:-]{1,200}$"
"""An actor header: ASCII only, so it reads alike in Python and in the OpenAPI
document (Python's `\\w` would also take any Unicode letter); `re.fullmatch`."""


class TemporalConnection:
    """The API's one Temporal client, connected at startup or lazily on first use.

    If Temporal is down when the API starts, the process still serves `/healthz`
    and answers 503 elsewhere; the next request retries the connection.
    """

    def __init__(self, settings: Settings, client: Client | None = None) -> None:
        self._settings = settings
        self._client = client
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def get(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(connect(self._settings), timeout=5.0)
                except (RuntimeError, OSError, TimeoutError) as exc:
                    log.warning("cannot connect to Temporal: %s", exc)
                    raise Unavailable(
                        f"Temporal at {self._settings.temporal_address} is not reachable; "
                        "start it (or fix AGENTRUN_TEMPORAL_ADDRESS) and retry"
                    ) from None
            return self._client


@dataclass(frozen=True)
class ApiState:
    """What one API process holds for its whole life (built once by `create_app`)."""

    settings: Settings
    temporal: TemporalConnection
    store: ArtifactStore
    segments: SegmentReader
    """Flushed event segments, cached (they never change)."""
    feeds: RunFeeds
    """One events poller per followed run, shared by its SSE connections."""
    deltas: DeltaLog | None
    """The model token delta log; None when the deployment does not stream models."""


def set_api_state(app: Starlette, state: ApiState) -> None:
    app.state.agentrun = state


def api_state(app: Starlette) -> ApiState:
    """The state `create_app` gave `app` (tests and benchmarks read feeds through it)."""
    state: ApiState = app.state.agentrun
    return state


def get_state(request: Request) -> ApiState:
    return api_state(request.app)


StateDep = Annotated[ApiState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


async def get_client(state: StateDep) -> Client:
    return await state.temporal.get()


def get_store(state: StateDep) -> ArtifactStore:
    return state.store


def get_segments(state: StateDep) -> SegmentReader:
    return state.segments


def get_feeds(state: StateDep) -> RunFeeds:
    return state.feeds


def get_deltas(state: StateDep) -> DeltaLog | None:
    return state.deltas


def get_tenant(settings: Annotated[Settings, Depends(get_settings)]) -> str:
    """The caller's tenant. Without API keys, the deployment's dev tenant."""
    return settings.dev_tenant


def get_actor(
    tenant: Annotated[str, Depends(get_tenant)],
    x_agentrun_actor: Annotated[
        str,
        Header(
            alias=ACTOR_HEADER,
            description="Who is acting (audit trail); `anonymous` when absent or empty.",
            examples=["alice@example.com"],
            # Checked below, with a message that says what an actor may hold.
            json_schema_extra={"pattern": f"^$|{ACTOR_PATTERN}"},
        ),
    ] = "",
) -> Actor:
    # No `strip()`: HTTP already drops the spaces around a header value, and Python's
    # would also drop Unicode spaces the document's pattern refuses.
    subject = x_agentrun_actor or ANONYMOUS
    if not re.fullmatch(ACTOR_PATTERN, subject):
        raise BadRequest(
            f"{ACTOR_HEADER} must be 1-200 characters of ASCII letters, digits and ._@+-:"
        )
    return Actor(subject=subject, kind="user", tenant_id=tenant)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ClientDep = Annotated[Client, Depends(get_client)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SegmentsDep = Annotated[SegmentReader, Depends(get_segments)]
FeedsDep = Annotated[RunFeeds, Depends(get_feeds)]
DeltasDep = Annotated[DeltaLog | None, Depends(get_deltas)]
TenantDep = Annotated[str, Depends(get_tenant)]
ActorDep = Annotated[Actor, Depends(get_actor)]
