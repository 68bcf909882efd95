"""Typed FastAPI dependencies: settings, the Temporal client, tenant, actor, store.

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
from typing import Annotated

from fastapi import Depends, Header, Request
from temporalio.client import Client

from activities.artifact_store import ArtifactStore
from agentrun.config import Settings
from agentrun.contracts import Actor
from agentrun.temporal import connect
from api.errors import BadRequest, Unavailable

log = logging.getLogger("agentrun.api")

ACTOR_HEADER = "X-Agentrun-Actor"
ANONYMOUS = "anonymous"
_ACTOR_RE = re.compile(r"^[\w.@+\-:]{1,200}$")


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


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_client(request: Request) -> Client:
    conn: TemporalConnection = request.app.state.temporal
    return await conn.get()


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def get_tenant(settings: Annotated[Settings, Depends(get_settings)]) -> str:
    """The caller's tenant. Without API keys, the deployment's dev tenant."""
    return settings.dev_tenant


def get_actor(
    tenant: Annotated[str, Depends(get_tenant)],
    x_agentrun_actor: Annotated[
        str | None,
        Header(
            alias=ACTOR_HEADER,
            description="Who is acting (audit trail); `anonymous` when absent.",
            examples=["alice@example.com"],
        ),
    ] = None,
) -> Actor:
    subject = (x_agentrun_actor or "").strip() or ANONYMOUS
    if not _ACTOR_RE.match(subject):
        raise BadRequest(f"{ACTOR_HEADER} must be 1-200 characters of letters, digits and ._@+-:")
    return Actor(subject=subject, kind="user", tenant_id=tenant)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ClientDep = Annotated[Client, Depends(get_client)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
TenantDep = Annotated[str, Depends(get_tenant)]
ActorDep = Annotated[Actor, Depends(get_actor)]
