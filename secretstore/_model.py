"""What the store hands out: a value that will not print itself, and metadata.

Design (why it looks like this):

* **`SecretValue` hides its value from every accidental path**: `repr`, `str`,
  f-strings and `%` formatting show `SecretValue(<hidden>)`; it refuses to be
  pickled or copied into a pydantic model, so it cannot slip into an activity's
  input or output (which Temporal records in history). Code that needs the value
  says so: `.reveal()`.
* **Names and values are checked in one place** (:func:`check_name`,
  :func:`check_value`), by every backend, so both refuse the same inputs. A value
  shorter than :data:`MIN_VALUE_CHARS` is refused: redaction replaces every
  occurrence of a granted value in tool output, and a 3-letter value would match
  ordinary text everywhere (and could not be hidden reliably).

This module must not: log, or hold anything but pure data and checks.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, NoReturn

from pydantic import BaseModel

from agentrun.contracts import NAME_PATTERN
from secretstore._errors import InvalidSecret

SECRET_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$"  # noqa: S105 (a pattern)
"""A stored secret's name: a letter, then up to 127 letters, digits, `_`, `.`, `-`.
No `/`: the name is one path segment of the backend (`agentrun/<tenant>/<name>`)."""

MIN_VALUE_CHARS = 8
"""Shortest value stored: redaction cannot hide shorter ones without mangling output."""

MAX_VALUE_CHARS = 65_536
"""Longest value stored (tokens, keys and PEM certificates fit easily)."""

KEEP_VERSIONS = 10
"""Versions kept per secret (KV v2's default `max_versions`, and the embedded store's)."""


class SecretMeta(BaseModel):
    """A secret's metadata: never its value."""

    name: str
    version: int
    """The current version (1 for a new secret; each `put` adds one)."""
    created_at: datetime
    """When the secret's first version was written."""
    updated_at: datetime
    """When its current version was written."""


class SecretValue:
    """A secret's value, hidden from `repr`, `str`, formatting and pickling.

    >>> value = store.get("acme", "GITHUB_TOKEN")
    >>> print(value)            # SecretValue(<hidden>)
    >>> headers["Authorization"] = f"Bearer {value.reveal()}"
    """

    __slots__ = ("_value", "name", "version")

    def __init__(self, value: str, *, name: str = "", version: int | None = None) -> None:
        self._value = value
        self.name = name
        """The secret's name (for `[REDACTED:name]` and messages)."""
        self.version = version
        """The version read (None when the backend does not say)."""

    def reveal(self) -> str:
        """The value itself: use it, never log it."""
        return self._value

    def __repr__(self) -> str:
        return "SecretValue(<hidden>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SecretValue cannot be pickled or copied out of the worker")

    @classmethod
    def __get_pydantic_core_schema__(cls, *_: Any) -> NoReturn:
        raise TypeError(
            "a SecretValue cannot be a pydantic field: activity inputs and outputs land "
            "in Temporal history; pass the secret's name and resolve it in the worker"
        )


def check_tenant(tenant: str) -> str:
    if not re.fullmatch(NAME_PATTERN, tenant):
        raise InvalidSecret(f"{tenant!r} is not a tenant id (it must match {NAME_PATTERN})")
    return tenant


def check_name(name: str) -> str:
    """`name`, or :class:`InvalidSecret` saying what a secret's name may hold."""
    if not re.fullmatch(SECRET_NAME_PATTERN, name):
        raise InvalidSecret(
            f"{name[:140]!r} is not a secret name: start with a letter, then up to 127 "
            "letters, digits, `_`, `.` or `-` (no `/`)"
        )
    return name


def check_value(value: str) -> str:
    """`value`, or :class:`InvalidSecret` (the message never shows the value)."""
    if len(value) < MIN_VALUE_CHARS:
        raise InvalidSecret(
            f"a secret's value must be at least {MIN_VALUE_CHARS} characters: shorter "
            "values cannot be redacted from tool output reliably"
        )
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidSecret(f"a secret's value must be at most {MAX_VALUE_CHARS} characters")
    if "\x00" in value:
        raise InvalidSecret("a secret's value must not contain NUL characters")
    return value


def missing_names(names: list[str] | tuple[str, ...], present: set[str]) -> list[str]:
    """The names not in `present`, once each, in the order given."""
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        if name not in present and name not in seen:
            seen.add(name)
            out.append(name)
    return out
