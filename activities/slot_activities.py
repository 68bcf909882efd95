"""The tenant slots workflow's one side effect: asking Temporal whether runs still run.

A run that holds a slot releases it at its end, but a run that never ends by itself
(terminated, timed out, or never started because the API died between acquiring
and starting it) cannot. `TenantSlotsWorkflow` hands the runs it counts to
`probe_runs`, which describes each with the worker's Temporal client and answers
those that have ended and those Temporal does not know; the workflow decides what
to drop (`workflows.slot_book.SlotBook.reclaim`).

This module must not: change a run (it only reads), or decide what is leaked (a run
Temporal does not know may be about to start: the grace is the workflow's rule).
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from agentrun.contracts import ProbeRunsInput, ProbeRunsOutput

__all__ = ["SlotActivities"]

PROBE_CONCURRENCY = 8
"""Describe calls in flight at once (a tenant's holders are few; a queue may be long)."""


class SlotActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="probe_runs")
    async def probe_runs(self, inp: ProbeRunsInput) -> ProbeRunsOutput:
        """Which of the runs have ended, and which Temporal does not know.

        Any other RPC failure fails the attempt (retried): a run that cannot be seen
        is never reported as gone."""
        limit = asyncio.Semaphore(PROBE_CONCURRENCY)
        out = ProbeRunsOutput()

        async def probe(workflow_id: str) -> None:
            async with limit:
                try:
                    desc = await self._client.get_workflow_handle(workflow_id).describe()
                except RPCError as err:
                    if err.status != RPCStatusCode.NOT_FOUND:
                        raise
                    out.missing.append(workflow_id)
                    return
            if desc.status != WorkflowExecutionStatus.RUNNING:
                out.closed.append(workflow_id)

        await asyncio.gather(*(probe(w) for w in inp.workflow_ids))
        out.closed.sort()
        out.missing.sort()
        return out
