"""The REST facade over real HTTP: uvicorn on 127.0.0.1, real Temporal, real worker.

Every test talks to the API the way a client would (httpx over TCP, SSE
included); runs use the scripted model. Tests that need a tool executed in the
sandbox are marked `docker`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from accounts.roles import Role
from activities.run_activities import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from agentrun.contracts import (
    Actor,
    ApprovalResolvedEvent,
    MessageReceivedEvent,
    MessageReceivedPayload,
    ModelCalledEvent,
    RunFinishedEvent,
    RunSpec,
    RunStartedEvent,
    StatusChangedEvent,
    WebhookDeliveredEvent,
    WebhookDeliveredPayload,
)
from api.launcher import idempotent_run_id, start_run
from tests.api_fixtures import (
    DELTA,
    NOOP_TURN,
    RUN_EVENT,
    WEBHOOK_SECRET,
    SseMessage,
    SseReader,
    Stack,
    admin_headers,
    api_settings,
    api_stack,
    bearer,
    events_in,
    finish_turn,
    read_body,
    scripted,
    serve_api,
    tool_turn,
    unique,
    wait_until,
)
from tests.model_fixtures import free_port
from worker import build_worker

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def stack(
    client: Client, tmp_path_factory: pytest.TempPathFactory, sandbox_image: str
) -> AsyncIterator[Stack]:
    async with api_stack(client, tmp_path_factory.mktemp("api-state")) as running:
        yield running


async def launch(stack: Stack, spec: dict[str, Any], **headers: str) -> str:
    resp = await stack.http.post("/v1/runs", json=spec, headers=headers)
    assert resp.status_code == 201, resp.text
    run_id: str = resp.json()["run_id"]
    return run_id


async def wait_status(stack: Stack, run_id: str, *statuses: str, timeout: float = 60) -> Any:
    async def check() -> Any:
        body = (await stack.http.get(f"/v1/runs/{run_id}")).json()
        return body if body.get("status") in statuses else None

    return await wait_until(check, timeout=timeout)


def assert_problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= body.keys()
    assert "Traceback" not in resp.text
    return body


# ----------------------------------------------------------------- launching


async def test_post_run_returns_201_with_links_and_run_completes(stack: Stack) -> None:
    spec = scripted(finish_turn("forty-two"), labels={"suite": "api"}, agent="helper")
    alice = await stack.new_key("alice")
    resp = await stack.http.post("/v1/runs", json=spec, headers=bearer(alice))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    run_id = body["run_id"]
    assert body["created"] is True
    assert body["workflow_id"] == f"agentrun/apitest/{run_id}"
    assert resp.headers["location"] == f"/v1/runs/{run_id}" == body["links"]["self"]
    assert body["spec_digest"] == RunSpec.model_validate(spec).spec_digest()

    view = await wait_status(stack, run_id, "completed")
    assert view["final_answer"] == "forty-two"
    assert view["reason"] == "completed"
    assert view["steps"] == 1
    # `finish` executes nothing and no sandbox was used: no tool or sandbox seconds.
    assert view["usage"] == {
        "input_tokens": 10,
        "output_tokens": 10,
        "estimated": False,
        "tool_seconds": 0.0,
        "sandbox_seconds": 0.0,
    }
    assert view["source"] == "query"
    assert view["created_by"] == "alice"
    assert view["labels"] == {"suite": "api"}
    assert view["agent"] == "helper"
    assert view["model"] == "scripted:"
    assert view["goal"] == "api test goal"
    assert view["started_at"] and view["finished_at"]
    assert view["pending_approval"] is None


async def test_concurrent_duplicate_posts_with_one_key_start_one_run(stack: Stack) -> None:
    key = unique("key")
    spec = scripted(finish_turn(), labels={"idem": key})
    answers = await asyncio.gather(
        *(
            stack.http.post("/v1/runs", json=spec, headers={"Idempotency-Key": key})
            for _ in range(6)
        )
    )
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 200, 200, 200, 200, 201], [r.text for r in answers]
    run_ids = {r.json()["run_id"] for r in answers}
    assert run_ids == {idempotent_run_id("apitest", key)}
    assert [r.json()["created"] for r in answers if r.status_code == 201] == [True]

    run_id = run_ids.pop()
    await wait_status(stack, run_id, "completed")
    # After the run ended, the same key still answers the same run (200, not a new run).
    again = await stack.http.post("/v1/runs", json=spec, headers={"Idempotency-Key": key})
    assert again.status_code == 200 and again.json()["run_id"] == run_id

    listed = await wait_until(lambda: _list(stack, {"label": f"idem={key}"}), timeout=15)
    assert [r["run_id"] for r in listed["runs"]] == [run_id]


async def test_same_idempotency_key_with_another_body_is_409(stack: Stack) -> None:
    key = unique("key")
    await launch(stack, scripted(finish_turn(), goal="first"), **{"Idempotency-Key": key})
    resp = await stack.http.post(
        "/v1/runs", json=scripted(finish_turn(), goal="second"), headers={"Idempotency-Key": key}
    )
    body = assert_problem(resp, 409)
    assert body["type"].endswith("/idempotency-key-reused")
    assert key in body["detail"] and "different request body" in body["detail"]


async def test_run_of_another_tenant_is_404(stack: Stack) -> None:
    other = await start_run(
        stack.client,
        stack.settings,
        "othertenant",
        RunSpec.model_validate(scripted(finish_turn())),
        Actor(subject="mallory"),
    )
    for path in ("", "/events", "/artifacts"):
        assert_problem(await stack.http.get(f"/v1/runs/{other.run_id}{path}"), 404)
    assert_problem(await stack.http.post(f"/v1/runs/{other.run_id}/cancel"), 404)
    listing = await stack.http.get("/v1/runs", params={"limit": 200})
    assert other.run_id not in {r["run_id"] for r in listing.json()["runs"]}


async def test_unknown_run_is_404_for_every_run_route(stack: Stack) -> None:
    missing = "nosuchrun0000"
    digest = "0" * 64
    for method, path in [
        ("GET", ""),
        ("GET", "/events"),
        ("GET", "/events/stream"),
        ("GET", "/artifacts"),
        ("GET", f"/artifacts/{digest}"),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("POST", "/cancel"),
    ]:
        resp = await stack.http.request(method, f"/v1/runs/{missing}{path}")
        body = assert_problem(resp, 404)
        assert body["instance"] == f"/v1/runs/{missing}{path}"
    resp = await stack.http.post(
        f"/v1/runs/{missing}/approvals/ap-1",
        json={"decision": "approve", "arguments_digest": digest},
    )
    assert_problem(resp, 404)
    assert_problem(await stack.http.post(f"/v1/runs/{missing}/messages", json={"text": "hi"}), 404)


# ------------------------------------------------------------------- listing


async def _list(stack: Stack, params: dict[str, Any]) -> dict[str, Any] | None:
    resp = await stack.http.get("/v1/runs", params=params)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body if body["runs"] else None


async def test_list_filters_by_status_agent_label_time_and_paginates(stack: Stack) -> None:
    batch = unique("batch")
    before = datetime.now(UTC) - timedelta(seconds=5)
    ids = [
        await launch(stack, scripted(finish_turn(), agent="lister", labels={"batch": batch}))
        for _ in range(3)
    ]
    for run_id in ids:
        await wait_status(stack, run_id, "completed")

    async def all_three() -> Any:
        page = await _list(stack, {"label": f"batch={batch}", "status": "completed"})
        return page if page and len(page["runs"]) == 3 else None

    page = await wait_until(all_three, timeout=20)
    assert {r["run_id"] for r in page["runs"]} == set(ids)
    run = page["runs"][0]
    assert run["agent"] == "lister" and run["labels"] == {"batch": batch}
    assert run["status"] == "completed" and run["steps"] == 1 and run["goal"] == "api test goal"

    # Pagination: 2 + 1, no duplicates, cursor round-trips.
    first = (
        await stack.http.get("/v1/runs", params={"label": f"batch={batch}", "limit": 2})
    ).json()
    assert len(first["runs"]) == 2 and first["next_cursor"]
    second = (
        await stack.http.get(
            "/v1/runs",
            params={"label": f"batch={batch}", "limit": 2, "cursor": first["next_cursor"]},
        )
    ).json()
    seen = [r["run_id"] for r in first["runs"] + second["runs"]]
    assert sorted(seen) == sorted(ids)
    assert not second.get("next_cursor")

    # Every filter narrows.
    params = {"label": f"batch={batch}"}
    assert await _list(stack, {**params, "agent": "someone-else"}) is None
    assert await _list(stack, {**params, "status": "running"}) is None
    assert await _list(stack, {**params, "label": [f"batch={batch}", "other=x"]}) is None
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await _list(stack, {**params, "created_after": future}) is None
    both = await _list(
        stack, {**params, "created_after": before.isoformat(), "created_before": future}
    )
    assert both is not None and len(both["runs"]) == 3
    assert await _list(stack, {**params, "created_before": before.isoformat()}) is None


async def test_list_refuses_unsafe_filter_values_and_bad_cursors(stack: Stack) -> None:
    injection = "x=' OR AgentRunTenant != '"
    body = assert_problem(await stack.http.get("/v1/runs", params={"label": injection}), 422)
    assert "key=value" in body["detail"]
    assert_problem(await stack.http.get("/v1/runs", params={"label": "novalue"}), 422)
    assert_problem(await stack.http.get("/v1/runs", params={"agent": "a'b"}), 422)
    assert_problem(await stack.http.get("/v1/runs", params={"status": "exploded"}), 422)
    # Well formed, but it names no page of this listing: like an unknown run, a 404.
    assert_problem(await stack.http.get("/v1/runs", params={"cursor": "not-a-real-cursor"}), 404)
    assert_problem(await stack.http.get("/v1/runs", params={"cursor": "not a cursor"}), 422)
    assert_problem(await stack.http.get("/v1/runs", params={"limit": 0}), 422)
    assert_problem(await stack.http.get("/v1/runs", params={"created_after": "yesterday"}), 422)


# -------------------------------------------------------------------- events


async def test_events_json_pages_in_order_with_after_and_limit(stack: Stack) -> None:
    run_id = await launch(stack, scripted(NOOP_TURN, NOOP_TURN, finish_turn()))
    await wait_status(stack, run_id, "completed")
    everything = (await stack.http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
    seqs = [e["seq"] for e in everything["events"]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert everything["terminal"] is True and everything["last_seq"] == seqs[-1]
    typed = events_in(everything)
    assert isinstance(typed[0], RunStartedEvent) and isinstance(typed[-1], RunFinishedEvent)

    collected: list[int] = []
    after = 0
    while True:
        page = (
            await stack.http.get(f"/v1/runs/{run_id}/events", params={"after": after, "limit": 3})
        ).json()
        assert len(page["events"]) <= 3
        collected += [e["seq"] for e in page["events"]]
        if page["terminal"]:
            break
        assert page["next_after"] > after
        after = page["next_after"]
    assert collected == seqs


async def test_sse_streams_every_event_once_with_keepalives_and_ends(
    stack: Stack, figures: Callable[[str], None]
) -> None:
    # A 1.5 s model turn leaves the stream idle longer than the 1 s keep-alive interval.
    spec = scripted(NOOP_TURN, dict(NOOP_TURN, delay_seconds=1.5), NOOP_TURN, finish_turn())
    run_id = await launch(stack, spec)
    latencies: list[float] = []
    async with stack.http.stream(
        "GET", f"/v1/runs/{run_id}/events", headers={"Accept": "text/event-stream"}
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(resp)
        messages = [m async for m in reader.messages()]
    events = [m for m in messages if m.durable]
    assert [m.json()["seq"] for m in events] == list(range(1, len(events) + 1))
    assert [m.cursor_seq for m in events] == [m.json()["seq"] for m in events]
    assert events[-1].event == "run.finished"
    assert messages[-1].event == "end" and messages[-1].json()["reason"] == "terminal"
    assert reader.comments, "no keep-alive comment during the idle turn"
    assert reader.retry == 1000
    for m in events:
        at = datetime.fromisoformat(m.json()["at"]).timestamp()
        latencies.append(m.received - at)
    # Delivery latency: event time (workflow task start) to arrival at the client.
    # A figure, not an assertion: machines are noisy.
    figures(
        f"SSE event delivery latency over {len(latencies)} events: "
        f"p50={statistics.median(latencies) * 1000:.0f} ms max={max(latencies) * 1000:.0f} ms "
        f"(poll {stack.settings.api_sse_poll_seconds:g} s)"
    )


async def test_sse_resumes_from_last_event_id_across_continue_as_new(
    stack: Stack, client: Client
) -> None:
    # A second API whose launcher continues-as-new every 2 steps (same worker and store).
    settings = stack.settings.model_copy(update={"continue_as_new_after_steps": 2})
    turns = [dict(NOOP_TURN, delay_seconds=0.2) for _ in range(7)] + [finish_turn("after CAN")]
    async with (
        serve_api(settings, client) as url,
        httpx.AsyncClient(base_url=url, headers=stack.http.headers) as http,
    ):
        run_id = (await http.post("/v1/runs", json=scripted(*turns))).json()["run_id"]
        received: list[SseMessage] = []
        # First connection: read a few messages, then drop the connection mid-run.
        async with http.stream("GET", f"/v1/runs/{run_id}/events/stream") as resp:
            async for msg in SseReader(resp).messages():
                received.append(msg)
                if len(received) == 6:
                    break
        # Reconnect with Last-Event-ID (what EventSource does) until the end.
        async with http.stream(
            "GET",
            f"/v1/runs/{run_id}/events/stream",
            headers={"Last-Event-ID": str(received[-1].id)},
            timeout=60,
        ) as resp:
            async for msg in SseReader(resp).messages():
                if msg.event == "end":
                    break
                received.append(msg)
        view = (await http.get(f"/v1/runs/{run_id}")).json()
    assert view["status"] == "completed" and view["final_answer"] == "after CAN"
    assert view["continued"] >= 3, view
    durable = [m.json()["seq"] for m in received if m.durable]
    assert "run.continued_as_new" in [m.event for m in received]
    assert durable == list(range(1, view["last_seq"] + 1)), durable
    assert_deltas_gapless(received)
    # The JSON endpoint merges the flushed segments the same way.
    page = (await stack.http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
    assert [e["seq"] for e in page["events"]] == durable
    # `after` works as a resume point too, starting inside a flushed segment.
    async with stack.http.stream(
        "GET", f"/v1/runs/{run_id}/events/stream", params={"after": 2}
    ) as resp:
        tail = [m.json()["seq"] async for m in SseReader(resp).messages() if m.durable]
    assert tail == durable[2:]


def assert_deltas_gapless(messages: list[SseMessage]) -> None:
    """Each step's deltas arrive once, numbered 1..N, before the step's `model.called`."""
    seen: dict[int, list[int]] = {}
    for msg in messages:
        if msg.event == DELTA:
            delta = msg.json()
            seen.setdefault(delta["step"], []).append(delta["n"])
        elif msg.event == "model.called":
            called = msg.run_event()
            assert isinstance(called, ModelCalledEvent)
            step = called.payload.step
            numbers = seen.get(step, [])
            assert numbers == list(range(1, len(numbers) + 1)), (step, numbers)
            assert numbers, f"no delta before model.called of step {step}"


async def test_sse_bad_last_event_id_is_422(stack: Stack) -> None:
    run_id = await launch(stack, scripted(finish_turn()))
    resp = await stack.http.get(
        f"/v1/runs/{run_id}/events/stream", headers={"Last-Event-ID": "seven"}
    )
    assert_problem(resp, 422)


# ------------------------------------------------------------------- control


async def test_pause_resume_cancel_and_invalid_transitions_are_409(stack: Stack) -> None:
    slow = dict(NOOP_TURN, delay_seconds=1.0)
    run_id = await launch(stack, scripted(*[slow] * 30, finish_turn()))
    await wait_status(stack, run_id, "running")

    resp = await stack.http.post(f"/v1/runs/{run_id}/resume")
    body = assert_problem(resp, 409)
    assert body["run_status"] == "running" and "not paused" in body["detail"]
    assert body["type"].endswith("/invalid-transition")

    resp = await stack.http.post(
        f"/v1/runs/{run_id}/pause",
        json={"reason": "look"},
        headers=bearer(await stack.new_key("bob")),
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "paused"
    assert (
        assert_problem(await stack.http.post(f"/v1/runs/{run_id}/pause"), 409)["run_status"]
        == "paused"
    )

    msg = await stack.http.post(f"/v1/runs/{run_id}/messages", json={"text": "hurry up"})
    assert msg.status_code == 200 and msg.json()["status"] == "paused"
    assert (await stack.http.post(f"/v1/runs/{run_id}/resume", json={})).json()[
        "status"
    ] == "running"

    resp = await stack.http.post(
        f"/v1/runs/{run_id}/cancel", json={"reason": "enough", "abort_in_flight": True}
    )
    assert resp.status_code == 200, resp.text
    view = await wait_status(stack, run_id, "cancelled")
    assert view["reason"] == "cancelled"

    for action in ("pause", "resume", "cancel"):
        body = assert_problem(await stack.http.post(f"/v1/runs/{run_id}/{action}"), 409)
        assert body["run_status"] == "cancelled"
    body = assert_problem(
        await stack.http.post(f"/v1/runs/{run_id}/messages", json={"text": "late"}), 409
    )
    assert body["run_status"] == "cancelled"

    events = (await stack.http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
    typed = events_in(events)
    changes = [e.payload for e in typed if isinstance(e, StatusChangedEvent)]
    assert [(c.action, c.actor) for c in changes] == [
        ("pause", "bob"),
        ("resume", "operator"),
        ("cancel", "operator"),
    ]
    received = [e.payload for e in typed if isinstance(e, MessageReceivedEvent)]
    assert received == [MessageReceivedPayload(actor="operator", text="hurry up")]


async def test_control_bodies_are_validated(stack: Stack) -> None:
    run_id = await launch(stack, scripted(finish_turn()))
    body = assert_problem(
        await stack.http.post(f"/v1/runs/{run_id}/pause", json={"reason": 5, "extra": 1}), 422
    )
    assert {tuple(e["loc"]) for e in body["errors"]} >= {("body", "extra")}
    assert_problem(await stack.http.post(f"/v1/runs/{run_id}/messages", json={"text": ""}), 422)
    assert_problem(
        await stack.http.post(
            f"/v1/runs/{run_id}/approvals/ap-1",
            json={"decision": "maybe", "arguments_digest": "abc"},
        ),
        422,
    )


@pytest.mark.docker
async def test_approval_flow_mismatch_409_then_approve(stack: Stack) -> None:
    spec = scripted(
        tool_turn("list_files", path="."),
        finish_turn("listed"),
        approval={"mode": "tools", "tools": ["list_files"]},
    )
    run_id = await launch(stack, spec)
    view = await wait_status(stack, run_id, "awaiting_approval", timeout=60)
    pending = view["pending_approval"]
    approval_id, digest = pending["approval_id"], pending["call"]["arguments_digest"]
    assert pending["call"]["name"] == "list_files"

    wrong_digest = await stack.http.post(
        f"/v1/runs/{run_id}/approvals/{approval_id}",
        json={"decision": "approve", "arguments_digest": "f" * 64},
    )
    body = assert_problem(wrong_digest, 409)
    assert body["type"].endswith("/approval-mismatch")
    assert body["run_status"] == "awaiting_approval"
    wrong_id = await stack.http.post(
        f"/v1/runs/{run_id}/approvals/ap-nope",
        json={"decision": "deny", "arguments_digest": digest},
    )
    assert assert_problem(wrong_id, 409)["type"].endswith("/approval-mismatch")

    ok = await stack.http.post(
        f"/v1/runs/{run_id}/approvals/{approval_id}",
        json={"decision": "approve", "arguments_digest": digest, "reason": "fine"},
        headers=bearer(await stack.new_key("carol", Role.APPROVER)),
    )
    assert ok.status_code == 200, ok.text
    # The answer is the status the decision moved the run to, not the one it left.
    assert ok.json()["detail"] == "approved" and ok.json()["status"] == "running"
    view = await wait_status(stack, run_id, "completed", timeout=90)
    assert view["final_answer"] == "listed"
    again = await stack.http.post(
        f"/v1/runs/{run_id}/approvals/{approval_id}",
        json={"decision": "approve", "arguments_digest": digest},
    )
    assert assert_problem(again, 409)["run_status"] == "completed"
    events = (await stack.http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
    resolved = [e.payload for e in events_in(events) if isinstance(e, ApprovalResolvedEvent)]
    assert resolved and resolved[0].approved is True and resolved[0].actor == "carol"


# ----------------------------------------------------------------- artifacts


@pytest.mark.docker
async def test_artifacts_list_and_download_only_the_runs_own(stack: Stack) -> None:
    content = "hello from the sandbox\n"
    spec = scripted(tool_turn("write_file", path="report.txt", content=content), finish_turn())
    run_id = await launch(stack, spec)
    await wait_status(stack, run_id, "completed", timeout=90)
    listing = (await stack.http.get(f"/v1/runs/{run_id}/artifacts")).json()["artifacts"]
    ref = next(a for a in listing if a["name"].endswith("report.txt"))
    assert ref["digest"] == hashlib.sha256(content.encode()).hexdigest()

    resp = await stack.http.get(f"/v1/runs/{run_id}/artifacts/{ref['digest']}")
    assert resp.status_code == 200
    assert resp.content == content.encode()
    assert resp.headers["content-length"] == str(len(content))
    assert resp.headers["content-type"].startswith(ref["content_type"])
    assert 'filename="report.txt"' in resp.headers["content-disposition"]

    # A digest that exists in the store but belongs to no artifact of this run: 404.
    other = await launch(stack, scripted(finish_turn()))
    await wait_status(stack, other, "completed")
    assert_problem(await stack.http.get(f"/v1/runs/{other}/artifacts/{ref['digest']}"), 404)
    assert_problem(await stack.http.get(f"/v1/runs/{run_id}/artifacts/{'1' * 64}"), 404)
    assert_problem(await stack.http.get(f"/v1/runs/{run_id}/artifacts/not-a-digest"), 422)


async def test_every_listed_artifact_downloads_with_its_digest_and_size(stack: Stack) -> None:
    run_id = await launch(stack, scripted(finish_turn()))
    view = await wait_status(stack, run_id, "completed")
    resp = await stack.http.get(f"/v1/runs/{run_id}/artifacts")
    assert resp.status_code == 200
    listing = resp.json()["artifacts"]
    assert listing == view["artifacts"]  # the list is the status query's
    for ref in listing:
        data = await stack.http.get(f"/v1/runs/{run_id}/artifacts/{ref['digest']}")
        assert data.status_code == 200
        assert hashlib.sha256(data.content).hexdigest() == ref["digest"]
        assert int(data.headers["content-length"]) == ref["size"] == len(data.content)
    assert_problem(await stack.http.get(f"/v1/runs/{run_id}/artifacts/{'a' * 64}"), 404)


# ------------------------------------------------------------------ webhooks


async def test_webhook_is_signed_and_retried_after_the_receiver_fails(stack: Stack) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def receiver(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        received.append((headers, body))
        status = 503 if len(received) == 1 else 204  # the first delivery fails
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    import uvicorn

    from tests.api_fixtures import _Server

    port = free_port()
    server = _Server(uvicorn.Config(receiver, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, timeout=10)
        spec = scripted(finish_turn("hooked"), webhook={"url": f"http://127.0.0.1:{port}/hook"})
        run_id = await launch(stack, spec)
        await wait_status(stack, run_id, "completed")
        await wait_until(lambda: len(received) >= 2, timeout=30)
    finally:
        server.should_exit = True
        await task
    assert len(received) == 2
    for headers, body in received:
        assert verify(
            WEBHOOK_SECRET,
            headers[TIMESTAMP_HEADER.lower()],
            body,
            headers[SIGNATURE_HEADER.lower()],
        )
        assert not verify(
            "wrong-secret",
            headers[TIMESTAMP_HEADER.lower()],
            body,
            headers[SIGNATURE_HEADER.lower()],
        )
    (first_headers, _), (second_headers, second_body) = received
    assert first_headers["x-agentrun-delivery"] == second_headers["x-agentrun-delivery"]
    delivery = json.loads(second_body)
    assert delivery["run_id"] == run_id and delivery["tenant_id"] == "apitest"
    hooked = RUN_EVENT.validate_python(delivery["event"])
    assert isinstance(hooked, RunFinishedEvent) and hooked.payload.final_answer == "hooked"

    async def delivered() -> list[WebhookDeliveredPayload]:
        events = events_in((await stack.http.get(f"/v1/runs/{run_id}/events")).json())
        return [e.payload for e in events if isinstance(e, WebhookDeliveredEvent)]

    hooks = await wait_until(delivered, timeout=10)
    assert hooks[0].ok is True


async def test_webhook_without_a_deployment_secret_is_refused(
    client: Client, tmp_path: Path
) -> None:
    settings = api_settings(tmp_path, "tq-unused", webhook_secret=None)
    async with serve_api(settings, client) as url, httpx.AsyncClient(base_url=url) as http:
        http.headers.update(admin_headers(settings))
        spec = scripted(finish_turn(), webhook={"url": "http://127.0.0.1:9/hook"})
        body = assert_problem(await http.post("/v1/runs", json=spec), 422)
    assert "AGENTRUN_WEBHOOK_SECRET" in body["detail"]


# ----------------------------------------------------- fallbacks and errors


async def test_get_run_falls_back_to_recorded_state_without_a_worker(
    stack: Stack, client: Client, tmp_path: Path
) -> None:
    queue = f"tq-noworker-{uuid.uuid4().hex[:8]}"
    settings = api_settings(
        stack.state_dir, queue, api_query_timeout_seconds=1.0, api_update_timeout_seconds=1.0
    )
    async with (
        serve_api(settings, client) as url,
        httpx.AsyncClient(base_url=url, headers=stack.http.headers) as http,
    ):
        # Queued: nobody polls this task queue, so only visibility data is available.
        queued = (await http.post("/v1/runs", json=scripted(finish_turn()))).json()["run_id"]
        # Answered from visibility once the status query gives up (no worker to ask).
        view = (await http.get(f"/v1/runs/{queued}")).json()
        assert view["source"] == "visibility" and view["status"] == "queued"
        timeout = assert_problem(await http.post(f"/v1/runs/{queued}/pause"), 504)
        assert "no worker" in timeout["detail"]
        assert_problem(await http.get(f"/v1/runs/{queued}/events"), 503)

        # Completed, then the worker goes away: the recorded result answers.
        done_queue = f"tq-done-{uuid.uuid4().hex[:8]}"
        run = await start_run(
            client,
            settings,
            "apitest",
            RunSpec.model_validate(scripted(finish_turn("recorded"))),
            Actor(subject="alice"),
            task_queue=done_queue,
        )
        async with build_worker(client, settings, task_queue=done_queue):
            await client.get_workflow_handle(run.workflow_id).result()
        view = (await http.get(f"/v1/runs/{run.run_id}")).json()
        assert view["source"] == "result"
        assert view["status"] == "completed" and view["final_answer"] == "recorded"
        # Terminated by an operator: the status says so, even though the workflow never did.
        await client.get_workflow_handle(f"agentrun/apitest/{queued}").terminate("ops")
        view = (await http.get(f"/v1/runs/{queued}")).json()
        assert view["status"] == "failed" and "terminated" in view["error"]
        assert_problem(await http.post(f"/v1/runs/{queued}/resume"), 409)


async def test_error_shapes_unknown_route_validation_and_body_limit(stack: Stack) -> None:
    body = assert_problem(await stack.http.get("/v2/nothing"), 404)
    assert body["instance"] == "/v2/nothing"
    assert_problem(await stack.http.delete("/v1/runs"), 405)

    body = assert_problem(await stack.http.post("/v1/runs", json={"goal": ""}), 422)
    assert any(e["loc"] == ["body", "goal"] for e in body["errors"])
    assert "goal" in body["detail"]
    assert_problem(
        await stack.http.post(
            "/v1/runs", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
    )
    assert_problem(await stack.http.post("/v1/runs", json={"goal": "x", "tools": ["rm"]}), 422)
    assert_problem(
        await stack.http.post("/v1/runs", json={"goal": "x"}, headers={"Idempotency-Key": "a b"}),
        422,
    )
    for user in (b"a b", b"alice\xa0"):  # a Latin-1 space is no more a user than " "
        assert_problem(
            await stack.http.post(
                "/v1/runs", json={"goal": "x"}, headers={b"X-Agentrun-On-Behalf-Of": user}
            ),
            422,
        )
    assert_problem(await stack.http.get("/v1/runs/bad%20id"), 422)

    huge = {"goal": "x" * (stack.settings.api_max_body_bytes + 10)}
    body = assert_problem(await stack.http.post("/v1/runs", json=huge), 413)
    assert "AGENTRUN_API_MAX_BODY_BYTES" in body["detail"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(stack.settings.api_max_body_bytes // 1024 + 2):
            yield b" " * 1024

    chunked = await stack.http.post(
        "/v1/runs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(chunked, 413)


async def test_health_readiness_and_openapi(stack: Stack) -> None:
    assert (await stack.http.get("/healthz")).json() == {"status": "ok"}
    ready = await stack.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    doc = (await stack.http.get("/openapi.json")).json()
    paths = doc["paths"]
    for path in [
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/events",
        "/v1/runs/{run_id}/events/stream",
        "/v1/runs/{run_id}/pause",
        "/v1/runs/{run_id}/resume",
        "/v1/runs/{run_id}/cancel",
        "/v1/runs/{run_id}/approvals/{approval_id}",
        "/v1/runs/{run_id}/messages",
        "/v1/runs/{run_id}/artifacts",
        "/v1/runs/{run_id}/artifacts/{digest}",
        "/healthz",
        "/readyz",
    ]:
        assert path in paths, path
    create = paths["/v1/runs"]["post"]
    assert {"200", "201", "409", "413", "422", "503"} <= create["responses"].keys()
    assert "application/problem+json" in create["responses"]["409"]["content"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "RunSpec"
    )
    assert doc["components"]["schemas"]["RunSpec"]["examples"]


async def test_temporal_unreachable_gives_503_but_healthz_stays_up(
    tmp_path: Path, refused_port: int
) -> None:
    settings = api_settings(tmp_path, "tq-x", temporal_address=f"127.0.0.1:{refused_port}")
    async with (
        serve_api(settings, None) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        http.headers.update(admin_headers(settings))
        assert (await http.get("/healthz")).status_code == 200
        assert_problem(await http.get("/readyz"), 503)
        body = assert_problem(await http.get("/v1/runs"), 503)
        assert "not reachable" in body["detail"]
        assert_problem(await http.post("/v1/runs", json=scripted(finish_turn())), 503)
