"""Open the deployment's secret store from its settings.

    store = open_secret_store(settings)                  # worker, CLI tools
    store = open_secret_store(settings, database=db)     # API: its accounts database

This module must not: read the environment (settings come from the edges).
"""

from __future__ import annotations

from accounts.db import Database, default_database_url
from agentrun.config import Settings
from secretstore._embedded import EmbeddedSecretStore
from secretstore._key import load_key
from secretstore._protocol import SecretStore
from secretstore._vault import VaultConfig, VaultSecretStore


def vault_config(settings: Settings) -> VaultConfig:
    return VaultConfig(
        addr=settings.vault_addr,
        mount=settings.vault_mount,
        token=settings.vault_token,
        role_id=settings.vault_role_id,
        secret_id=settings.vault_secret_id,
        approle_mount=settings.vault_approle_mount,
        namespace=settings.vault_namespace,
        ca_cert=str(settings.vault_ca_cert) if settings.vault_ca_cert else None,
        timeout_seconds=settings.vault_timeout_seconds,
    )


def open_secret_store(settings: Settings, *, database: Database | None = None) -> SecretStore:
    """The store `AGENTRUN_SECRET_BACKEND` names.

    Embedded: on `database` when given (the caller keeps owning it), else on the
    accounts database of the settings, migrated to head (idempotent; a worker may
    start before the API) and closed with the store. Vault: connects lazily (the
    first call logs in), so a process starts while Vault is down.
    """
    if settings.secret_backend == "vault":  # noqa: S105 (a backend's name)
        return VaultSecretStore(vault_config(settings))
    key = load_key(settings)
    if database is not None:
        return EmbeddedSecretStore(database, key)
    db = Database(settings.database_url or default_database_url(settings.state_dir))
    try:
        db.upgrade()
    except BaseException:
        db.close()
        raise
    return EmbeddedSecretStore(db, key, owns_db=True)
