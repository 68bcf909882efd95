"""A tenant's run slots as pure bookkeeping: who holds one, who waits, who is next.

`TenantSlotsWorkflow` (`workflows.tenant_slots`) keeps one `SlotBook` over its
`SlotsState` and turns what the book answers into commands (signals to the runs it
grants, the probe of leaked holders). The rules:

* **Exact bound**: a run is granted only while fewer than `limit` runs hold a slot
  and nobody waits ahead of it; the workflow applies one request at a time, so
  racing launches cannot pass together.
* **Idempotent**: asking again for a run that holds or awaits a slot answers what it
  has (a retried launch takes no second slot); releasing twice, or a run the book
  does not know, changes nothing.
* **First in, first out**: a release hands the slot to the oldest waiter. A waiter
  the API has not started yet (its run has not signalled `enqueue`) becomes a holder
  all the same, and is told when its `enqueue` arrives.
* **Leaks**: a holder or waiter whose run has ended without releasing (terminated,
  timed out) is dropped; one Temporal does not know is dropped only after
  `grace` (the API acquires before it starts the run).
* A lowered limit takes no slot away: holders over it keep theirs until they end.

This module must not: call `temporalio.workflow` (it is unit-tested without a
server), or read a clock (`now` is handed in: the workflow's `workflow.now()`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from agentrun.contracts import (
    ProbeRunsOutput,
    SlotEntry,
    SlotGrant,
    SlotOutcome,
    SlotRequest,
    SlotsState,
)


class SlotBook:
    """The rules over one `SlotsState` (mutated in place: it is the workflow's state).

    Methods that can move waiters into holders return the holders to tell now
    (`slot_granted`): the promoted waiters whose runs have signalled `enqueue`.
    """

    def __init__(self, state: SlotsState) -> None:
        self.state = state

    # ------------------------------------------------------------ reading

    def find(self, workflow_id: str) -> SlotGrant | None:
        """What the run already has (holder or waiter), or None."""
        if any(h.workflow_id == workflow_id for h in self.state.holders):
            return self._grant(SlotOutcome.GRANTED)
        for place, waiter in enumerate(self.state.waiters, start=1):
            if waiter.workflow_id == workflow_id:
                return self._grant(SlotOutcome.QUEUED, place)
        return None

    def full(self) -> bool:
        return len(self.state.holders) >= self.state.limit or bool(self.state.waiters)

    def sweep_due(self, now: datetime, every: timedelta) -> bool:
        last = self.state.last_sweep
        return last is None or now - last >= every

    def probe_ids(self) -> list[str]:
        """Every run the book counts (holders, then waiters)."""
        return [e.workflow_id for e in [*self.state.holders, *self.state.waiters]]

    # ------------------------------------------------------------ changing

    def set_limit(self, limit: int, now: datetime) -> list[SlotEntry]:
        """Apply the tenant's current limit; a raised one grants waiters at once."""
        self.state.limit = limit
        return self._promote(now)

    def take(self, req: SlotRequest, now: datetime) -> SlotGrant:
        """Grant, queue or refuse a run the book does not know yet (see `find`)."""
        if not self.full():
            self.state.holders.append(SlotEntry(workflow_id=req.workflow_id, since=now))
            return self._grant(SlotOutcome.GRANTED)
        if not req.wait:
            return self._grant(SlotOutcome.REFUSED)
        self.state.waiters.append(SlotEntry(workflow_id=req.workflow_id, since=now, queued=True))
        return self._grant(SlotOutcome.QUEUED, len(self.state.waiters))

    def enqueue(self, workflow_id: str, now: datetime) -> list[SlotEntry]:
        """A queued run has started and waits: the holders to tell now (it, if granted).

        A run the book does not know (dropped as missing before it started, or counted
        by a slots workflow that was since replaced) queues at the back."""
        for holder in self.state.holders:
            if holder.workflow_id == workflow_id:
                holder.enqueued = True
                return [] if holder.notified else [holder]
        for waiter in self.state.waiters:
            if waiter.workflow_id == workflow_id:
                waiter.enqueued = True
                return []
        self.state.waiters.append(
            SlotEntry(workflow_id=workflow_id, since=now, queued=True, enqueued=True)
        )
        return self._promote(now)

    def release(self, workflow_ids: list[str], now: datetime) -> list[SlotEntry]:
        """Drop these runs (holders or waiters) and hand the freed slots on."""
        gone = set(workflow_ids)
        self.state.holders = [h for h in self.state.holders if h.workflow_id not in gone]
        self.state.waiters = [w for w in self.state.waiters if w.workflow_id not in gone]
        return self._promote(now)

    def notified(self, workflow_id: str) -> None:
        for holder in self.state.holders:
            if holder.workflow_id == workflow_id:
                holder.notified = True

    def reclaim(self, probe: ProbeRunsOutput, now: datetime, grace: timedelta) -> list[SlotEntry]:
        """Drop the leaked: runs that ended, and runs Temporal has not known for `grace`."""
        self.state.last_sweep = now
        missing = set(probe.missing)
        leaked = set(probe.closed) | {
            e.workflow_id
            for e in [*self.state.holders, *self.state.waiters]
            if e.workflow_id in missing and now - e.since >= grace
        }
        return self.release(sorted(leaked), now) if leaked else []

    # ------------------------------------------------------------ helpers

    def _promote(self, now: datetime) -> list[SlotEntry]:
        tell: list[SlotEntry] = []
        state = self.state
        while state.waiters and len(state.holders) < state.limit:
            entry = state.waiters.pop(0)
            entry.since = now  # a holder's grace counts from its grant
            state.holders.append(entry)
            if entry.enqueued:
                tell.append(entry)
        return tell

    def _grant(self, outcome: SlotOutcome, position: int | None = None) -> SlotGrant:
        return SlotGrant(outcome=outcome, holders=len(self.state.holders), position=position)
