"""Identifiers, content addresses, the run's state machine and the error vocabularies."""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

# ---------------------------------------------------------------------------
# Identifiers
# ---------------------------------------------------------------------------

Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex digest")]
"""A content address in the artifact store."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"
NAME_RULE = "1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
"""`NAME_PATTERN` in words, for error messages."""


def is_name(value: object) -> bool:
    """Whether `value` matches `NAME_PATTERN` (tenant ids: one safe path and key segment)."""
    return isinstance(value, str) and re.fullmatch(NAME_PATTERN, value) is not None


TenantId = Annotated[str, Field(pattern=NAME_PATTERN, examples=["acme"])]
SecretName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-/.]{0,127}$")]
"""Secrets are referred to by name only; the broker resolves them at execution time."""


def canonical_json(value: Any) -> bytes:
    """The one serialisation used for digests: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_of(data: bytes) -> str:
    """sha256 hex digest of raw bytes (the artifact store's content address)."""
    return hashlib.sha256(data).hexdigest()


def workflow_id_for(tenant_id: str, run_id: str) -> str:
    """Workflow ids derive from tenant and run so that tenants cannot collide."""
    return f"agentrun/{tenant_id}/{run_id}"


def run_ref_from_workflow_id(workflow_id: str) -> tuple[str, str]:
    """Inverse of :func:`workflow_id_for`: returns ``(tenant_id, run_id)``."""
    prefix, tenant_id, run_id = workflow_id.split("/", 2)
    if prefix != "agentrun":
        raise ValueError(f"not an agentrun workflow id: {workflow_id!r}")
    return tenant_id, run_id


# ---------------------------------------------------------------------------
# The run's state machine
# ---------------------------------------------------------------------------


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class TerminalReason(StrEnum):
    """Why a run ended. `completed` is the only success."""

    COMPLETED = "completed"
    MAX_STEPS = "max_steps"
    DEADLINE = "deadline"
    BUDGET = "budget"
    CANCELLED = "cancelled"
    ERROR = "error"


class LimitKind(StrEnum):
    """Which sandbox limit ended a tool call (`ExecOutcome.limit`)."""

    TIMEOUT = "timeout"
    MEMORY = "memory"
    PIDS = "pids"
    OUTPUT = "output"
    DISK = "disk"
    INTERRUPTED = "interrupted"


class ErrorKind(StrEnum):
    """Why a tool call failed (`ToolResult.error_type`): what the model and users act on.

    A call stopped by a sandbox limit carries the limit's name (see `LimitKind`).
    """

    DENIED = "denied"
    UNKNOWN_TOOL = "unknown_tool"
    BAD_ARGUMENTS = "bad_arguments"
    BAD_PATH = "bad_path"
    TIMEOUT = LimitKind.TIMEOUT.value
    MEMORY = LimitKind.MEMORY.value
    PIDS = LimitKind.PIDS.value
    OUTPUT = LimitKind.OUTPUT.value
    DISK = LimitKind.DISK.value
    INTERRUPTED = LimitKind.INTERRUPTED.value
    EGRESS_REFUSED = "egress_refused"
    """`http_request` to a destination the run's egress rules do not allow."""

    @classmethod
    def from_limit(cls, limit: LimitKind) -> ErrorKind:
        return cls(limit.value)


class ConflictType(StrEnum):
    """`ApplicationError` types of rejected control actions (the API answers 409)."""

    INVALID_TRANSITION = "InvalidTransition"
    APPROVAL_MISMATCH = "ApprovalMismatch"
