"""A tenant's concurrent-run quota is exact, queues when asked, and never leaks a slot.

The rules (`workflows.slot_book`) are tested pure first; then the whole path on the
real Temporal dev server, a real worker and the real API (scripted model): racing
launches, a queued launch that starts when a slot frees, cancelling while queued, a
terminated holder reclaimed, idempotent retries and a start that fails.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from agentrun.contracts import (
    Actor,
    ModelRef,
    ProbeRunsOutput,
    RunSlot,
    RunSpec,
    ScriptedTurn,
    SlotOutcome,
    SlotRequest,
    SlotsState,
    SlotsView,
    slots_workflow_id,
    workflow_id_for,
)
from api import launcher
from api.slots import SlotLimit, SlotRefused, SlotsNotAnswering, acquire_slot, release_slot
from tests.api_fixtures import (
    NOOP_TURN,
    Stack,
    api_stack,
    bearer,
    finish_turn,
    scripted,
    unique,
    wait_until,
)
from tests.conftest import dev_server
from tests.workflow_harness import (
    SUGGEST_CONTINUE_AS_NEW_AFTER,
    early_continue_as_new_args,
    running_worker,
    worker_settings,
)
from workflows.policies import SLOTS_SWEEP_PERIOD
from workflows.slot_book import SlotBook
from workflows.tenant_slots import TenantSlotsWorkflow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GRACE = timedelta(seconds=60)


def _req(wid: str, limit: int = 1, wait: bool = False) -> SlotRequest:
    return SlotRequest(workflow_id=wid, limit=limit, wait=wait)


def _book(limit: int) -> SlotBook:
    return SlotBook(SlotsState(limit=limit))


# ------------------------------------------------------------------ pure rules


def test_the_book_grants_exactly_the_limit_and_refuses_the_rest() -> None:
    book = _book(2)
    outcomes = [book.take(_req(f"r{i}", 2), T0).outcome for i in range(5)]
    assert outcomes == [SlotOutcome.GRANTED] * 2 + [SlotOutcome.REFUSED] * 3
    assert [h.workflow_id for h in book.state.holders] == ["r0", "r1"]


def test_asking_again_for_the_same_run_answers_what_it_has() -> None:
    book = _book(1)
    book.take(_req("a"), T0)
    book.take(_req("b", wait=True), T0)
    again = book.find("a")
    assert again is not None and again.outcome == SlotOutcome.GRANTED and again.holders == 1
    queued = book.find("b")
    assert queued is not None and queued.outcome == SlotOutcome.QUEUED and queued.position == 1
    assert book.find("c") is None


def test_a_release_hands_the_slot_to_the_oldest_waiter_told_once_it_has_enqueued() -> None:
    book = _book(1)
    book.take(_req("a"), T0)
    assert book.take(_req("b", wait=True), T0).position == 1
    assert book.take(_req("c", wait=True), T0).position == 2
    assert book.enqueue("b", T0) == []  # still waiting: nothing to tell
    told = book.release(["a"], T0)
    assert [e.workflow_id for e in told] == ["b"]
    book.notified("b")
    # c is granted before its run has signalled `enqueue`: it is told when it does.
    assert book.release(["b"], T0) == []
    assert [h.workflow_id for h in book.state.holders] == ["c"]
    assert [e.workflow_id for e in book.enqueue("c", T0)] == ["c"]


def test_a_leaving_waiter_frees_its_place_and_a_launch_that_does_not_wait_cannot_jump_it() -> None:
    book = _book(1)
    book.take(_req("a"), T0)
    book.take(_req("b", wait=True), T0)
    book.take(_req("c", wait=True), T0)
    assert book.take(_req("d"), T0).outcome == SlotOutcome.REFUSED
    book.release(["b"], T0)
    assert [w.workflow_id for w in book.state.waiters] == ["c"]
    assert book.find("c") is not None and book.find("c").position == 1  # type: ignore[union-attr]
    assert book.release(["nobody"], T0) == []  # unknown or twice: no change
    assert [h.workflow_id for h in book.state.holders] == ["a"]


def test_a_raised_limit_grants_waiters_and_a_lowered_one_takes_no_slot_away() -> None:
    book = _book(1)
    book.take(_req("a"), T0)
    book.take(_req("b", wait=True), T0)
    book.enqueue("b", T0)
    assert [e.workflow_id for e in book.set_limit(2, T0)] == ["b"]
    book.set_limit(1, T0)
    assert [h.workflow_id for h in book.state.holders] == ["a", "b"]
    assert book.take(_req("c"), T0).outcome == SlotOutcome.REFUSED


def test_reclaim_drops_ended_runs_at_once_and_unknown_ones_only_after_the_grace() -> None:
    book = _book(3)
    book.take(_req("ended", 3), T0)
    book.take(_req("starting", 3), T0 + timedelta(seconds=30))
    book.take(_req("never", 3), T0)
    probe = ProbeRunsOutput(closed=["ended"], missing=["starting", "never"])
    book.reclaim(probe, T0 + GRACE, GRACE)
    assert [h.workflow_id for h in book.state.holders] == ["starting"]
    assert book.state.last_sweep == T0 + GRACE
    assert book.sweep_due(T0 + GRACE + timedelta(seconds=1), timedelta(seconds=5)) is False


# ------------------------------------------------------- on a real Temporal


@pytest.fixture(scope="module")
async def stack(client: Client, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with api_stack(
        client, tmp_path_factory.mktemp("slots-state"), api_rate_limit_burst=100_000
    ) as running:
        yield running


def slow(steps: int = 30, delay: float = 0.5) -> dict[str, Any]:
    """A run that keeps its slot until cancelled (or for `steps` times `delay` seconds)."""
    return scripted(
        *[dict(NOOP_TURN, delay_seconds=delay)] * (steps - 1),
        finish_turn(),
        limits={"max_steps": steps},
    )


QUICK = scripted(finish_turn(), limits={"max_steps": 1})


async def slots_view(stack: Stack, tenant: str) -> SlotsView:
    handle = stack.client.get_workflow_handle(slots_workflow_id(tenant))
    return await handle.query(TenantSlotsWorkflow.view)


async def post(stack: Stack, spec: dict[str, Any], key: str, **headers: str) -> httpx.Response:
    return await stack.http.post("/v1/runs", json=spec, headers={**bearer(key), **headers})


async def status_of(stack: Stack, run_id: str, key: str) -> str:
    body = (await stack.http.get(f"/v1/runs/{run_id}", headers=bearer(key))).json()
    status: str = body["status"]
    return status


async def reaches(stack: Stack, run_id: str, key: str, status: str, timeout: float = 60) -> None:
    async def reached() -> bool:
        return await status_of(stack, run_id, key) == status

    await wait_until(reached, timeout=timeout, interval=0.2)


async def cancel(stack: Stack, run_id: str, key: str) -> None:
    resp = await stack.http.post(f"/v1/runs/{run_id}/cancel", json={}, headers=bearer(key))
    assert resp.status_code == 200, resp.text


async def test_racing_launches_get_exactly_the_limit_and_the_rest_429(stack: Stack) -> None:
    tenant = unique("race")
    key = await stack.new_tenant(tenant, max_concurrent_runs=2)
    answers = await asyncio.gather(*(post(stack, slow(), key) for _ in range(5)))
    assert Counter(a.status_code for a in answers) == {201: 2, 429: 3}, [a.text for a in answers]
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["type"].endswith("/quota-exceeded")
        assert int(refused.headers["retry-after"]) > 0
    started = [a.json()["run_id"] for a in answers if a.status_code == 201]
    view = await slots_view(stack, tenant)
    assert sorted(view.holders) == sorted(workflow_id_for(tenant, r) for r in started)
    for run_id in started:
        await cancel(stack, run_id, key)
    # Every run releases its slot at its end (cancelled included).
    await wait_until(lambda: _holders_are(stack, tenant, 0), timeout=60)


async def _holders_are(stack: Stack, tenant: str, n: int) -> bool:
    return len((await slots_view(stack, tenant)).holders) == n


async def test_a_queued_launch_waits_as_queued_and_starts_when_a_slot_frees(stack: Stack) -> None:
    tenant = unique("queue")
    key = await stack.new_tenant(tenant, max_concurrent_runs=1, queue_when_busy=True)
    first = await post(stack, slow(steps=6), key)
    assert first.status_code == 201 and first.json()["queued"] is False
    second = await post(stack, QUICK, key)
    assert second.status_code == 202, second.text
    assert second.json()["queued"] is True and second.json()["created"] is True
    waiting = second.json()["run_id"]
    assert await status_of(stack, waiting, key) == "queued"
    view = await slots_view(stack, tenant)
    assert view.waiters == [workflow_id_for(tenant, waiting)]
    # It stays queued while the first runs, then starts and finishes on its own.
    assert await status_of(stack, first.json()["run_id"], key) == "running"
    assert await status_of(stack, waiting, key) == "queued"
    await reaches(stack, first.json()["run_id"], key, "completed")
    await reaches(stack, waiting, key, "completed")
    listed = (await stack.http.get("/v1/runs", headers=bearer(key))).json()["runs"]
    assert {r["status"] for r in listed} == {"completed"}
    await wait_until(lambda: _holders_are(stack, tenant, 0), timeout=30)


async def test_cancelling_a_queued_run_ends_it_cancelled_and_takes_it_out_of_the_queue(
    stack: Stack,
) -> None:
    tenant = unique("qcancel")
    key = await stack.new_tenant(tenant, max_concurrent_runs=1, queue_when_busy=True)
    holder = (await post(stack, slow(), key)).json()["run_id"]
    queued = [await post(stack, QUICK, key) for _ in range(2)]
    assert [q.status_code for q in queued] == [202, 202]
    leaving, staying = (q.json()["run_id"] for q in queued)
    await reaches(stack, leaving, key, "queued")  # it has joined the queue
    await cancel(stack, leaving, key)
    await reaches(stack, leaving, key, "cancelled")
    view = await slots_view(stack, tenant)
    assert view.waiters == [workflow_id_for(tenant, staying)]
    assert view.holders == [workflow_id_for(tenant, holder)]
    body = (await stack.http.get(f"/v1/runs/{leaving}", headers=bearer(key))).json()
    assert body["steps"] == 0  # it never started
    # The slot goes to the one still waiting when the holder ends.
    await cancel(stack, holder, key)
    await reaches(stack, staying, key, "completed")


async def test_a_terminated_holder_is_reclaimed_for_the_next_launch(stack: Stack) -> None:
    tenant = unique("leak")
    key = await stack.new_tenant(tenant, max_concurrent_runs=1)
    holder = (await post(stack, slow(), key)).json()["run_id"]
    assert (await post(stack, QUICK, key)).status_code == 429
    # Terminated, the run cannot release its slot: the slots workflow notices.
    await stack.client.get_workflow_handle(workflow_id_for(tenant, holder)).terminate("leak test")

    async def launched() -> httpx.Response | None:
        resp = await post(stack, QUICK, key)
        assert resp.status_code in (201, 429), resp.text  # 429 until the next probe
        return resp if resp.status_code == 201 else None

    resp = await wait_until(launched, timeout=30, interval=1.0)
    await reaches(stack, resp.json()["run_id"], key, "completed")


async def test_a_terminated_holder_hands_its_slot_to_a_waiter(stack: Stack) -> None:
    tenant = unique("leakq")
    key = await stack.new_tenant(tenant, max_concurrent_runs=1, queue_when_busy=True)
    holder = (await post(stack, slow(), key)).json()["run_id"]
    waiting = await post(stack, QUICK, key)
    assert waiting.status_code == 202
    await stack.client.get_workflow_handle(workflow_id_for(tenant, holder)).terminate("leak test")
    # Found on the timer that probes while runs wait.
    timeout = 3 * SLOTS_SWEEP_PERIOD.total_seconds() + 30
    await reaches(stack, waiting.json()["run_id"], key, "completed", timeout=timeout)


async def test_an_idempotent_retry_takes_no_second_slot(stack: Stack) -> None:
    tenant = unique("idem")
    key = await stack.new_tenant(tenant, max_concurrent_runs=1)
    spec = slow(steps=4)
    first = await post(stack, spec, key, **{"Idempotency-Key": "once"})
    assert first.status_code == 201
    retries = await asyncio.gather(
        *(post(stack, spec, key, **{"Idempotency-Key": "once"}) for _ in range(3))
    )
    assert [r.status_code for r in retries] == [200] * 3
    assert {r.json()["run_id"] for r in retries} == {first.json()["run_id"]}
    view = await slots_view(stack, tenant)
    assert view.holders == [first.json()["workflow_id"]]
    other = await post(stack, spec, key, **{"Idempotency-Key": "once-more"})
    assert other.status_code == 429
    await reaches(stack, first.json()["run_id"], key, "completed")
    # A retry after the run ended still answers it, and still takes no slot.
    again = await post(stack, spec, key, **{"Idempotency-Key": "once"})
    assert again.status_code == 200 and again.json()["run_id"] == first.json()["run_id"]
    await wait_until(lambda: _holders_are(stack, tenant, 0), timeout=30)


async def test_a_start_that_fails_after_the_grant_gives_the_slot_back(stack: Stack) -> None:
    tenant = unique("failstart")
    # Over Temporal's payload limit (2 MB): the start is refused after the slot is granted.
    huge = RunSpec(
        goal="too big to start",
        model=ModelRef(provider="scripted", script=[ScriptedTurn(content="x" * 3_000_000)]),
    )
    actor = Actor(subject="tester")
    with pytest.raises(Exception) as refused:
        await launcher.start_run(
            stack.client, stack.settings, tenant, huge, actor, slots=SlotLimit(1)
        )
    assert "limit" in str(refused.value).lower() or "size" in str(refused.value).lower()
    await wait_until(lambda: _holders_are(stack, tenant, 0), timeout=30)
    # The slot is free: the next start gets it.
    ok = RunSpec(goal="fits", model=ModelRef(provider="scripted", script=[]))
    started = await launcher.start_run(
        stack.client, stack.settings, tenant, ok, actor, slots=SlotLimit(1)
    )
    assert started.created and not started.queued
    assert (await slots_view(stack, tenant)).holders == [started.workflow_id]
    await stack.client.get_workflow_handle(started.workflow_id).terminate("test done")


# ------------------------------------------------------- continue-as-new


@pytest.fixture(scope="module")
async def early_suggestion_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server that suggests continue-as-new after a few dozen history events."""
    async with dev_server(*early_continue_as_new_args(SUGGEST_CONTINUE_AS_NEW_AFTER)) as env:
        yield env


async def test_the_slots_workflow_continues_as_new_with_its_holders_and_waiters(
    early_suggestion_env: WorkflowEnvironment, task_queue: str, state_dir: Path
) -> None:
    client = early_suggestion_env.client
    tenant = unique("can")
    slots_id = slots_workflow_id(tenant)
    timeout = timedelta(seconds=30)

    async def acquire(wid: str, wait: bool = False) -> RunSlot:
        quota = SlotLimit(2, wait=wait)
        return await acquire_slot(
            client, tenant, wid, quota, task_queue=task_queue, rpc_timeout=timeout
        )

    async with running_worker(client, task_queue, state_dir):
        assert [await acquire("keep-1"), await acquire("keep-2")] == [RunSlot.HELD] * 2
        assert await acquire("waits", wait=True) == RunSlot.QUEUED
        first_run = (await client.get_workflow_handle(slots_id).describe()).run_id
        # Enough requests to fill a history that the server wants continued early.
        for i in range(SUGGEST_CONTINUE_AS_NEW_AFTER):
            with pytest.raises(SlotRefused):
                await acquire(f"refused-{i}")
        handle = client.get_workflow_handle(slots_id)

        async def continued() -> bool:
            return (await handle.describe()).run_id != first_run

        await wait_until(continued, timeout=30)
        view = await handle.query(TenantSlotsWorkflow.view)
        assert view.holders == ["keep-1", "keep-2"] and view.waiters == ["waits"]
        # The new run keeps counting: a release hands the slot to the waiter.
        await release_slot(client, tenant, "keep-1")
        await wait_until(lambda: _view_holders(handle, ["keep-2", "waits"]), timeout=30)
        await handle.terminate("test done")


async def _view_holders(handle: WorkflowHandle[Any, Any], expected: list[str]) -> bool:
    return (await handle.query(TenantSlotsWorkflow.view)).holders == expected


async def test_a_launch_whose_slot_count_nobody_answers_fails_in_time_and_starts_nothing(
    client: Client, state_dir: Path
) -> None:
    tenant = unique("noworker")
    nobody = f"tq-nobody-{unique()}"  # no worker polls it
    settings = worker_settings(state_dir, task_queue=nobody, api_update_timeout_seconds=1.0)
    spec = RunSpec(goal="never starts", model=ModelRef(provider="scripted", script=[]))
    with pytest.raises(SlotsNotAnswering, match=nobody):
        await launcher.start_run(
            client, settings, tenant, spec, Actor(subject="t"), slots=SlotLimit(1)
        )
    runs = await client.count_workflows(
        f"TaskQueue = '{nobody}' AND WorkflowType = 'AgentRunWorkflow'"
    )
    assert runs.count == 0
    await client.get_workflow_handle(slots_workflow_id(tenant)).terminate("test done")
