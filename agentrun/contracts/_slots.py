"""A tenant's run slots: what the API, a run and the tenant's slots workflow say to each other.

One `TenantSlotsWorkflow` per tenant (`slots_workflow_id`) counts the tenant's runs
that hold a slot (at most its quota `max_concurrent_runs`) and queues those waiting
for one. The API asks it with the `acquire` update (`SlotRequest` → `SlotGrant`)
before it starts a run; a run started `queued` signals `enqueue` and waits for
`slot_granted`; every run that holds or awaits a slot signals `release` at its end.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


def slots_workflow_id(tenant_id: str) -> str:
    """The id of a tenant's slots workflow (one per tenant, whatever the task queue)."""
    return f"agentrun-slots/{tenant_id}"


class RunSlot(StrEnum):
    """How a run started with respect to its tenant's slots (`RunInput.slot`)."""

    HELD = "held"
    """The API acquired a slot for it before starting it; the run releases it at its end."""
    QUEUED = "queued"
    """The tenant was at its limit: the run waits (status `queued`) for `slot_granted`."""


class SlotOutcome(StrEnum):
    GRANTED = "granted"
    QUEUED = "queued"
    REFUSED = "refused"


class SlotRequest(BaseModel):
    """The `acquire` update: a slot for the run `workflow_id`, under the tenant's current limit."""

    workflow_id: str = Field(min_length=1)
    limit: int = Field(ge=1)
    """The tenant's quota `max_concurrent_runs` now (a changed quota applies at once)."""
    wait: bool = False
    """Queue the run when the tenant is at its limit (quota `queue_when_busy`)."""


class SlotGrant(BaseModel):
    """The answer to `acquire`; asking again for the same run answers the same (idempotent)."""

    outcome: SlotOutcome
    holders: int
    """Runs holding a slot after this request."""
    position: int | None = None
    """1-based place in the queue, when `queued`."""


class SlotRelease(BaseModel):
    """The `release` and `enqueue` signals: the run `workflow_id` (holder or waiter)."""

    workflow_id: str = Field(min_length=1)


class SlotEntry(BaseModel):
    """A holder or a waiter of the slots workflow."""

    workflow_id: str
    since: datetime
    """When it was granted (holders) or queued (waiters); leak detection counts from it."""
    queued: bool = False
    """Launched queued: the run waits for `slot_granted` when it is granted."""
    enqueued: bool = False
    """The run signalled `enqueue`: it exists and can be told (`slot_granted`)."""
    notified: bool = False
    """`slot_granted` was sent (holders that were waiters)."""


class SlotsState(BaseModel):
    """The slots workflow's whole state, carried on continue-as-new."""

    holders: list[SlotEntry] = Field(default_factory=list)
    waiters: list[SlotEntry] = Field(default_factory=list)
    """First in, first out."""
    limit: int = Field(default=1, ge=1)
    """The limit of the last `acquire` (used to promote waiters on release)."""
    last_sweep: datetime | None = None


class SlotsInput(BaseModel):
    tenant_id: str
    carried: SlotsState | None = None


class SlotsView(BaseModel):
    """The slots workflow's `view` query: who holds a slot, who waits."""

    tenant_id: str
    limit: int
    holders: list[str]
    waiters: list[str]


class ProbeRunsInput(BaseModel):
    """The runs (workflow ids) whose Temporal status the slots workflow asks for."""

    workflow_ids: list[str]


class ProbeRunsOutput(BaseModel):
    closed: list[str] = Field(default_factory=list)
    """Workflows that have ended (completed, failed, cancelled, terminated, timed out)."""
    missing: list[str] = Field(default_factory=list)
    """Workflows Temporal does not know (never started, or past retention)."""
