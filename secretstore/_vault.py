"""The Vault backend: HashiCorp Vault or OpenBao, KV version 2, through hvac.

    store = VaultSecretStore(VaultConfig(addr="https://vault:8200", mount="secret",
                                         role_id=..., secret_id=...))
    store.put("acme", "GITHUB_TOKEN", "ghp_…")   # → secret/data/agentrun/acme/GITHUB_TOKEN

Design (why it looks like this):

* **One KV v2 path per secret**, `agentrun/<tenant>/<name>` under the configured
  mount, the value in the field `value`. Versions are KV v2's own; `delete`
  removes the metadata and every version (a deleted secret is gone, as in the
  embedded store). A Vault policy can grant agentrun exactly
  `<mount>/data/agentrun/*` and `<mount>/metadata/agentrun/*`.
* **Token or AppRole auth.** With AppRole (`role_id`/`secret_id`) the store logs
  in on first use and again when Vault answers 403 (the token expired), once per
  call; a token that is refused is a misconfiguration, not a retry.
* **Errors classified in one place** (:func:`_classified`): 404 → not found; 401/403
  → misconfigured (credentials or policy); 5xx, sealed, connection errors and
  timeouts → unavailable (retryable); anything else → misconfigured. The
  exception chain is cut (`from None`): hvac's messages may quote request data.
* **Synchronous** (hvac is): async callers use `asyncio.to_thread`. One
  `requests` session per store, guarded by a lock for the login.

This module must not: log a value or a token, or create mounts and policies (an
operator does; the test fixture does it with the root token).
"""

from __future__ import annotations

import builtins
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import hvac
import requests
from hvac import exceptions as hv

from secretstore._errors import (
    InvalidSecret,
    SecretNotFound,
    SecretStoreError,
    SecretStoreMisconfigured,
    SecretStoreUnavailable,
)
from secretstore._model import (
    SecretMeta,
    SecretValue,
    check_name,
    check_tenant,
    check_value,
    missing_names,
)

PREFIX = "agentrun"
"""Every path this store touches starts with `agentrun/` under the mount."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class VaultConfig:
    addr: str
    mount: str = "secret"
    token: str | None = None
    role_id: str | None = None
    secret_id: str | None = None
    approle_mount: str = "approle"
    namespace: str | None = None
    ca_cert: str | None = None
    timeout_seconds: float = 5.0

    def __repr__(self) -> str:  # never the token or the secret id
        return f"VaultConfig(addr={self.addr!r}, mount={self.mount!r})"


class VaultSecretStore:
    """Secrets in a Vault-API server's KV v2 engine (see the module docstring)."""

    backend = "vault"

    def __init__(self, config: VaultConfig) -> None:
        if not config.token and not (config.role_id and config.secret_id):
            raise SecretStoreMisconfigured(
                "the vault secret backend needs AGENTRUN_VAULT_TOKEN, or "
                "AGENTRUN_VAULT_ROLE_ID and AGENTRUN_VAULT_SECRET_ID (AppRole)"
            )
        self._config = config
        self._approle = not config.token
        self._lock = threading.Lock()
        self._logged_in = False
        self._client = hvac.Client(
            url=config.addr,
            token=config.token,
            namespace=config.namespace,
            verify=config.ca_cert or True,
            timeout=config.timeout_seconds,
        )

    # ------------------------------------------------------------- the calls

    def put(self, tenant: str, name: str, value: str) -> SecretMeta:
        path = self._path(tenant, name)
        check_value(value)

        def write() -> SecretMeta:
            written = self._kv.create_or_update_secret(
                path=path, secret={"value": value}, mount_point=self._config.mount
            )["data"]
            # The version this write made (a later metadata read may see another
            # put's); the secret's creation time from its metadata.
            version, at = int(written["version"]), _time(written["created_time"])
            created = at if version == 1 else self._meta(name, self._read_metadata(path)).created_at
            return SecretMeta(name=name, version=version, created_at=created, updated_at=at)

        return self._call(write, tenant, name)

    def get(self, tenant: str, name: str, version: int | None = None) -> SecretValue:
        path = self._path(tenant, name)

        def read() -> SecretValue:
            resp = self._kv.read_secret_version(
                path=path,
                version=version,
                mount_point=self._config.mount,
                raise_on_deleted_version=True,
            )
            data = resp["data"]
            value = (data.get("data") or {}).get("value")
            if not isinstance(value, str):
                raise SecretStoreMisconfigured(
                    f"{self._config.mount}/{path} has no string field `value`: it was not "
                    "written by agentrun; write it with `agentrun secrets put`"
                )
            return SecretValue(value, name=name, version=data["metadata"]["version"])

        which = f"version {version} of " if version is not None else ""
        return self._call(read, tenant, name, missing=f"{which}secret {name!r}")

    def delete(self, tenant: str, name: str) -> None:
        path = self._path(tenant, name)

        def remove() -> None:
            self._read_metadata(path)  # 404 when there is nothing to delete
            self._kv.delete_metadata_and_all_versions(path=path, mount_point=self._config.mount)

        self._call(remove, tenant, name)

    def list(self, tenant: str) -> builtins.list[SecretMeta]:
        check_tenant(tenant)

        def names() -> builtins.list[str]:
            try:
                resp = self._kv.list_secrets(
                    path=f"{PREFIX}/{tenant}", mount_point=self._config.mount
                )
            except hv.InvalidPath:
                return []
            return sorted(k for k in resp["data"]["keys"] if not k.endswith("/"))

        metas = []
        for name in self._call(names, tenant, ""):
            try:
                metas.append(self.meta(tenant, name))
            except SecretNotFound:  # deleted between the listing and the read
                continue
        return metas

    def meta(self, tenant: str, name: str) -> SecretMeta:
        """One secret's metadata."""
        path = self._path(tenant, name)
        return self._call(lambda: self._meta(name, self._read_metadata(path)), tenant, name)

    def exists(self, tenant: str, names: Sequence[str]) -> builtins.list[str]:
        check_tenant(tenant)
        present: set[str] = set()
        for name in dict.fromkeys(names):
            try:
                self.meta(tenant, name)
            except (SecretNotFound, InvalidSecret):  # a name no secret can have is missing
                continue
            present.add(name)
        return missing_names(list(names), present)

    def close(self) -> None:
        self._client.adapter.close()

    # ------------------------------------------------------------ internals

    @property
    def _kv(self) -> Any:
        return self._client.secrets.kv.v2

    def _path(self, tenant: str, name: str) -> str:
        return f"{PREFIX}/{check_tenant(tenant)}/{check_name(name)}"

    def _read_metadata(self, path: str) -> dict[str, Any]:
        resp = self._kv.read_secret_metadata(path=path, mount_point=self._config.mount)
        data: dict[str, Any] = resp["data"]
        current = data["versions"].get(str(data["current_version"])) or {}
        if current.get("deletion_time") or current.get("destroyed"):
            # Deleted by another tool (a soft delete): agentrun treats it as gone.
            raise hv.InvalidPath("current version deleted")
        return data

    @staticmethod
    def _meta(name: str, data: dict[str, Any]) -> SecretMeta:
        version = int(data["current_version"])
        current = data["versions"].get(str(version)) or {}
        return SecretMeta(
            name=name,
            version=version,
            created_at=_time(data["created_time"]),
            updated_at=_time(current.get("created_time") or data["updated_time"]),
        )

    def _login(self) -> None:
        with self._lock:
            self._client.auth.approle.login(
                role_id=self._config.role_id,
                secret_id=self._config.secret_id,
                mount_point=self._config.approle_mount,
            )
            self._logged_in = True

    def _call(
        self, fn: Callable[[], _T], tenant: str, name: str, *, missing: str | None = None
    ) -> _T:
        what = missing or (f"secret {name!r}" if name else "secrets")
        with _classified(f"{what} of tenant {tenant!r}", self._config):
            if self._approle and not self._logged_in:
                self._login()
            try:
                return fn()
            except hv.Forbidden:
                if not self._approle:
                    raise
                self._login()  # the AppRole token expired: log in again, once
                return fn()


def _time(text: str) -> datetime:
    """Vault's RFC 3339 times (nanoseconds) → aware datetimes (microseconds)."""
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).astimezone(UTC)


@contextmanager
def _classified(where: str, config: VaultConfig) -> Iterator[None]:
    """hvac and requests errors → the store's (see the module docstring)."""
    try:
        yield
    except SecretStoreError:
        raise
    except hv.InvalidPath:
        raise SecretNotFound(f"no {where}") from None
    except (hv.Forbidden, hv.Unauthorized):
        raise SecretStoreMisconfigured(
            f"Vault at {config.addr} refused agentrun's credentials for {where}: check "
            "AGENTRUN_VAULT_TOKEN (or the AppRole's role and secret id) and that its policy grants "
            f"{config.mount}/data/{PREFIX}/* and {config.mount}/metadata/{PREFIX}/*"
        ) from None
    except (hv.VaultDown, hv.InternalServerError, hv.BadGateway, hv.RateLimitExceeded):
        raise SecretStoreUnavailable(
            f"Vault at {config.addr} cannot serve {where} now (sealed, overloaded or "
            "failing); retry"
        ) from None
    except requests.RequestException as exc:
        raise SecretStoreUnavailable(
            f"Vault at {config.addr} is unreachable for {where} ({type(exc).__name__}); "
            "check AGENTRUN_VAULT_ADDR and that the server runs"
        ) from None
    except hv.VaultError as exc:
        raise SecretStoreMisconfigured(
            f"Vault at {config.addr} refused the request for {where} ({type(exc).__name__}): "
            f"check that AGENTRUN_VAULT_MOUNT={config.mount!r} is a KV version 2 engine"
        ) from None
