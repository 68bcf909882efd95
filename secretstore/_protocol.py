"""The interface both backends implement (and the contract tests check).

Synchronous on purpose: hvac and SQLAlchemy here are synchronous; async callers
(the API, activities) call it through `asyncio.to_thread`, never on the event loop.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Protocol

from secretstore._model import SecretMeta, SecretValue


class SecretStore(Protocol):
    """Per-tenant named secrets with versions; values only through `get`."""

    backend: str
    """`embedded` or `vault` (for messages and health output)."""

    def put(self, tenant: str, name: str, value: str) -> SecretMeta:
        """Store a new version of `name` (version 1 when it is new)."""
        ...

    def get(self, tenant: str, name: str, version: int | None = None) -> SecretValue:
        """The current (or the given) version's value; :class:`SecretNotFound` if none."""
        ...

    def delete(self, tenant: str, name: str) -> None:
        """Remove the secret with every version; :class:`SecretNotFound` if none."""
        ...

    def list(self, tenant: str) -> builtins.list[SecretMeta]:
        """The tenant's secrets, by name (metadata only)."""
        ...

    def exists(self, tenant: str, names: Sequence[str]) -> builtins.list[str]:
        """The names among `names` the tenant has no secret of (empty: all exist)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
