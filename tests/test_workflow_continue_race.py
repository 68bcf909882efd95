"""A control action that lands while a run continues-as-new is kept, not lost.

`_continue_as_new` flushes the run's events with the `store_events` activity and
then hands over to a fresh Temporal run. While that activity runs, updates are
still accepted: a pause or cancel answered success, but its event was dropped with
the flushed ones (a gap in the seqs) and the flag lived only in the old run, so
the next run went on as if nothing had been asked. Here the real `store_events`
is held (a stand-in registered under its name waits for the test, then delegates
to the real one) while the test pauses or cancels the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from activities.run_activities import RunActivities
from agentrun.config import Settings
from agentrun.contracts import (
    ControlAction,
    ControlRequest,
    EventSegment,
    Limits,
    RunEvent,
    RunStatus,
    StatusChangedPayload,
    StoreEventsInput,
    TerminalReason,
)
from store.artifacts import LocalArtifactStore
from tests.workflow_harness import (
    ALICE,
    all_events,
    call,
    finish,
    outcome,
    payloads,
    scripted_spec,
    start_run,
    status,
    turn,
    wait_for,
    worker_settings,
)
from worker import build_worker
from workflows.agent_run import AgentRunWorkflow

pytestmark = pytest.mark.docker

WAIT = 60.0
"""Bound on waiting for the held activity (a hang fails the test instead of the suite)."""


class HeldStoreEvents:
    """`store_events` whose first call waits for `release`, then stores for real."""

    def __init__(self, real: RunActivities) -> None:
        self._real = real
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    @activity.defn(name="store_events")
    async def store_events(self, inp: StoreEventsInput) -> EventSegment:
        if not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
        return await self._real.store_events(inp)


@asynccontextmanager
async def held_worker(
    client: Client, task_queue: str, state_dir: Path
) -> AsyncIterator[tuple[Settings, HeldStoreEvents]]:
    """The production activities on `task_queue`, with `store_events` held."""
    settings = worker_settings(state_dir)
    held = HeldStoreEvents(RunActivities(LocalArtifactStore(settings.artifacts_path)))
    worker = build_worker(
        client, settings, task_queue=task_queue, stand_ins={"store_events": held.store_events}
    )
    async with worker:
        yield settings, held


@asynccontextmanager
async def held_at_handover(
    client: Client, task_queue: str, state_dir: Path
) -> AsyncIterator[tuple[Settings, HeldStoreEvents, WorkflowHandle[Any, Any]]]:
    """A run that continues-as-new after each step, held inside its first hand-over
    (`store_events` entered, not yet released); released and ended on the way out."""
    async with held_worker(client, task_queue, state_dir) as (settings, held):
        handle = await start_run(client, task_queue, SPEC, continue_as_new_every=1)
        try:
            await asyncio.wait_for(held.entered.wait(), WAIT)
            yield settings, held, handle
        finally:
            held.release.set()
            await _end(handle)


async def _end(handle: WorkflowHandle[Any, Any]) -> None:
    """Terminate the run if the test left it open (a failed assertion)."""
    if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        await handle.terminate("the test ended before the run did")


def _assert_gapless(events: list[RunEvent]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def _actions(events: list[RunEvent]) -> list[ControlAction]:
    return [p.action for p in payloads(events, StatusChangedPayload)]


SPEC = scripted_spec(
    turn(call("no_such_tool", i=1)),
    turn(call("no_such_tool", i=2)),
    finish("done"),
    limits=Limits(max_steps=10),
)


async def test_a_pause_during_continue_as_new_holds_the_next_run(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    async with held_at_handover(client, task_queue, state_dir) as (settings, held, handle):
        answer = await handle.execute_update(
            AgentRunWorkflow.pause, ControlRequest(actor=ALICE, reason="hold on")
        )
        assert answer.status == RunStatus.PAUSED
        held.release.set()

        view = await wait_for(handle, lambda v: v.continued >= 1)
        assert view.status == RunStatus.PAUSED
        assert view.steps == 1
        events = await all_events(handle, settings.artifacts_path)
        _assert_gapless(events)
        assert _actions(events) == [ControlAction.PAUSE]

        # Still paused: no new step started in the next run.
        again = await status(handle)
        assert (again.status, again.steps) == (RunStatus.PAUSED, 1)

        await handle.execute_update(AgentRunWorkflow.resume, ControlRequest(actor=ALICE))
        result = await outcome(handle)
        assert (result.status, result.steps) == (RunStatus.COMPLETED, 3)
        events = await all_events(handle, settings.artifacts_path)
        _assert_gapless(events)
        assert _actions(events) == [ControlAction.PAUSE, ControlAction.RESUME]


async def test_a_cancel_during_continue_as_new_ends_the_run_cancelled(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    async with held_at_handover(client, task_queue, state_dir) as (settings, held, handle):
        await handle.execute_update(
            AgentRunWorkflow.cancel, ControlRequest(actor=ALICE, reason="stop")
        )
        held.release.set()

        result = await outcome(handle)
        assert (result.status, result.reason) == (RunStatus.CANCELLED, TerminalReason.CANCELLED)
        assert result.steps == 1
        events = await all_events(handle, settings.artifacts_path)
        _assert_gapless(events)
        assert _actions(events) == [ControlAction.CANCEL]
