"""Tenants' secrets: stored encrypted, handed out by name, never printed.

Two backends behind one interface (:class:`SecretStore`), chosen by
`AGENTRUN_SECRET_BACKEND`:

* `embedded` (default): AES-256-GCM ciphertext in the accounts database, key from
  `AGENTRUN_SECRETS_KEY` or a key file created once with mode 0600 (`_embedded`).
* `vault`: a HashiCorp Vault or OpenBao server, KV version 2, at
  `<mount>/agentrun/<tenant>/<name>`, token or AppRole auth (`_vault`).

    store = open_secret_store(settings)
    meta = store.put("acme", "GITHUB_TOKEN", token)     # SecretMeta, never the value
    value = store.get("acme", "GITHUB_TOKEN")           # SecretValue: repr hides it
    client.headers["Authorization"] = f"Bearer {value.reveal()}"
    store.exists("acme", spec.secrets)                  # the names it lacks

Every call is synchronous (hvac is): async code calls it through
`asyncio.to_thread`. The API manages secrets (`/v1/secrets`) and checks a run's
grants at launch; the worker resolves granted values for the egress broker and
for redaction, in the worker process only: a value is never an activity's input
or output, so it never reaches Temporal history.

A floor of its own: it imports `agentrun` and `accounts` only; `api`, `cli`,
`activities` and `worker.py` may import it.

This package must not: log a value, a token or a key, or return a value anywhere
but from `get`.
"""

from secretstore._errors import (
    InvalidSecret,
    SecretNotFound,
    SecretStoreError,
    SecretStoreMisconfigured,
    SecretStoreUnavailable,
)
from secretstore._model import (
    KEEP_VERSIONS,
    MAX_VALUE_CHARS,
    MIN_VALUE_CHARS,
    SECRET_NAME_PATTERN,
    SecretMeta,
    SecretValue,
    check_name,
    check_value,
)
from secretstore._open import open_secret_store
from secretstore._protocol import SecretStore

__all__ = [
    "KEEP_VERSIONS",
    "MAX_VALUE_CHARS",
    "MIN_VALUE_CHARS",
    "SECRET_NAME_PATTERN",
    "InvalidSecret",
    "SecretMeta",
    "SecretNotFound",
    "SecretStore",
    "SecretStoreError",
    "SecretStoreMisconfigured",
    "SecretStoreUnavailable",
    "SecretValue",
    "check_name",
    "check_value",
    "open_secret_store",
]
