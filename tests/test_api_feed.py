"""SSE connections share one events poller per run (`api.feed`), over real HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from api import feed as feed_module
from api.app import create_app
from api.deps import api_state
from api.feed import RunFeeds
from tests.api_fixtures import (
    NOOP_TURN,
    SseMessage,
    SseReader,
    admin_headers,
    api_settings,
    finish_turn,
    scripted,
    serve_api,
    wait_until,
)
from worker import build_worker


@pytest.fixture
async def api(
    client: Client, tmp_path: Path, sandbox_image: str
) -> AsyncIterator[tuple[httpx.AsyncClient, RunFeeds]]:
    queue = f"tq-feed-{uuid.uuid4().hex[:10]}"
    settings = api_settings(tmp_path, queue)
    app = create_app(settings, client=client)
    async with (
        build_worker(client, settings, task_queue=queue),
        serve_api(settings, client, app) as url,
        httpx.AsyncClient(base_url=url, timeout=60, headers=admin_headers(settings)) as http,
    ):
        yield http, api_state(app).feeds


async def follow(http: httpx.AsyncClient, run_id: str, **headers: str) -> list[SseMessage]:
    async with http.stream("GET", f"/v1/runs/{run_id}/events/stream", headers=headers) as resp:
        assert resp.status_code == 200
        return [m async for m in SseReader(resp).messages()]


def key(run_id: str) -> str:
    return f"agentrun/apitest/{run_id}"


async def launch(http: httpx.AsyncClient, *turns: dict[str, object]) -> str:
    resp = await http.post("/v1/runs", json=scripted(*turns))
    assert resp.status_code == 201, resp.text
    run_id: str = resp.json()["run_id"]
    return run_id


async def test_followers_of_one_run_share_one_poller_and_get_the_same_stream(
    api: tuple[httpx.AsyncClient, RunFeeds],
) -> None:
    http, feeds = api
    run_id = await launch(http, *[dict(NOOP_TURN, delay_seconds=0.3)] * 4, finish_turn("shared"))
    followers = [asyncio.create_task(follow(http, run_id)) for _ in range(5)]
    feed = await wait_until(lambda: feeds.active().get(key(run_id)))
    await wait_until(lambda: feed.subscribers == 5)
    assert len(feeds.active()) == 1
    streams = await asyncio.gather(*followers)
    durable = [[m.json()["seq"] for m in s if m.durable] for s in streams]
    assert durable[0] == list(range(1, durable[0][-1] + 1))
    assert all(d == durable[0] for d in durable)
    assert all([m.id for m in s] == [m.id for m in streams[0]] for s in streams)
    assert all(s[-1].event == "end" and s[-1].json()["reason"] == "terminal" for s in streams)
    # The last follower to leave stops the poller.
    await wait_until(lambda: not feeds.active())


async def test_a_follower_behind_the_window_catches_up_with_its_own_queries(
    api: tuple[httpx.AsyncClient, RunFeeds], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "WINDOW", 3)
    http, feeds = api
    run_id = await launch(http, *[dict(NOOP_TURN, delay_seconds=0.3)] * 8, finish_turn())
    live = asyncio.create_task(follow(http, run_id))
    feed = await wait_until(lambda: feeds.active().get(key(run_id)))
    await wait_until(lambda: feed.last_seq > 8)  # its window now starts after seq 5
    late = await follow(http, run_id)  # shares the feed, but starts at seq 0
    first = await live
    seqs = [m.json()["seq"] for m in late if m.durable]
    assert seqs == list(range(1, seqs[-1] + 1)) == [m.json()["seq"] for m in first if m.durable]


async def test_a_terminated_run_ends_the_stream_as_execution_closed(
    api: tuple[httpx.AsyncClient, RunFeeds], client: Client
) -> None:
    http, feeds = api
    run_id = await launch(http, *[dict(NOOP_TURN, delay_seconds=1.0)] * 30, finish_turn())
    following = asyncio.create_task(follow(http, run_id))
    feed = await wait_until(lambda: feeds.active().get(key(run_id)))
    await wait_until(lambda: feed.last_seq >= 2)
    await client.get_workflow_handle(key(run_id)).terminate("operator test")
    messages = await asyncio.wait_for(following, 30)
    assert messages[-1].event == "end"
    assert messages[-1].json()["reason"] == "execution_closed"
