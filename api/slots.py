"""The API's side of a tenant's slots workflow: acquire a slot before a start, release it
when the start fails.

    slot = await acquire_slot(client, tenant, workflow_id, SlotLimit(2, wait=False), ...)
    # RunSlot.HELD or RunSlot.QUEUED; SlotRefused when the tenant is at its limit

The count itself is `workflows.tenant_slots.TenantSlotsWorkflow` (one per tenant,
started here on demand: id conflict policy USE_EXISTING, on the runs' task queue);
`api.launcher.start_run` calls this module around the start.

This module must not: start or stop runs, or count them anywhere but in the slots
workflow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from agentrun.contracts import (
    RunSlot,
    SlotOutcome,
    SlotRelease,
    SlotRequest,
    SlotsInput,
    slots_workflow_id,
)
from workflows.tenant_slots import TenantSlotsWorkflow

__all__ = [
    "SlotLimit",
    "SlotRefused",
    "SlotsNotAnswering",
    "acquire_slot",
    "release_slot",
    "release_unless_running",
]

log = logging.getLogger("agentrun.api.slots")


@dataclass(frozen=True)
class SlotLimit:
    """A tenant's concurrency quota as a launch applies it."""

    limit: int
    """`max_concurrent_runs`."""
    wait: bool = False
    """`queue_when_busy`: queue the run instead of refusing it."""


class SlotRefused(Exception):
    """The tenant runs its maximum of concurrent runs (and does not queue)."""

    def __init__(self, holders: int, limit: int) -> None:
        super().__init__(f"{holders} runs hold the tenant's {limit} slots")
        self.holders = holders
        self.limit = limit


class SlotsNotAnswering(Exception):
    """No worker answered the slots workflow in time (none polls the runs' task queue)."""

    def __init__(self, tenant: str, task_queue: str, seconds: float) -> None:
        super().__init__(
            f"the concurrent-run count of tenant {tenant!r} did not answer within "
            f"{seconds:g}s (AGENTRUN_API_UPDATE_TIMEOUT_SECONDS): is an agentrun worker "
            f"polling task queue {task_queue!r}? No run was started; retry later"
        )


async def acquire_slot(
    client: Client,
    tenant: str,
    workflow_id: str,
    quota: SlotLimit,
    *,
    task_queue: str,
    rpc_timeout: timedelta,
) -> RunSlot:
    """A slot for the run `workflow_id` (HELD), or its place in the queue (QUEUED).

    Raises `SlotRefused` at the limit without `wait`, `SlotsNotAnswering` when no
    worker answers within `rpc_timeout` (a slot granted later to the run that never
    starts is reclaimed). Asking again for the same run answers what it already has:
    a retried launch takes no second slot."""
    slots = await client.start_workflow(
        TenantSlotsWorkflow.run,
        SlotsInput(tenant_id=tenant),
        id=slots_workflow_id(tenant),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    try:
        grant = await slots.execute_update(
            TenantSlotsWorkflow.acquire,
            SlotRequest(workflow_id=workflow_id, limit=quota.limit, wait=quota.wait),
            rpc_timeout=rpc_timeout,
        )
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise SlotsNotAnswering(tenant, task_queue, rpc_timeout.total_seconds()) from None
    if grant.outcome == SlotOutcome.REFUSED:
        raise SlotRefused(grant.holders, quota.limit)
    return RunSlot.QUEUED if grant.outcome == SlotOutcome.QUEUED else RunSlot.HELD


async def release_slot(client: Client, tenant: str, workflow_id: str) -> None:
    """Give back the slot (or place) of a run that did not start."""
    handle = client.get_workflow_handle_for(TenantSlotsWorkflow.run, slots_workflow_id(tenant))
    await handle.signal(TenantSlotsWorkflow.release, SlotRelease(workflow_id=workflow_id))


async def release_unless_running(client: Client, tenant: str, workflow_id: str) -> None:
    """After a start that failed (or found the run already there): release the slot
    acquired for `workflow_id` unless a run of that id is running, which holds it.

    Best effort: when Temporal cannot say, the slot stays, and the slots workflow
    drops it once it sees the run ended or never started (`SLOTS_MISSING_GRACE`)."""
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
        running = desc.status == WorkflowExecutionStatus.RUNNING
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            log.warning("cannot tell whether %s started (%s); its slot stays", workflow_id, err)
            return
        running = False
    if running:
        return
    try:
        await release_slot(client, tenant, workflow_id)
    except RPCError as err:
        log.warning("cannot release the slot of %s (%s); it is reclaimed later", workflow_id, err)
