"""The API's side of the secret store: its errors as problems, and the launch check.

    await check_grants(accounts, tenant, spec)   # 422 naming the secrets it lacks
    with secret_errors(): ...                    # store errors → 404/422/503

A run may only be granted its own tenant's secrets: `RunSpec.secrets` names are
looked up in the caller's tenant (`SecretStore.exists`), so a name that only
another tenant holds is as missing as one nobody holds, and the launch is refused
before anything starts, never silently run without the secret.

This module must not: read a secret's value (only names and metadata pass here).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from agentrun.contracts import RunSpec
from api.accounts_conn import AccountsConnection
from api.errors import BadRequest, NotFound, Unavailable
from secretstore import (
    InvalidSecret,
    SecretNotFound,
    SecretStoreError,
    SecretStoreMisconfigured,
)

__all__ = ["check_grants", "secret_call", "secret_errors"]

log = logging.getLogger("agentrun.api")
_T = TypeVar("_T")


@contextmanager
def secret_errors() -> Iterator[None]:
    """The secret store's errors as problems (their messages carry no value)."""
    try:
        yield
    except SecretNotFound as exc:
        raise NotFound(str(exc)) from None
    except InvalidSecret as exc:
        raise BadRequest(str(exc)) from None
    except SecretStoreMisconfigured as exc:
        log.error("secret store misconfigured: %s", exc)
        raise Unavailable(f"the secret store cannot be used: {exc}") from None
    except SecretStoreError as exc:
        raise Unavailable(f"the secret store is unavailable: {exc}") from None


async def secret_call(fn: Callable[..., _T], *args: Any) -> _T:
    """`fn(*args)` in a thread (the store is synchronous), its errors as problems."""
    with secret_errors():
        return await asyncio.to_thread(fn, *args)


async def check_grants(accounts: AccountsConnection, tenant: str, spec: RunSpec) -> None:
    """422 naming every secret the spec grants that the tenant does not have."""
    if not spec.secrets:
        return
    missing = await secret_call(accounts.secrets.exists, tenant, list(spec.secrets))
    if missing:
        names = ", ".join(missing)
        raise BadRequest(
            f"the run is granted secrets this tenant does not have: {names}; store them "
            "first (`PUT /v1/secrets/{name}` or `agentrun secrets put NAME`)",
            errors=[
                {
                    "loc": ["body", "secrets", str(spec.secrets.index(name))],
                    "msg": f"no secret {name!r} in this tenant",
                    "type": "unknown_secret",
                }
                for name in missing
            ],
        )
