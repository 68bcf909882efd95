"""Typed FastAPI dependencies: everything a route needs from the process or the request.

The app factory builds one :class:`ApiState` (settings, the Temporal connection,
the artifact store, the segment reader, the run feeds, the delta log) and keeps it
on `app.state`; this module is the only reader of `app.state`. Routes ask for
what they use by type (`SettingsDep`, `ClientDep`, `StoreDep`, `SegmentsDep`,
`FeedsDep`, `DeltasDep`, `CodecDep`), so a route's signature lists everything it touches and
a test can build the state without a server.

`StoreDep` is the caller's tenant's view of the artifact store (its own prefix,
`store/artifacts.py`), never the whole store: a route cannot read another tenant's
blobs, whatever digest it is given.

Tenancy is resolved here and nowhere else. Every route first runs :func:`authorize`
(an app-wide dependency): the route's rule in `api.auth.RULES`, then, unless the
route is public, the caller's API key (`Authorization: Bearer …`, checked by the
key store in a thread), its rate limit and its role. `get_tenant` and `get_actor`
derive from that principal: the tenant is the key's, the actor the key's subject
(plus the end user a key with the `act_as` scope names in
`X-Agentrun-On-Behalf-Of`). Routes only ever see `PrincipalDep`, `TenantDep` and
`ActorDep`. With `AGENTRUN_AUTH=off` (loopback-only development) every caller is
an admin of `settings.dev_tenant`, named by `X-Agentrun-Actor` as before keys.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.applications import Starlette
from starlette.routing import BaseRoute
from temporalio.client import Client

from accounts.principal import Principal
from accounts.ratelimit import RateLimiter
from agentrun.config import Settings
from agentrun.contracts import Actor
from agentrun.payload_codec import EncryptionCodec, KeyFileError, load_key_ring
from agentrun.temporal import connect
from api.accounts_conn import AccountsConnection
from api.auth import (
    ACTOR_HEADER,
    ACTOR_PATTERN,
    DOCS,
    METRICS,
    bearer_key,
    call_record,
    check_permission,
    check_rate,
    dev_principal,
    presented_key_id,
    rule_for_route,
)
from api.errors import ApiError, BadRequest, Forbidden, Unauthenticated, Unavailable
from api.feed import RunFeeds
from api.service import SegmentReader
from store.artifacts import ArtifactStore, TenantStores
from store.delta_log import DeltaStore
from telemetry.metrics import temporal_runtime
from telemetry.tracing import client_plugins

log = logging.getLogger("agentrun.api")

ON_BEHALF_HEADER = "X-Agentrun-On-Behalf-Of"


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
                    # The runtime's metric buffer: the client's `temporal_*` series
                    # join `/metrics` (`telemetry.metrics.temporal_runtime`).
                    client = connect(
                        self._settings, runtime=temporal_runtime(), plugins=client_plugins()
                    )
                    self._client = await asyncio.wait_for(client, timeout=5.0)
                except KeyFileError as exc:  # says which file and how to fix it
                    log.error("cannot connect to Temporal: %s", exc)
                    raise Unavailable(f"the API cannot encrypt payloads: {exc}") from None
                except (RuntimeError, OSError, TimeoutError) as exc:
                    log.warning("cannot connect to Temporal: %s", exc)
                    raise Unavailable(
                        f"Temporal at {self._settings.temporal_address} is not reachable; "
                        "start it (or fix AGENTRUN_TEMPORAL_ADDRESS) and retry"
                    ) from None
            return self._client


class PayloadCodecSource:
    """The payload codec of the settings' key file, read on first use and kept.

    Separate from the Temporal client's (which a test may inject without one): the
    codec server decodes with the deployment's keys whatever client the API holds.
    A changed key file takes effect when the API restarts, like the workers'."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._codec: EncryptionCodec | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> EncryptionCodec:
        """The codec; raises `KeyFileError` for a missing or malformed key file."""
        async with self._lock:
            if self._codec is None:
                ring = await asyncio.to_thread(load_key_ring, self._settings)
                self._codec = EncryptionCodec(ring)
            return self._codec


@dataclass(frozen=True)
class ApiState:
    """What one API process holds for its whole life (built once by `create_app`)."""

    settings: Settings
    temporal: TemporalConnection
    store: TenantStores
    """Every tenant's blobs; a route gets its caller's tenant's view (`StoreDep`)."""
    segments: SegmentReader
    """Flushed event segments, read through the run's tenant's view, cached (they never change)."""
    feeds: RunFeeds
    """One events poller per followed run, shared by its SSE connections."""
    deltas: DeltaStore | None
    """The model token delta store (`AGENTRUN_DELTA_STORE`); None when the deployment
    does not stream models."""
    accounts: AccountsConnection
    """Tenants, keys, the audit log and the usage ledger (opened in the lifespan)."""
    rate_limiter: RateLimiter
    """Requests per minute per key, in this process (`AGENTRUN_API_RATE_LIMIT_*`)."""
    codec: PayloadCodecSource
    """The payload codec the codec server routes use (`api.routes.codec`)."""


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


def get_segments(state: StateDep) -> SegmentReader:
    return state.segments


def get_feeds(state: StateDep) -> RunFeeds:
    return state.feeds


def get_deltas(state: StateDep) -> DeltaStore | None:
    return state.deltas


def get_accounts(state: StateDep) -> AccountsConnection:
    return state.accounts


def get_codec(state: StateDep) -> PayloadCodecSource:
    return state.codec


async def authorize(request: Request, state: StateDep) -> None:
    """The app-wide dependency: the route's rule, then the key, its rate and its role."""
    record = call_record(request)
    route: BaseRoute | None = request.scope.get("route")
    path = getattr(route, "path", None)
    rule = rule_for_route(request.method, path) if isinstance(path, str) else None
    if rule is None:
        # Fail closed: a route nobody gave a rule is served to nobody.
        log.error("%s %s has no access rule in api.auth.RULES", request.method, path)
        raise ApiError(f"{request.method} {path} has no access rule")
    record.rule = rule
    if (
        rule.permission is None
        or (rule is DOCS and state.settings.api_public_docs)
        or (rule is METRICS and state.settings.metrics_public)
    ):
        return
    if state.settings.auth == "off":
        record.principal = dev_principal(state.settings, request.headers.get(ACTOR_HEADER))
        return
    try:
        plaintext = bearer_key(request.headers)
        principal = await asyncio.to_thread(state.accounts.keys.authenticate, plaintext)
        if principal is None:
            raise Unauthenticated("the API key is unknown, revoked or expired")
    except ApiError as refusal:
        # An attempt on a state change is audited (`api.audit_trail`), in the
        # tenant of the key it named when it named one.
        record.refused = refusal.kind
        record.presented_key_id = presented_key_id(request.headers)
        raise
    record.principal = principal
    if rule.rate_limited:
        record.rate = state.rate_limiter.check(principal.key_id)
        check_rate(record.rate)
    check_permission(principal, rule)


def get_principal(request: Request, _: Annotated[None, Depends(authorize)]) -> Principal:
    """The authenticated caller (routes with a permission only)."""
    principal = call_record(request).principal
    if principal is None:
        raise ApiError("a public route asked for the caller")
    return principal


def get_tenant(principal: Annotated[Principal, Depends(get_principal)]) -> str:
    """The caller's tenant: its key's (`settings.dev_tenant` with auth off)."""
    return principal.tenant_id


def get_store(state: StateDep, tenant: Annotated[str, Depends(get_tenant)]) -> ArtifactStore:
    """The caller's tenant's view of the artifact store (its own prefix)."""
    return state.store.for_tenant(tenant)


def get_actor(
    request: Request,
    principal: Annotated[Principal, Depends(get_principal)],
    on_behalf_of: Annotated[
        str,
        Header(
            alias=ON_BEHALF_HEADER,
            description="The end user a service key acts for (keys with the `act_as` "
            "scope only; 403 otherwise). Recorded with the key's subject.",
            examples=["alice@example.com"],
            # Checked below, with a message that says what a user name may hold.
            json_schema_extra={"pattern": f"^$|{ACTOR_PATTERN}"},
        ),
    ] = "",
) -> Actor:
    """Who acts: the key's subject, and the end user it acts for when it names one."""
    if not on_behalf_of:
        return Actor(subject=principal.subject, kind="user", tenant_id=principal.tenant_id)
    if not re.fullmatch(ACTOR_PATTERN, on_behalf_of):
        raise BadRequest(
            f"{ON_BEHALF_HEADER} must be 1-200 characters of ASCII letters, digits and ._@+-:"
        )
    if not principal.may_act_for_users:
        raise Forbidden(
            f"this key may not act on behalf of users ({ON_BEHALF_HEADER}); an admin "
            "creates keys with the act_as scope for services that do",
            kind="act-as-not-allowed",
        )
    call_record(request).on_behalf_of = on_behalf_of
    return Actor(
        subject=principal.subject,
        kind="service",
        tenant_id=principal.tenant_id,
        on_behalf_of=on_behalf_of,
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
ClientDep = Annotated[Client, Depends(get_client)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SegmentsDep = Annotated[SegmentReader, Depends(get_segments)]
FeedsDep = Annotated[RunFeeds, Depends(get_feeds)]
DeltasDep = Annotated[DeltaStore | None, Depends(get_deltas)]
AccountsDep = Annotated[AccountsConnection, Depends(get_accounts)]
CodecDep = Annotated[PayloadCodecSource, Depends(get_codec)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
TenantDep = Annotated[str, Depends(get_tenant)]
ActorDep = Annotated[Actor, Depends(get_actor)]
