"""The API's accounts database: opened once at start-up, with its stores (and the
tenants' secret store, `secretstore`, on it or on Vault).

    accounts = AccountsConnection(settings)   # in create_app: touches nothing yet
    key = accounts.open()                      # in the lifespan (a thread): migrate,
                                               # bootstrap; the admin key on first start
    accounts.keys.authenticate(plaintext)      # then: the stores

Design (why it looks like this):

* **Opened in the lifespan, not in `create_app`**: building an app (for its OpenAPI
  document, in tests and tools) must not create a database file.
* **Migrations and the bootstrap run at every start** (both are idempotent): a fresh
  state directory gets its schema and its first admin key, so the README's two
  commands work from a fresh clone; the key is written to `admin_key_file` (mode
  0600), where the CLI finds it, and printed once on stderr.
* **Not open means unavailable**: a route that needs the database before it is
  open answers 503, never a 500.

This module must not: log a key, or the database URL (it may hold a password).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO, TypeVar

from accounts.audit import AuditLog
from accounts.bootstrap import bootstrap_admin
from accounts.db import Database, default_database_url
from accounts.keys import ApiKeys
from accounts.tenants import Tenants
from accounts.usage import PriceTable, UsageLedger
from agentrun.config import Settings
from api.errors import Unavailable
from secretstore import SecretStore, open_secret_store

__all__ = ["AccountsConnection"]

log = logging.getLogger("agentrun.api")
_T = TypeVar("_T")


class AccountsConnection:
    """The database and the stores on it, for the life of the API process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._db: Database | None = None
        self._keys: ApiKeys | None = None
        self._tenants: Tenants | None = None
        self._audit: AuditLog | None = None
        self._usage: UsageLedger | None = None
        self._secrets: SecretStore | None = None
        self.prices = PriceTable.from_json(settings.price_table)

    def open(self) -> str | None:
        """Connect, migrate to head and bootstrap; the new admin key on first start."""
        settings = self._settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url or default_database_url(settings.state_dir))
        db.upgrade()
        key_file = settings.admin_key_path
        key = bootstrap_admin(db, settings.dev_tenant, key_file)
        self._db = db
        self._keys = ApiKeys(db)
        self._tenants = Tenants(db)
        self._audit = AuditLog(db)
        self._usage = UsageLedger(db)
        # The tenants' secrets: on this database (embedded) or a Vault server.
        self._secrets = open_secret_store(settings, database=db)
        if key is not None:
            # Printed once, to a person only: a service's stderr ends up in log files,
            # and a key never goes into a log (the file is where the CLI finds it).
            shown = f":\n  {key}" if _is_terminal(sys.stderr) else ""
            print(
                f"agentrun: created tenant {settings.dev_tenant!r} and its first admin key, "
                f"stored in {key_file} (mode 0600){shown}",
                file=sys.stderr,
            )
        return key

    def close(self) -> None:
        if self._secrets is not None:
            self._secrets.close()
            self._secrets = None
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> Database:
        return _opened(self._db)

    @property
    def keys(self) -> ApiKeys:
        return _opened(self._keys)

    @property
    def tenants(self) -> Tenants:
        return _opened(self._tenants)

    @property
    def audit(self) -> AuditLog:
        return _opened(self._audit)

    @property
    def usage(self) -> UsageLedger:
        return _opened(self._usage)

    @property
    def secrets(self) -> SecretStore:
        return _opened(self._secrets)


def _opened(store: _T | None) -> _T:
    if store is None:
        raise Unavailable("the accounts database is not open yet; retry in a moment")
    return store


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False
