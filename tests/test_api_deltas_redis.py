"""Live deltas across hosts: a worker writes them to Redis, another host's API serves them.

The worker and the API share only Temporal and a real redis-server
(`AGENTRUN_DELTA_STORE=redis`): each has its own state directory, as if on its own
machine, and the API's starts empty. Over real HTTP, the SSE stream carries the
worker's deltas with the same cursors and guarantees as the file log's
(tests/test_api_deltas.py): live before the call completes, gapless numbering,
resume with `Last-Event-ID` without gap or duplicate, attempts marked.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from agentrun.contracts import ModelCalledEvent
from store.delta_log import open_delta_store
from store.delta_stream import RedisDeltaStore
from tests.api_fixtures import (
    DEFAULT_ROLE,
    DELTA,
    SseMessage,
    Stack,
    api_settings,
    bearer,
    role_keys,
    serve_api,
)
from tests.redis_fixtures import RedisServer
from tests.test_api_deltas import SLOW_ANSWER, TEXT, collect, deltas, final_attempt_text, launch
from worker import build_worker


@pytest.fixture(scope="module")
async def split(
    client: Client, tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> AsyncIterator[Stack]:
    """A worker on "host A" and an API on "host B", sharing Temporal and Redis only."""
    task_queue = f"tq-redis-{uuid.uuid4().hex[:10]}"
    shared = {"delta_store": "redis", "redis_url": redis_server.url}
    worker_dir = tmp_path_factory.mktemp("worker-host")
    api_dir = tmp_path_factory.mktemp("api-host")
    worker_settings = api_settings(worker_dir, task_queue, **shared)
    settings = api_settings(api_dir, task_queue, **shared)
    deltas = open_delta_store(worker_settings)
    assert isinstance(deltas, RedisDeltaStore)
    try:
        async with (
            build_worker(client, worker_settings, task_queue=task_queue, deltas=deltas),
            serve_api(settings, client) as url,
        ):
            keys = await role_keys(url, settings)
            async with httpx.AsyncClient(
                base_url=url, timeout=30, headers=bearer(keys[DEFAULT_ROLE])
            ) as http:
                yield Stack(settings, url, http, client, api_dir, keys)
    finally:
        await deltas.aclose()
    # Neither host logged a delta to a local file: they went through Redis only.
    assert not worker_settings.deltas_path.exists()
    assert not settings.deltas_path.exists()


async def test_an_api_on_another_host_streams_the_workers_deltas_live_from_redis(
    split: Stack,
) -> None:
    run_id = await launch(split, SLOW_ANSWER)
    first = await collect(split, run_id, stop=lambda m: len(deltas(m)) >= 3)
    # Live: deltas arrive while the model is still generating.
    page = (await split.http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
    assert "model.called" not in [e["type"] for e in page["events"]]
    cursor = first[-1].id
    assert first[-1].event == DELTA and cursor is not None and cursor.count(".") == 2

    # Resume from the cursor: the next delta is the one after it, none twice.
    rest = await collect(split, run_id, last_event_id=cursor)
    assert rest[0].event == DELTA and rest[0].json()["n"] == int(cursor.split(".")[2]) + 1
    messages = first + rest
    numbers = [d["n"] for d in deltas(messages)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) > 10
    seqs = [m.json()["seq"] for m in messages if m.durable]
    assert seqs == list(range(1, seqs[-1] + 1))
    assert final_attempt_text(messages, 1) == TEXT
    started = next(m for m in messages if m.event == "model.started")
    assert started.id == f"{started.json()['seq']}.1.0"

    # After the run, a new follower replays every delta from the stream.
    replay = await collect(split, run_id)
    assert [d["n"] for d in deltas(replay)] == numbers
    assert final_attempt_text(replay, 1) == TEXT
    assert not split.settings.deltas_path.exists()  # the API host read Redis, no file


async def test_a_retried_attempts_partial_output_crosses_hosts_labelled_with_its_attempt(
    split: Stack,
) -> None:
    flaky = {"content": TEXT, "fail_attempts": 1, "fail_after_chunks": 4, "fail_status": 503}
    run_id = await launch(split, flaky)
    messages = await collect(split, run_id)
    attempts = [d["attempt"] for d in deltas(messages)]
    assert attempts[:4] == [1, 1, 1, 1] and set(attempts[4:]) == {2}
    called = next(m.run_event() for m in messages if m.event == "model.called")
    assert isinstance(called, ModelCalledEvent) and called.attempt == 2
    assert final_attempt_text(messages, 1) == TEXT
    assert [d["n"] for d in deltas(messages)] == list(range(1, len(attempts) + 1))


async def test_a_follower_sees_no_gap_when_the_model_call_moves_to_another_worker(
    client: Client, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Worker A (its own state dir) streams part of a reply and stops; worker B (its
    own state dir) retries the call. One SSE connection to a third host's API sees
    A's partial attempt, then B's whole one, numbered on without gap or repeat."""
    task_queue = f"tq-redis-move-{uuid.uuid4().hex[:10]}"
    # The two workers share the conversation, as they would through the S3 artifact
    # store; deltas go through Redis only.
    blobs = tmp_path / "shared-artifacts"
    shared = {"delta_store": "redis", "redis_url": redis_server.url, "artifact_dir": blobs}
    host_a = api_settings(tmp_path / "host-a", task_queue, **shared)
    host_b = api_settings(tmp_path / "host-b", task_queue, **shared)
    settings = api_settings(tmp_path / "host-api", task_queue, **shared)
    store_a, store_b = open_delta_store(host_a), open_delta_store(host_b)
    assert store_a is not None and store_b is not None
    worker_a = build_worker(client, host_a, task_queue=task_queue, deltas=store_a)
    # Another host's own connection (the SDK allows one worker per queue per client).
    client_b = await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        data_converter=client.data_converter,
    )
    worker_b = build_worker(client_b, host_b, task_queue=task_queue, deltas=store_b)
    running_a = asyncio.create_task(worker_a.run())
    running_b: asyncio.Task[None] | None = None
    try:
        async with serve_api(settings, client) as url:
            keys = await role_keys(url, settings)
            headers = bearer(keys[DEFAULT_ROLE])
            async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as http:
                stack = Stack(settings, url, http, client, settings.state_dir, keys)
                run_id = await launch(stack, {"content": TEXT, "delay_seconds": 4.0})
                streaming = asyncio.Event()

                def seen(messages: list[SseMessage]) -> bool:
                    if len(deltas(messages)) >= 3:
                        streaming.set()
                    return False  # follow to the end

                follower = asyncio.create_task(collect(stack, run_id, stop=seen))
                await asyncio.wait_for(streaming.wait(), 30)
                running_b = asyncio.create_task(worker_b.run())
                await worker_a.shutdown()  # A's call is cancelled mid-stream
                await running_a
                messages = await asyncio.wait_for(follower, 90)
    finally:
        if not running_a.done():
            await worker_a.shutdown()
        if running_b is not None:
            await worker_b.shutdown()
            await running_b
        await store_a.aclose()
        await store_b.aclose()

    attempts = [d["attempt"] for d in deltas(messages)]
    assert attempts[0] == 1 and attempts[-1] >= 2  # A's partial attempt, then B's
    assert attempts == sorted(attempts)
    partial = "".join(d["text"] for d in deltas(messages) if d["attempt"] == 1)
    assert partial != TEXT and TEXT.startswith(partial)  # A stopped mid-reply
    assert [d["n"] for d in deltas(messages)] == list(range(1, len(attempts) + 1))
    seqs = [m.json()["seq"] for m in messages if m.durable]
    assert seqs == list(range(1, seqs[-1] + 1))
    called = next(m.run_event() for m in messages if m.event == "model.called")
    assert isinstance(called, ModelCalledEvent) and called.attempt == attempts[-1]
    assert final_attempt_text(messages, 1) == TEXT
    for host in (host_a, host_b, settings):
        assert not host.deltas_path.exists()  # through Redis only
