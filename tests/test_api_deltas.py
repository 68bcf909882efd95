"""Model token deltas on the SSE channel, over real HTTP against a real worker.

The scripted model streams its replies in word-sized chunks spread over
`delay_seconds`, so a test can watch deltas arrive while the model call is still
running, drop the connection mid-call, and see a failed attempt's partial output.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest
from temporalio.client import Client

from agentrun.contracts import ModelCalledEvent
from tests.api_fixtures import (
    DELTA,
    SseMessage,
    SseReader,
    Stack,
    api_stack,
    scripted,
)

TEXT = "The quick brown fox jumps over the lazy dog and keeps running far away. " * 2
SLOW_ANSWER = {"content": TEXT, "delay_seconds": 2.0}


@pytest.fixture(scope="module")
async def stack(
    client: Client, tmp_path_factory: pytest.TempPathFactory, sandbox_image: str
) -> AsyncIterator[Stack]:
    async with api_stack(client, tmp_path_factory.mktemp("delta-state")) as running:
        yield running


async def launch(stack: Stack, *turns: dict[str, Any]) -> str:
    # The scripted replies answer in text (the deltas under test are text).
    resp = await stack.http.post("/v1/runs", json=scripted(*turns, finish="text"))
    assert resp.status_code == 201, resp.text
    run_id: str = resp.json()["run_id"]
    return run_id


async def collect(
    stack: Stack,
    run_id: str,
    *,
    last_event_id: str | None = None,
    stop: Callable[[list[SseMessage]], bool] | None = None,
    params: dict[str, str] | None = None,
) -> list[SseMessage]:
    """Messages of one SSE connection, until `end` or until `stop(messages)`."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    out: list[SseMessage] = []
    async with stack.http.stream(
        "GET", f"/v1/runs/{run_id}/events/stream", headers=headers, params=params, timeout=60
    ) as resp:
        assert resp.status_code == 200
        async for msg in SseReader(resp).messages():
            if msg.event == "end":
                break
            out.append(msg)
            if stop is not None and stop(out):
                break
    return out


def deltas(messages: list[SseMessage]) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.event == DELTA]


def final_attempt_text(messages: list[SseMessage], step: int) -> str:
    """What a client shows: the deltas of the attempt that `model.called` reports."""
    called = next(
        event
        for event in (m.run_event() for m in messages if m.event == "model.called")
        if isinstance(event, ModelCalledEvent) and event.payload.step == step
    )
    return "".join(
        d["text"] for d in deltas(messages) if d["step"] == step and d["attempt"] == called.attempt
    )


def latency(message: SseMessage) -> float:
    """Seconds from the activity writing a delta to this client parsing it."""
    return message.received - datetime.fromisoformat(message.json()["at"]).timestamp()


def n_deltas(count: int) -> Callable[[list[SseMessage]], bool]:
    return lambda messages: len(deltas(messages)) >= count


async def test_deltas_stream_live_before_the_model_call_completes(
    stack: Stack, figures: Callable[[str], None]
) -> None:
    run_id = await launch(stack, SLOW_ANSWER)
    first = await collect(stack, run_id, stop=n_deltas(1))
    # The first delta is here while the model is still generating: no model.called yet.
    page = (await stack.http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
    assert "model.called" not in [e["type"] for e in page["events"]]
    assert [m.event for m in first[-2:]] == ["model.started", DELTA]

    messages = await collect(stack, run_id)
    types = [m.event for m in messages]
    assert types.index("model.started") < types.index(DELTA) < types.index("model.called")
    numbers = [d["n"] for d in deltas(messages)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) > 10
    assert final_attempt_text(messages, 1) == TEXT
    called = next(m.run_event() for m in messages if m.event == "model.called")
    assert isinstance(called, ModelCalledEvent) and called.payload.text == TEXT[:300]
    # Cursors: `<seq>.<step>.<n>` while the call streams, a bare seq once it is closed.
    started = next(m for m in messages if m.event == "model.started")
    assert started.id == f"{started.json()['seq']}.1.0"
    assert [m.id for m in messages if m.event == DELTA][
        -1
    ] == f"{started.json()['seq']}.1.{numbers[-1]}"
    assert next(m for m in messages if m.event == "model.called").id == str(called.seq)

    # Delivery latency of a delta: written by the activity → parsed by this client.
    figures(f"SSE first token delta: {latency(first[-1]) * 1000:.0f} ms after the model wrote it")


async def test_resume_mid_stream_with_the_cursor_has_no_gap_and_no_duplicate(
    stack: Stack, figures: Callable[[str], None]
) -> None:
    run_id = await launch(stack, SLOW_ANSWER)
    first = await collect(stack, run_id, stop=n_deltas(3))
    cursor = first[-1].id
    assert cursor is not None and cursor.count(".") == 2
    rest = await collect(stack, run_id, last_event_id=cursor)
    assert rest[0].event == DELTA and rest[0].json()["n"] == int(cursor.split(".")[2]) + 1
    messages = first + rest
    numbers = [d["n"] for d in deltas(messages)]
    assert numbers == list(range(1, len(numbers) + 1))
    seqs = [m.json()["seq"] for m in messages if m.durable]
    assert seqs == list(range(1, seqs[-1] + 1))
    assert final_attempt_text(messages, 1) == TEXT
    # Latency over a whole live stream (the reconnected part).
    lat = [latency(m) for m in rest if m.event == DELTA]
    figures(
        f"SSE token-delta delivery latency over {len(lat)} live deltas: "
        f"p50={statistics.median(lat) * 1000:.0f} ms max={max(lat) * 1000:.0f} ms "
        "(writer flush 50 ms, delta poll 50 ms)"
    )


async def test_a_bare_seq_cursor_inside_a_model_call_gets_its_deltas_from_the_first(
    stack: Stack,
) -> None:
    run_id = await launch(stack, SLOW_ANSWER)
    first = await collect(stack, run_id, stop=n_deltas(2))
    started = next(m.json()["seq"] for m in first if m.event == "model.started")
    # A client that tracks durable seqs only: it knows nothing of the deltas it saw.
    rest = await collect(stack, run_id, last_event_id=str(started))
    assert [d["n"] for d in deltas(rest)] == list(range(1, len(deltas(rest)) + 1))
    assert final_attempt_text(rest, 1) == TEXT
    assert next(m.json()["seq"] for m in rest if m.durable) == started + 1


async def test_partial_output_of_a_retried_attempt_is_labelled_with_its_attempt(
    stack: Stack,
) -> None:
    flaky = {"content": TEXT, "fail_attempts": 1, "fail_after_chunks": 4, "fail_status": 503}
    run_id = await launch(stack, flaky)
    messages = await collect(stack, run_id)
    attempts = [d["attempt"] for d in deltas(messages)]
    assert attempts[:4] == [1, 1, 1, 1] and set(attempts[4:]) == {2}
    partial = "".join(d["text"] for d in deltas(messages)[:4])
    assert partial and TEXT.startswith(partial) and partial != TEXT
    called = next(m.run_event() for m in messages if m.event == "model.called")
    assert called.attempt == 2
    assert final_attempt_text(messages, 1) == TEXT
    # Numbering runs on across attempts: one log per step.
    assert [d["n"] for d in deltas(messages)] == list(range(1, len(attempts) + 1))


async def test_deltas_can_be_turned_off_per_stream_and_replay_after_the_run(
    stack: Stack,
) -> None:
    run_id = await launch(stack, {"content": "short answer", "delay_seconds": 0.2})
    plain = await collect(stack, run_id, params={"deltas": "false"})
    assert DELTA not in [m.event for m in plain]
    assert all(m.id is not None and m.id.isdigit() for m in plain)
    # Once the run is over, a fresh follower still gets every delta, from the log.
    replay = await collect(stack, run_id)
    assert final_attempt_text(replay, 1) == "short answer"
    assert [m.json()["seq"] for m in replay if m.durable] == [m.json()["seq"] for m in plain]


@pytest.mark.parametrize(
    "bad", ["1.2", "x.1.1", "1000.2000.3000.4000", "-1", "1..2", b"5\xa0", b"1\x85"]
)
async def test_a_malformed_cursor_is_422(stack: Stack, bad: str | bytes) -> None:
    # The bytes ones end in Latin-1 spaces: Python's `strip()` would drop them, the
    # document's pattern does not take them.
    run_id = await launch(stack, {"content": "done"})
    value = bad if isinstance(bad, bytes) else bad.encode()
    resp = await stack.http.get(
        f"/v1/runs/{run_id}/events/stream", headers={b"Last-Event-ID": value}
    )
    assert resp.status_code == 422
    assert "Last-Event-ID" in resp.json()["detail"]
