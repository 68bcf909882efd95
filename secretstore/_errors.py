"""The secret store's errors, one class per thing a caller can act on.

    SecretStoreError
    ├── SecretNotFound          no such secret (or version) in the tenant (API: 404)
    ├── InvalidSecret           a name or value the caller must fix (API: 422)
    ├── SecretStoreUnavailable  the backend is down, sealed or slow: retry (API: 503)
    └── SecretStoreMisconfigured  wrong credentials, key or mount: an operator must
                                  fix the deployment; retrying does not help (API: 503)

Messages name the tenant, the secret and the backend, and say how to fix the
problem; they never contain a value, a token or a key.

This module must not: import anything but the standard library.
"""

from __future__ import annotations


class SecretStoreError(Exception):
    """Base of every error the secret store raises on purpose."""

    retryable = False
    """Whether the same call may succeed later without anyone changing anything."""


class SecretNotFound(SecretStoreError):
    """The secret (or the version asked for) does not exist in the tenant's store."""


class InvalidSecret(SecretStoreError):
    """A name or value that breaks a rule; the message names the rule."""


class SecretStoreUnavailable(SecretStoreError):
    """The backend cannot answer now (unreachable, sealed, overloaded, 5xx)."""

    retryable = True


class SecretStoreMisconfigured(SecretStoreError):
    """The deployment's settings do not work: refused credentials, a missing mount,
    or an embedded key that does not decrypt what the database holds."""
