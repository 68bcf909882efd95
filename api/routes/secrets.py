"""`/v1/secrets`: the caller's tenant's secrets: store, list (metadata), delete.

    PUT    /v1/secrets/GITHUB_TOKEN   {"value": "ghp_…"}   → its metadata (201 new, 200 new version)
    GET    /v1/secrets                                      → names, versions, times
    DELETE /v1/secrets/GITHUB_TOKEN                         → 204

No route ever answers a value: runs use secrets by name (`RunSpec.secrets`), and
the worker resolves them. Storing and deleting need the `secrets` permission
(admin, operator), listing `read` (every role: names are not values). Each call
is tenant-scoped by the caller's key: another tenant's secret is a 404, the
answer of one that does not exist. The audit entries (`secret.put`,
`secret.delete`, target `secret/<name>`: `api.audit_trail.audit_target`) name the
secret, never its value. Values shorter than 8
characters are refused (422): redaction could not hide them in tool output.

This module must not: echo, log or return a value.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from api.deps import AccountsDep, TenantDep
from api.errors import problems
from api.secret_grants import secret_call
from secretstore import (
    MAX_VALUE_CHARS,
    MIN_VALUE_CHARS,
    SECRET_NAME_PATTERN,
    InvalidSecret,
    SecretMeta,
    check_value,
)

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])

SecretName = Annotated[
    str,
    Path(
        pattern=SECRET_NAME_PATTERN,
        description="The secret's name: a letter, then up to 127 letters, digits, `_`, `.`, `-`",
        examples=["GITHUB_TOKEN"],
    ),
]


class SecretPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: SecretStr = Field(
        min_length=MIN_VALUE_CHARS,
        max_length=MAX_VALUE_CHARS,
        description=f"The value ({MIN_VALUE_CHARS}-{MAX_VALUE_CHARS} characters; shorter "
        "values could not be redacted from tool output; no NUL). Never returned.",
        # Documents the NUL rule in the OpenAPI schema (the validator below enforces it).
        json_schema_extra={"pattern": r"^[^\u0000]*$"},
    )

    @field_validator("value", mode="before")
    @classmethod
    def _redactable(cls, value: object) -> object:
        # The store's own message (why the rule exists), before pydantic's generic one.
        if isinstance(value, str):
            try:
                check_value(value)
            except InvalidSecret as exc:
                raise ValueError(str(exc)) from None
        return value


class SecretList(BaseModel):
    secrets: list[SecretMeta] = Field(description="By name; metadata only, never values")


@router.put(
    "/{name}",
    response_model=SecretMeta,
    summary="Store a secret (a new version when it exists)",
    responses={
        201: {"model": SecretMeta, "description": "A new secret (version 1)"},
        **problems(422, 503),
    },
)
async def put_secret(
    name: SecretName,
    body: Annotated[SecretPut, Body()],
    response: Response,
    tenant: TenantDep,
    accounts: AccountsDep,
) -> SecretMeta:
    meta = await secret_call(accounts.secrets.put, tenant, name, body.value.get_secret_value())
    if meta.version == 1:
        response.status_code = 201
    return meta


@router.get("", response_model=SecretList, summary="List the tenant's secrets (no values)")
async def list_secrets(tenant: TenantDep, accounts: AccountsDep) -> SecretList:
    return SecretList(secrets=await secret_call(accounts.secrets.list, tenant))


@router.delete(
    "/{name}",
    status_code=204,
    summary="Delete a secret with every version",
    responses=problems(404, 503),
)
async def delete_secret(name: SecretName, tenant: TenantDep, accounts: AccountsDep) -> Response:
    await secret_call(accounts.secrets.delete, tenant, name)
    return Response(status_code=204)
