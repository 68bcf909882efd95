"""One contract for every delta store: the file log and Redis Streams.

Each test runs against both backends (`local`: `store.delta_log.DeltaLog` in a tmp
dir; `redis`: `store.delta_stream.RedisDeltaStore` on the session's real
redis-server), through `open_delta_store`, the factory the worker and the API use.
What the SSE stream relies on: ``n`` numbers a step's deltas 1, 2, 3 … for every
reader; a tail returns each delta once, in order, and resumes after any ``n``;
attempts are marked; a failed attempt's partial output is kept.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from agentrun.config import ConfigError, Settings, load_settings
from agentrun.contracts import Delta
from store.delta_log import DeltaLog, DeltaStore, open_delta_store
from store.delta_stream import RedisDeltaStore, stream_key
from tests.redis_fixtures import RedisServer

BACKENDS = ["local", "redis"]


def settings_for(backend: str, tmp_path: Path, redis_server: RedisServer) -> Settings:
    extra = {"redis_url": redis_server.url} if backend == "redis" else {}
    return load_settings(state_dir=tmp_path, delta_store=backend, **extra)


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[DeltaStore]:
    opened = open_delta_store(settings_for(request.param, tmp_path, redis_server))
    assert opened is not None
    try:
        yield opened
    finally:
        await opened.aclose()


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


def test_the_factory_picks_the_backend_the_settings_name(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    assert isinstance(open_delta_store(settings_for("local", tmp_path, redis_server)), DeltaLog)
    redis = open_delta_store(settings_for("redis", tmp_path, redis_server))
    assert isinstance(redis, RedisDeltaStore)
    asyncio.run(redis.aclose())
    off = load_settings(state_dir=tmp_path, delta_store="redis", redis_url=redis_server.url,
                        model_stream=False)  # fmt: skip
    assert open_delta_store(off) is None


def test_the_redis_backend_without_a_url_is_refused_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AGENTRUN_REDIS_URL"):
        load_settings(state_dir=tmp_path, delta_store="redis")
    with pytest.raises(ConfigError, match="AGENTRUN_REDIS_URL"):
        load_settings(state_dir=tmp_path, delta_store="redis", redis_url="http://x:6379")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_tail_before_any_write_is_empty(
    backend: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    store = open_delta_store(settings_for(backend, tmp_path, redis_server))
    assert store is not None
    try:
        assert await store.tail("t1", run_id(), 1).poll() == []
    finally:
        await store.aclose()


async def test_deltas_are_numbered_from_one_and_each_is_returned_once(store: DeltaStore) -> None:
    run = run_id()
    async with store.writer("t1", run, 3, attempt=1) as sink:
        sink(Delta("text", "Hel"))
        sink(Delta("text", ""))  # nothing to show: not stored
        sink(Delta("tool_call", "", index=0, name="shell"))  # a name alone is news
    tail = store.tail("t1", run, 3)
    first = await tail.poll()
    assert [(d.step, d.n, d.attempt, d.kind, d.text, d.name) for d in first] == [
        (3, 1, 1, "text", "Hel", None),
        (3, 2, 1, "tool_call", "", "shell"),
    ]
    assert await tail.poll() == []
    async with store.writer("t1", run, 3, attempt=2) as sink:
        sink(Delta("text", "lo"))
    assert [(d.n, d.attempt, d.text) for d in await tail.poll()] == [(3, 2, "lo")]
    # Other steps, runs and tenants have their own logs.
    assert await store.tail("t1", run, 4).poll() == []
    assert await store.tail("t2", run, 3).poll() == []


async def test_a_tail_resumes_after_any_cursor_without_gap_or_duplicate(store: DeltaStore) -> None:
    run = run_id()
    async with store.writer("t1", run, 1, attempt=1) as sink:
        for i in range(1, 8):
            sink(Delta("text", f"w{i} "))
    for after in range(0, 9):
        got = await store.tail("t1", run, 1, after_n=after).poll()
        assert [d.n for d in got] == list(range(after + 1, 8))
        assert [d.text for d in got] == [f"w{n} " for n in range(after + 1, 8)]


async def test_deltas_arrive_while_the_writer_is_still_open(store: DeltaStore) -> None:
    """Live: a batch is visible after a flush period, before the model call ends."""
    run = run_id()
    tail = store.tail("t1", run, 1)
    seen: list[int] = []
    async with store.writer("t1", run, 1, attempt=1) as sink:
        for i in range(5):
            sink(Delta("text", f"{i}"))
            await asyncio.sleep(0.12)  # > FLUSH_SECONDS: the flusher has written it
            seen += [d.n for d in await tail.poll()]
        assert seen == [1, 2, 3, 4, 5]
    assert await tail.poll() == []


async def test_two_attempts_writing_at_once_share_one_gapless_numbering(
    store: DeltaStore,
) -> None:
    """A timed-out attempt still writing beside its retry: every delta gets its own
    number, numbers run without gap, and each delta names its attempt."""
    run = run_id()

    async def attempt(number: int) -> None:
        async with store.writer("t1", run, 2, attempt=number) as sink:
            for i in range(40):
                sink(Delta("text", f"a{number}-{i}"))
                if i % 7 == 0:
                    await asyncio.sleep(0.06)

    tail = store.tail("t1", run, 2)
    polled = []
    writers = asyncio.gather(attempt(1), attempt(2))
    while not writers.done():
        polled += await tail.poll()
        await asyncio.sleep(0.03)
    await writers
    polled += await tail.poll()
    assert [d.n for d in polled] == list(range(1, 81))
    for number in (1, 2):
        mine = [d.text for d in polled if d.attempt == number]
        assert mine == [f"a{number}-{i}" for i in range(40)]  # each attempt in its order
    # A second reader sees the same numbers.
    again = await store.tail("t1", run, 2).poll()
    assert [(d.n, d.text) for d in again] == [(d.n, d.text) for d in polled]


async def test_a_failed_attempts_partial_output_is_kept_before_the_error_propagates(
    store: DeltaStore,
) -> None:
    run = run_id()
    with pytest.raises(RuntimeError, match="provider broke"):
        async with store.writer("t1", run, 1, attempt=1) as sink:
            sink(Delta("text", "partial"))
            raise RuntimeError("provider broke")
    async with store.writer("t1", run, 1, attempt=2) as sink:
        sink(Delta("text", "whole"))
    got = await store.tail("t1", run, 1).poll()
    assert [(d.n, d.attempt, d.text) for d in got] == [(1, 1, "partial"), (2, 2, "whole")]


async def test_a_large_step_is_read_whole_in_one_poll(store: DeltaStore) -> None:
    """The SSE stream drains a step with one poll before its closing event."""
    run = run_id()
    async with store.writer("t1", run, 1, attempt=1) as sink:
        for i in range(2500):  # more than one Redis page
            sink(Delta("text", str(i)))
    got = await store.tail("t1", run, 1, after_n=10).poll()
    assert [d.n for d in got] == list(range(11, 2501))


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "", ".hidden", "x" * 200, "a}b{"])
async def test_unsafe_tenant_or_run_ids_are_refused(store: DeltaStore, name: str) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        store.tail(name, "run-1", 1)
    with pytest.raises(ValueError, match="unsafe"):
        store.writer("t1", name, 1, attempt=1)


# ------------------------------------------------------------------ Redis only


async def test_a_redis_stream_expires_its_retention_after_its_last_delta(
    redis_server: RedisServer,
) -> None:
    store = RedisDeltaStore.from_url(redis_server.url, retention_seconds=600)
    raw = Redis.from_url(redis_server.url, decode_responses=True)
    run = run_id()
    try:
        assert await store.ttl("t1", run, 1) == -2  # nothing yet
        async with store.writer("t1", run, 1, attempt=1) as sink:
            sink(Delta("text", "x"))
        assert 590 <= await store.ttl("t1", run, 1) <= 600
        await raw.expire(stream_key("t1", run, 1), 5)  # time passes …
        async with store.writer("t1", run, 1, attempt=2) as sink:
            sink(Delta("text", "y"))
        assert 590 <= await store.ttl("t1", run, 1) <= 600  # … a new delta renews it
        # Once expired, the stream is gone, not an error.
        await raw.delete(stream_key("t1", run, 1))
        assert await store.tail("t1", run, 1).poll() == []
    finally:
        await raw.aclose()
        await store.aclose()


async def test_a_damaged_redis_entry_keeps_its_number_and_yields_nothing(
    redis_server: RedisServer,
) -> None:
    store = RedisDeltaStore.from_url(redis_server.url, retention_seconds=600)
    raw = Redis.from_url(redis_server.url, decode_responses=True)
    run = run_id()
    try:
        async with store.writer("t1", run, 1, attempt=1) as sink:
            sink(Delta("text", "a"))
        await raw.xadd(stream_key("t1", run, 1), {"d": "{not json"}, id="0-*")
        async with store.writer("t1", run, 1, attempt=1) as sink:
            sink(Delta("text", "c"))
        assert [(d.n, d.text) for d in await store.tail("t1", run, 1).poll()] == [
            (1, "a"),
            (3, "c"),
        ]
    finally:
        await raw.aclose()
        await store.aclose()


async def test_a_redis_write_failure_fails_the_model_call_instead_of_dropping_deltas(
    tmp_path: Path, refused_port: int
) -> None:
    """Nothing listens on the port: the writer's error reaches the caller (the model
    call fails and Temporal retries it as a new attempt), never a silent gap."""
    store = RedisDeltaStore.from_url(f"redis://127.0.0.1:{refused_port}/0", retention_seconds=60)
    try:
        with pytest.raises(RedisConnectionError):
            async with store.writer("t1", run_id(), 1, attempt=1) as sink:
                sink(Delta("text", "lost?"))
    finally:
        await store.aclose()
