"""The accounts floor's errors, one class per thing a caller can act on.

    AccountsError
    ├── NotFound       no such tenant or key (the API answers 404)
    ├── Conflict       it exists already (409)
    └── InvalidInput   a name, role or date the caller must fix (422)

Messages say what was wrong and how to fix it; they never contain a key's secret.

This module must not: import anything but the standard library.
"""

from __future__ import annotations


class AccountsError(Exception):
    """Base of every error the accounts stores raise on purpose."""


class NotFound(AccountsError):
    """The tenant or key named does not exist (or is not the caller's)."""


class Conflict(AccountsError):
    """The tenant or key to create exists already."""


class InvalidInput(AccountsError):
    """An argument the caller must fix: the message names it and the rule."""
