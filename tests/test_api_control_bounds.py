"""Control routes answer within their bound while no worker polls the run's queue.

Temporal answers an update that no worker accepted with an empty "admitted"
response after its long-poll interval (`history.longPollExpirationInterval`,
20 s by default), and the SDK sends the update again, forever. Whenever the
API's bound (`AGENTRUN_API_UPDATE_TIMEOUT_SECONDS`, 30 s by default) is longer
than that interval, an unbounded call never returns. These tests run their own
Temporal dev server with a 1 s interval and a 3 s API bound: the same ordering
as production, scaled down, so each route must end on the API's own deadline.

Nothing polls the task queue of the runs launched here: they stay queued.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from tests.api_fixtures import admin_headers, api_settings, finish_turn, scripted, serve_api
from tests.conftest import dev_server

UPDATE_BOUND_SECONDS = 3.0
LONG_POLL_INTERVAL = '"1s"'
"""Shorter than the API's bound, as Temporal's 20 s default is shorter than 30 s."""
DIGEST = "0" * 64


@pytest.fixture(scope="module")
async def short_poll_client() -> AsyncIterator[Client]:
    async with dev_server(
        "--dynamic-config-value", f"history.longPollExpirationInterval={LONG_POLL_INTERVAL}"
    ) as env:
        yield env.client


@pytest.fixture
async def idle_api(short_poll_client: Client, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The API over a task queue that no worker polls."""
    settings = api_settings(
        tmp_path,
        f"tq-unpolled-{uuid.uuid4().hex[:8]}",
        api_update_timeout_seconds=UPDATE_BOUND_SECONDS,
        api_query_timeout_seconds=1.0,
    )
    async with (
        serve_api(settings, short_poll_client) as url,
        # Far longer than the bound: a call that does not end on its own fails here.
        httpx.AsyncClient(base_url=url, timeout=60, headers=admin_headers(settings)) as http,
    ):
        yield http


CONTROL_CALLS: list[tuple[str, dict[str, Any] | None]] = [
    ("pause", {"reason": "checking"}),
    ("resume", None),
    ("cancel", {"abort_in_flight": True}),
    ("approvals/call-1", {"decision": "approve", "arguments_digest": DIGEST}),
    ("approvals/call-1", {"decision": "deny", "arguments_digest": DIGEST}),
    ("messages", {"text": "are you there?"}),
]


async def test_every_control_route_answers_504_when_no_worker_accepts_the_update(
    idle_api: httpx.AsyncClient,
) -> None:
    launched = await idle_api.post("/v1/runs", json=scripted(finish_turn()))
    assert launched.status_code == 201, launched.text
    run_id = launched.json()["run_id"]

    async def call(path: str, body: dict[str, Any] | None) -> httpx.Response:
        return await idle_api.post(f"/v1/runs/{run_id}/{path}", json=body)

    answers = await asyncio.gather(*(call(path, body) for path, body in CONTROL_CALLS))
    for (path, _), resp in zip(CONTROL_CALLS, answers, strict=True):
        assert resp.status_code == 504, (path, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        problem = resp.json()
        assert problem["type"].endswith("/timeout")
        assert "no worker" in problem["detail"], problem
        assert "AGENTRUN_API_UPDATE_TIMEOUT_SECONDS" in problem["detail"], problem
        assert f"GET /v1/runs/{run_id}" in problem["detail"], problem


async def test_reads_behind_get_run_and_events_end_on_the_query_bound(
    idle_api: httpx.AsyncClient,
) -> None:
    run_id = (await idle_api.post("/v1/runs", json=scripted(finish_turn()))).json()["run_id"]
    view, events = await asyncio.gather(
        idle_api.get(f"/v1/runs/{run_id}"), idle_api.get(f"/v1/runs/{run_id}/events")
    )
    assert view.status_code == 200, view.text
    assert view.json()["source"] == "visibility" and view.json()["status"] == "queued"
    assert events.status_code == 503, events.text
    assert "no worker" in events.json()["detail"]
