"""Liveness and readiness probes.

`/healthz` only says the process serves requests; `/readyz` also proves that
Temporal answers (a cheap `GetSystemInfo` with a short deadline), so a load
balancer stops sending traffic while Temporal is unreachable.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.service import RPCError

from api.deps import ClientDep, SettingsDep
from api.errors import Unavailable, problems
from api.schemas import Health, Ready

router = APIRouter(tags=["health"])

READY_TIMEOUT = 2.0


@router.get("/healthz", response_model=Health, summary="Liveness: the process is up")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness: Temporal is reachable",
    responses=problems(503),
)
async def readyz(client: ClientDep, settings: SettingsDep) -> Ready:
    try:
        await asyncio.wait_for(
            client.workflow_service.get_system_info(
                GetSystemInfoRequest(), timeout=timedelta(seconds=READY_TIMEOUT)
            ),
            timeout=READY_TIMEOUT + 0.5,
        )
    except (RPCError, TimeoutError) as exc:
        raise Unavailable(
            f"Temporal at {settings.temporal_address} does not answer: {exc}"
        ) from None
    return Ready(temporal=settings.temporal_address, namespace=settings.temporal_namespace)
