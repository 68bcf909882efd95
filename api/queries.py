"""The run listing's visibility query and its cursor: pure functions, no I/O.

`GET /v1/runs` turns its filters into a Temporal visibility query (the SQL-like
language the Web UI's search box speaks) and hands Temporal's page token back
to the client as an opaque `cursor`. Both are built here, where a unit test can
read every query and cursor without a server.

Design (why it looks like this):

- Nothing the user sent is interpolated raw. Every value goes through
  :func:`_literal`, which refuses quotes, backslashes and control characters
  outright instead of escaping them: an escape the visibility parser reads
  differently from us would be an injection, a refusal cannot be.
- The custom search attributes are named from `agentrun.search_attributes`, so
  a rename there renames them here; Temporal's own attributes (`ExecutionStatus`,
  `StartTime`) are constants below.
- A cursor carries a tag of the query it belongs to, so a cursor reused with
  other filters (or a made-up one) is refused before it ever reaches Temporal.

Invalid input raises :class:`InvalidListing`; the route answers it with a 422, or
a 404 for a well-formed cursor that names no page (:class:`UnknownCursor`).

This module must not: import FastAPI or the Temporal client, or talk to anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator

from agentrun.contracts import RunStatus
from agentrun.search_attributes import (
    SA_AGENT,
    SA_LABELS,
    SA_STATUS,
    SA_TENANT,
    WORKFLOW_TYPE,
)

__all__ = [
    "CURSOR_PATTERN",
    "CURSOR_VERSION",
    "LABEL_FILTER",
    "InvalidListing",
    "Timestamp",
    "UnknownCursor",
    "build_list_query",
    "check_label_filter",
    "decode_cursor",
    "encode_cursor",
]

_UNSAFE = "'\"\\\\\\x00-\\x1f\\x7f"
"""The characters no filter value may hold (a regex class body): quotes, backslash,
control characters. Written without escaping the double quote, so the same pattern
reads alike in Python and in the OpenAPI document (ECMA-262)."""
LABEL_FILTER = f"^[A-Za-z0-9_.-]{{1,63}}=[^{_UNSAFE}]{{0,200}}$"
"""`key=value`; quotes, backslashes and control characters are refused outright,
so no filter value can ever break out of its string literal in the visibility query.
Matched with `re.fullmatch`: Python's `$` also matches before a final newline."""
_SAFE_LITERAL = re.compile(f"[^{_UNSAFE}]*")
CURSOR_PATTERN = "^[A-Za-z0-9_-]{1,4096}$"
"""What a `cursor` looks like (URL-safe base64 without padding); whether it belongs
to the listing is :func:`decode_cursor`'s call."""

WORKFLOW_TYPE_ATTR = "WorkflowType"
EXECUTION_STATUS = "ExecutionStatus"
START_TIME = "StartTime"
"""Temporal's own search attributes (every workflow has them)."""

CURSOR_VERSION = b"c1"
_TAG_BYTES = 8


class InvalidListing(ValueError):
    """A filter or cursor the listing refuses; the message tells the caller why."""


class UnknownCursor(InvalidListing):
    """A well-formed cursor that names no page of this listing (another listing's,
    made up, or expired); the route answers it with a 404, as any unknown name."""


def _iso_only(value: Any) -> Any:
    """Timestamps must be RFC 3339 strings; pydantic alone would also take `0.5` as
    seconds since the epoch, which the OpenAPI `date-time` format does not allow."""
    if isinstance(value, str) and not re.match(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise ValueError("expected an RFC 3339 date-time, e.g. 2025-01-01T00:00:00Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_iso_only)]
"""A `created_after`/`created_before` filter value."""


def _literal(value: str) -> str:
    if not _SAFE_LITERAL.fullmatch(value):
        raise InvalidListing(
            "filter values may not contain quotes, backslashes or control characters"
        )
    return f"'{value}'"


def _timestamp(value: datetime) -> str:
    """A UTC literal; a naive datetime is taken to be UTC already."""
    utc = value
    if value.tzinfo is not None:
        try:
            utc = value.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            # Within hours of the calendar's ends: UTC falls outside years 1-9999, and
            # the end it falls past bounds every start time alike.
            utc = datetime.min if value.year == 1 else datetime.max
    # Not `strftime("%Y")`: it writes year 1 as "1", which Temporal cannot parse.
    return _literal(utc.isoformat(timespec="microseconds") + "Z")


def _status_clause(status: RunStatus) -> str:
    """Runs the workflow reports in `status`, plus the executions Temporal ended
    itself (terminated, timed out …), which never got to update the attribute."""
    own = f"{SA_STATUS.name} = {_literal(status.value)}"
    if status == RunStatus.FAILED:
        return f"({own} OR {EXECUTION_STATUS} IN ('Failed', 'Terminated', 'TimedOut'))"
    if status == RunStatus.CANCELLED:
        return f"({own} OR {EXECUTION_STATUS} = 'Canceled')"
    if status == RunStatus.COMPLETED:
        return own
    return f"({own} AND {EXECUTION_STATUS} = 'Running')"


def check_label_filter(label: str) -> None:
    """Refuse a label filter that is not `key=value` (see :data:`LABEL_FILTER`)."""
    if not re.fullmatch(LABEL_FILTER, label):
        raise InvalidListing(
            f"label filter {label[:80]!r} must be key=value (key: [A-Za-z0-9_.-]{{1,63}}; "
            "value: up to 200 characters without quotes or backslashes)"
        )


def build_list_query(
    tenant: str,
    statuses: list[RunStatus],
    agent: str | None,
    labels: list[str],
    created_after: datetime | None,
    created_before: datetime | None,
) -> str:
    """The visibility query for a listing of `tenant`'s runs: clauses joined by
    `AND`, e.g. `AgentRunTenant = 'acme' AND WorkflowType = 'AgentRunWorkflow' AND
    ExecutionStatus != 'ContinuedAsNew' AND AgentRunAgent = 'default'`.

    Raises :class:`InvalidListing` for a label that is not `key=value` or any value
    that could break out of its literal.
    """
    for label in labels:
        check_label_filter(label)
    clauses = [
        f"{SA_TENANT.name} = {_literal(tenant)}",
        f"{WORKFLOW_TYPE_ATTR} = {_literal(WORKFLOW_TYPE)}",
        # Each continue-as-new leaves a closed execution behind: list runs, not executions.
        f"{EXECUTION_STATUS} != 'ContinuedAsNew'",
    ]
    if statuses:
        clauses.append("(" + " OR ".join(_status_clause(s) for s in dict.fromkeys(statuses)) + ")")
    if agent:
        clauses.append(f"{SA_AGENT.name} = {_literal(agent)}")
    clauses.extend(f"{SA_LABELS.name} = {_literal(label)}" for label in dict.fromkeys(labels))
    if created_after:
        clauses.append(f"{START_TIME} >= {_timestamp(created_after)}")
    if created_before:
        clauses.append(f"{START_TIME} < {_timestamp(created_before)}")
    return " AND ".join(clauses)


def _query_tag(query: str) -> bytes:
    return hashlib.sha256(query.encode()).digest()[:_TAG_BYTES]


def encode_cursor(query: str, token: bytes) -> str:
    """Temporal's page `token`, tagged with the `query` it belongs to (URL-safe base64)."""
    raw = CURSOR_VERSION + _query_tag(query) + token
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(query: str, cursor: str) -> bytes:
    """The page token inside `cursor`; :class:`UnknownCursor` unless :func:`encode_cursor`
    made it for this same `query`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    head = len(CURSOR_VERSION) + _TAG_BYTES
    if (
        len(raw) <= head
        or not raw.startswith(CURSOR_VERSION)
        or raw[len(CURSOR_VERSION) : head] != _query_tag(query)
    ):
        raise UnknownCursor(
            "cursor is not a `next_cursor` returned by this endpoint for these same filters"
        )
    return raw[head:]
