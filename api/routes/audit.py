"""`/v1/audit`: the hash-chained audit log, for admins.

`GET /v1/audit` pages through the entries (oldest first, `after_seq` as the
cursor) with filters; an admin sees its own tenant's entries, an admin of the
system tenant every tenant's (or one, with `tenant`). `GET /v1/audit/verify`
recomputes the whole chain and names the first entry that does not match.

This module must not: write to the audit log (`api.audit_trail` does).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from accounts.audit import AuditRecord
from agentrun.contracts import NAME_PATTERN
from api.deps import AccountsDep, PrincipalDep, SettingsDep
from api.errors import NotFound, problems
from api.queries import Timestamp
from api.routes.admin import is_system_admin

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditPage(BaseModel):
    entries: list[AuditRecord]
    next_after_seq: int | None = Field(
        description="Pass as `after_seq` for the next page; null on the last page"
    )


class AuditVerification(BaseModel):
    ok: bool
    first_broken_seq: int | None = Field(
        description="The first entry whose hash (or link to the previous one) does not "
        "match: it, or the one before it, was altered"
    )


@router.get("", response_model=AuditPage, summary="Read the audit log", responses=problems(404))
async def read_audit(
    principal: PrincipalDep,
    settings: SettingsDep,
    accounts: AccountsDep,
    action: Annotated[
        str | None, Query(max_length=64, description="e.g. `run.cancel`", examples=["run.cancel"])
    ] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    tenant: Annotated[
        str | None,
        Query(pattern=NAME_PATTERN, description="System admins: one tenant's entries"),
    ] = None,
    since: Annotated[Timestamp | None, Query(description="At or after")] = None,
    until: Annotated[Timestamp | None, Query(description="Before")] = None,
    after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    if is_system_admin(principal, settings):
        scope = tenant
    elif tenant is None or tenant == principal.tenant_id:
        scope = principal.tenant_id
    else:
        raise NotFound(f"no tenant {tenant!r}")
    entries = await asyncio.to_thread(
        accounts.audit.query,
        scope,
        action=action,
        actor=actor,
        since=since,
        until=until,
        after_seq=after_seq,
        limit=limit,
    )
    return AuditPage(
        entries=entries, next_after_seq=entries[-1].seq if len(entries) == limit else None
    )


@router.get("/verify", response_model=AuditVerification, summary="Check the audit log's hash chain")
async def verify_audit(accounts: AccountsDep) -> AuditVerification:
    broken = await asyncio.to_thread(accounts.audit.verify)
    return AuditVerification(ok=broken is None, first_broken_seq=broken)
