"""`/v1/admin`: tenants, their quotas and their API keys (role `admin`).

An admin manages its own tenant: lists it, creates, lists and revokes its keys.
Only an admin of the system tenant (`AGENTRUN_DEV_TENANT`, the one the bootstrap
created) acts on every tenant: creates tenants and sets quotas (a tenant must not
raise its own limits). Another tenant's tenant or key is a 404, the same answer as
one that does not exist.

    POST   /v1/admin/tenants                  {"tenant_id": "acme", "quota": {...}}
    POST   /v1/admin/tenants/acme/keys        {"role": "operator", "subject": "ci-bot"}
                                              → the key's plaintext, shown this once
    DELETE /v1/admin/keys/0123456789ab

This module must not: return a key's hash, or a plaintext key anywhere but in the
answer to its creation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, Field, model_validator

from accounts import errors as accounts_errors
from accounts.keys import KeyRecord
from accounts.principal import Principal
from accounts.roles import Role
from accounts.tenants import Quota, TenantRecord
from agentrun.config import Settings
from agentrun.contracts import NAME_PATTERN
from api.auth import call_record
from api.deps import AccountsDep, PrincipalDep, SettingsDep
from api.errors import ApiError, BadRequest, Conflict, Forbidden, NotFound, problems

router = APIRouter(prefix="/v1/admin", tags=["admin"])

KEY_ID_PATTERN = r"^[0-9a-f]{12}$"
TenantId = Annotated[str, Path(pattern=NAME_PATTERN, description="The tenant id")]
KeyId = Annotated[str, Path(pattern=KEY_ID_PATTERN, description="The key id (`ar_<key_id>_…`)")]

_T = TypeVar("_T")


_NUMERIC_QUOTAS = (
    "max_concurrent_runs",
    "max_steps_per_run",
    "max_tokens_per_run",
    "token_budget",
    "cost_budget_usd",
)


class QuotaRequest(Quota):
    """A tenant's quota, as set through the API (`accounts.tenants.Quota`)."""

    queue_when_busy: bool = Field(
        default=False,
        description="At max_concurrent_runs, queue a launch (202, the run waits `queued` "
        "and starts when a run ends) instead of refusing it with 429 and Retry-After",
        strict=True,  # `0` is no boolean
    )

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # Pydantic would read `false` as 0 for a number: the document says it is none.
        if isinstance(data, dict):
            for name in _NUMERIC_QUOTAS:
                if isinstance(data.get(name), bool):
                    raise ValueError(f"{name} must be a number or null, not a boolean")
        return data


class TenantCreate(BaseModel):
    tenant_id: str = Field(pattern=NAME_PATTERN, examples=["acme"])
    name: str | None = Field(default=None, min_length=1, max_length=200)
    quota: QuotaRequest | None = None


class TenantList(BaseModel):
    tenants: list[TenantRecord]


class KeyCreate(BaseModel):
    role: Role
    subject: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$",
        description="Who holds the key (the actor its calls are recorded as)",
        examples=["ci-bot"],
    )
    expires_at: datetime | None = Field(
        default=None, description="Refused after this time; must be in the future (422)"
    )
    act_as: bool = Field(
        default=False,
        description="May name an end user it acts for (`X-Agentrun-On-Behalf-Of`)",
    )


class KeyCreated(BaseModel):
    key: KeyRecord
    api_key: str = Field(
        description="The key itself, `ar_<key_id>_<secret>`: shown this once, never again"
    )


class KeyList(BaseModel):
    keys: list[KeyRecord]


def is_system_admin(principal: Principal, settings: Settings) -> bool:
    """An admin of the system tenant (the bootstrap's), who acts on every tenant."""
    return principal.role == Role.ADMIN and principal.tenant_id == settings.dev_tenant


def _visible(principal: Principal, settings: Settings, tenant: str) -> None:
    """404 for a tenant the caller may not see (the answer of a missing one)."""
    if tenant != principal.tenant_id and not is_system_admin(principal, settings):
        raise NotFound(f"no tenant {tenant!r}")


def _system_only(principal: Principal, settings: Settings, what: str) -> None:
    if not is_system_admin(principal, settings):
        raise Forbidden(f"only an admin of the system tenant ({settings.dev_tenant!r}) may {what}")


@contextmanager
def _accounts_errors() -> Iterator[None]:
    """The accounts floor's errors as problems (their messages say what to fix)."""
    try:
        yield
    except accounts_errors.NotFound as exc:
        raise NotFound(str(exc)) from None
    except accounts_errors.Conflict as exc:
        raise Conflict(str(exc), kind="already-exists") from None
    except accounts_errors.InvalidInput as exc:
        raise BadRequest(str(exc)) from None


async def _call(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    with _accounts_errors():
        return await asyncio.to_thread(fn, *args, **kwargs)


@router.post(
    "/tenants",
    status_code=201,
    response_model=TenantRecord,
    summary="Create a tenant (system admins)",
    responses=problems(403, 409, 422),
)
async def create_tenant(
    body: Annotated[TenantCreate, Body()],
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    accounts: AccountsDep,
) -> TenantRecord:
    call_record(request).target = body.tenant_id
    _system_only(principal, settings, "create tenants")
    return await _call(accounts.tenants.create, body.tenant_id, body.name, body.quota)


@router.get(
    "/tenants",
    response_model=TenantList,
    summary="List tenants (an admin sees its own; system admins all)",
)
async def list_tenants(
    principal: PrincipalDep, settings: SettingsDep, accounts: AccountsDep
) -> TenantList:
    if is_system_admin(principal, settings):
        return TenantList(tenants=await _call(accounts.tenants.list))
    own = await _call(accounts.tenants.get, principal.tenant_id)
    return TenantList(tenants=[own] if own is not None else [])


@router.put(
    "/tenants/{tenant}/quota",
    response_model=TenantRecord,
    summary="Set a tenant's quota (system admins)",
    responses=problems(403, 404, 422),
)
async def set_quota(
    tenant: TenantId,
    quota: Annotated[QuotaRequest, Body()],
    principal: PrincipalDep,
    settings: SettingsDep,
    accounts: AccountsDep,
) -> TenantRecord:
    _visible(principal, settings, tenant)
    _system_only(principal, settings, "set quotas")
    return await _call(accounts.tenants.set_quota, tenant, quota)


@router.post(
    "/tenants/{tenant}/keys",
    status_code=201,
    response_model=KeyCreated,
    summary="Create an API key (its plaintext is in this answer only)",
    responses=problems(404, 422),
)
async def create_key(
    tenant: TenantId,
    body: Annotated[KeyCreate, Body()],
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    accounts: AccountsDep,
) -> KeyCreated:
    _visible(principal, settings, tenant)
    record, plaintext = await _call(
        accounts.keys.create,
        tenant,
        body.role,
        body.subject,
        expires_at=body.expires_at,
        act_as=body.act_as,
    )
    call_record(request).target = record.key_id
    return KeyCreated(key=record, api_key=plaintext)


@router.get(
    "/tenants/{tenant}/keys",
    response_model=KeyList,
    summary="List a tenant's API keys (never their secrets)",
    responses=problems(404, 422),
)
async def list_keys(
    tenant: TenantId, principal: PrincipalDep, settings: SettingsDep, accounts: AccountsDep
) -> KeyList:
    _visible(principal, settings, tenant)
    if await _call(accounts.tenants.get, tenant) is None:
        raise NotFound(f"no tenant {tenant!r}")
    return KeyList(keys=await _call(accounts.keys.list, tenant))


@router.delete(
    "/keys/{key_id}",
    response_model=KeyRecord,
    summary="Revoke an API key (at once, for good)",
    responses=problems(404, 422),
)
async def revoke_key(
    key_id: KeyId, principal: PrincipalDep, settings: SettingsDep, accounts: AccountsDep
) -> KeyRecord:
    scope = None if is_system_admin(principal, settings) else principal.tenant_id
    if not await _call(accounts.keys.revoke, key_id, scope):
        raise NotFound(f"no key {key_id!r}")
    record = await _call(accounts.keys.get, key_id)
    if record is None:  # deleted between the two calls; nothing to show
        raise ApiError("the key vanished while it was revoked")
    return record
