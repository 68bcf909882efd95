"""`TenantSlotsWorkflow`: a tenant's concurrent-run quota as an exact semaphore.

One workflow per tenant (`slots_workflow_id`: `agentrun-slots/<tenant>`), started
on demand by the API (`api.slots`, id conflict policy USE_EXISTING) on the runs'
task queue, and never ending: it continues-as-new with its state when Temporal
suggests it. The mutex pattern of Temporal's samples, with a count and a queue:

    API ──acquire(SlotRequest)──▶ slots ──SlotGrant: granted | queued | refused
    run (started `queued`) ──enqueue──▶ slots ──slot_granted──▶ run (starts)
    run (at its end, any outcome) ──release──▶ slots ──slot_granted──▶ next waiter

Design (why it looks like this):

* **Exact**: an update handler applies one request at a time to one state, so N
  racing launches against a limit of k get exactly k grants (visibility counts lag
  by a second). The rules are `workflows.slot_book.SlotBook`, pure and unit-tested.
* **The limit comes with each request** (the tenant's quota as the API read it), so
  a changed quota applies at the next launch with nothing to synchronise.
* **Leaks**: a terminated run never releases. When the tenant is full, an `acquire`
  first probes the runs it counts (`activities.slot_activities`, at most every
  `SLOTS_SWEEP_MIN_INTERVAL`), and while runs wait, a timer probes every
  `SLOTS_SWEEP_PERIOD`; ended runs are dropped, unknown ones after
  `SLOTS_MISSING_GRACE`.
* **Telling a waiter** is a signal to its run; a run that is gone by then (the
  signal fails) is dropped and the slot goes to the next.

This module must not: do I/O except through `workflows.calls`, or change a run other
than by the `slot_granted` signal.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.common import VersioningBehavior
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    # Safe to pass through: pure pydantic models (no I/O, no mutable module state).
    from agentrun.contracts import (
        ProbeRunsInput,
        SlotEntry,
        SlotGrant,
        SlotRelease,
        SlotRequest,
        SlotsInput,
        SlotsState,
        SlotsView,
    )

from workflows import calls
from workflows.policies import (
    SLOTS_MISSING_GRACE,
    SLOTS_SWEEP_MIN_INTERVAL,
    SLOTS_SWEEP_PERIOD,
)
from workflows.slot_book import SlotBook

__all__ = ["SLOT_GRANTED", "TenantSlotsWorkflow"]

SLOT_GRANTED = "slot_granted"
"""The signal a queued run waits for (`AgentRunWorkflow` handles it under this name)."""


@workflow.defn(name="TenantSlotsWorkflow")
class TenantSlotsWorkflow:
    @workflow.init
    def __init__(self, inp: SlotsInput) -> None:
        self._tenant = inp.tenant_id
        self._book = SlotBook(inp.carried.model_copy(deep=True) if inp.carried else SlotsState())
        self._telling: set[asyncio.Future[None]] = set()
        self._sweeping = False

    @workflow.run
    async def run(self, inp: SlotsInput) -> None:
        # Holders granted while the previous run handed over and not told yet.
        for holder in self._book.state.holders:
            if holder.enqueued and not holder.notified:
                self._tell([holder])
        while not self._hand_over():
            if self._book.state.waiters:
                try:
                    await workflow.wait_condition(self._hand_over, timeout=SLOTS_SWEEP_PERIOD)
                except TimeoutError:
                    await self._sweep()
            else:
                await workflow.wait_condition(
                    lambda: self._hand_over() or bool(self._book.state.waiters)
                )
        await workflow.wait_condition(
            lambda: workflow.all_handlers_finished() and not self._telling and not self._sweeping
        )
        workflow.continue_as_new(SlotsInput(tenant_id=self._tenant, carried=self._book.state))

    # ------------------------------------------------------------ handlers

    @workflow.update
    async def acquire(self, req: SlotRequest) -> SlotGrant:
        book, now = self._book, workflow.now()
        self._tell(book.set_limit(req.limit, now))
        known = book.find(req.workflow_id)
        if known is not None:
            return known  # a retried launch: what it already has
        if book.full() and book.sweep_due(now, SLOTS_SWEEP_MIN_INTERVAL):
            await self._sweep()
            known = book.find(req.workflow_id)  # asked again meanwhile
            if known is not None:
                return known
        return book.take(req, workflow.now())

    @workflow.signal
    def enqueue(self, msg: SlotRelease) -> None:
        """A run started `queued` waits for `slot_granted` (told at once if granted)."""
        self._tell(self._book.enqueue(msg.workflow_id, workflow.now()))

    @workflow.signal
    def release(self, msg: SlotRelease) -> None:
        """A run has ended (or its start failed): its slot or place goes to the next."""
        self._tell(self._book.release([msg.workflow_id], workflow.now()))

    @workflow.query
    def view(self) -> SlotsView:
        state = self._book.state
        return SlotsView(
            tenant_id=self._tenant,
            limit=state.limit,
            holders=[h.workflow_id for h in state.holders],
            waiters=[w.workflow_id for w in state.waiters],
        )

    # ------------------------------------------------------------ helpers

    def _hand_over(self) -> bool:
        return workflow.info().is_continue_as_new_suggested()

    async def _sweep(self) -> None:
        """Probe the runs the book counts and drop the leaked (one probe at a time)."""
        if self._sweeping:
            await workflow.wait_condition(lambda: not self._sweeping)
            return
        self._sweeping = True
        try:
            probe = await calls.probe_runs(ProbeRunsInput(workflow_ids=self._book.probe_ids()))
        finally:
            self._sweeping = False
        if probe is None:
            self._book.state.last_sweep = workflow.now()  # failed: not again at once
            return
        dropped = probe.closed + probe.missing
        tell = self._book.reclaim(probe, workflow.now(), SLOTS_MISSING_GRACE)
        if dropped:
            workflow.logger.info("tenant %s: probed slot holders, gone: %s", self._tenant, dropped)
        self._tell(tell)

    def _tell(self, holders: list[SlotEntry]) -> None:
        for holder in holders:
            self._book.notified(holder.workflow_id)
            task = asyncio.ensure_future(self._signal_granted(holder.workflow_id))
            self._telling.add(task)
            task.add_done_callback(self._telling.discard)

    async def _signal_granted(self, workflow_id: str) -> None:
        try:
            await workflow.get_external_workflow_handle(workflow_id).signal(SLOT_GRANTED)
        except FailureError as err:
            # The run is gone (it ended, or was terminated, while it waited).
            workflow.logger.info("%s cannot take its slot (%s); next", workflow_id, err)
            self._tell(self._book.release([workflow_id], workflow.now()))


# Lives as long as its tenant: on a versioned deployment (worker.deployment_config) it
# moves to each new build, since a pinned one would keep the old build's workers alive
# for ever; its changes are patched as before. A separate definition because the server
# refuses a versioning behavior from an unversioned worker.
@workflow.defn(name="TenantSlotsWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class VersionedTenantSlotsWorkflow(TenantSlotsWorkflow):
    @workflow.run
    async def run(self, inp: SlotsInput) -> None:
        await super().run(inp)
