"""Metrics over real HTTP: the API's `/metrics`, the worker's endpoint, the SDK's series.

One stack (uvicorn on 127.0.0.1, a real worker, real Temporal, Docker for the
tool call) whose client runs on the process's Temporal runtime with metrics
(`telemetry.metrics.temporal_runtime`), so the workflow's `workflow.metric_meter()`
recordings and the SDK's `temporal_*` series arrive as they do in production. Runs
use the scripted model. Every check reads the Prometheus text a scraper reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from accounts.roles import Role
from agentrun.config import Settings
from api.routes.metrics import PENDING_APPROVALS_QUERY
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from telemetry import setup_telemetry
from telemetry.metrics import (
    PROMETHEUS_CONTENT_TYPE,
    bounded,
    render_prometheus,
    temporal_runtime,
)
from tests.api_fixtures import (
    Stack,
    _Server,
    api_settings,
    api_stack,
    bearer,
    finish_turn,
    read_body,
    scripted,
    serve_api,
    tool_turn,
    unique,
    wait_until,
)
from tests.model_fixtures import free_port
from tests.sandbox_fixtures import leftovers, new_run, sh
from worker import serve_worker_metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(value for (n, got), value in samples.items() if n == name and wanted <= got)


@pytest.fixture(scope="module")
async def metrics_client(client: Client) -> Client:
    """A client on the metrics runtime, to the session's Temporal server."""
    setup_telemetry("agentrun-test", Settings())
    return await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        data_converter=pydantic_data_converter,
        runtime=temporal_runtime(),
    )


@pytest.fixture(scope="module")
async def stack(
    metrics_client: Client, tmp_path_factory: pytest.TempPathFactory, sandbox_image: str
) -> AsyncIterator[Stack]:
    async with api_stack(metrics_client, tmp_path_factory.mktemp("metrics-state")) as running:
        yield running


async def scrape(stack: Stack) -> Samples:
    resp = await stack.http.get("/metrics", headers=stack.auth(Role.ADMIN))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == PROMETHEUS_CONTENT_TYPE
    return parse(resp.text)


async def moved(stack: Stack, check: Callable[[Samples], bool], timeout: float = 30.0) -> Samples:
    """Scrape until `check` holds (the runtime's series arrive within a drain period)."""
    latest: Samples = {}

    async def ready() -> bool:
        nonlocal latest
        latest = await scrape(stack)
        return check(latest)

    try:
        await wait_until(ready, timeout=timeout, interval=0.25)
    except Exception as exc:  # show what the scrape held
        names = sorted({name for name, _ in latest if name.startswith("agentrun")})
        raise AssertionError(f"series did not move; agentrun series now: {names}") from exc
    return latest


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[str]:
    """A loopback receiver that accepts every delivery (204); yields its URL."""

    async def receiver(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    port = free_port()
    # log_config=None: the receiver must not reconfigure uvicorn's loggers process-wide.
    config = uvicorn.Config(receiver, host="127.0.0.1", port=port, log_config=None)
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, timeout=10)
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.should_exit = True
        await task


@pytest.mark.docker
async def test_metrics_counters_move_as_a_run_with_a_tool_an_approval_and_a_webhook_runs(
    stack: Stack,
) -> None:
    before = await scrape(stack)
    # Runs of earlier tests on the session's server may wait for approvals too.
    waiting_before = total(before, "agentrun_approvals_pending")
    async with webhook_receiver() as hook:
        spec = scripted(
            tool_turn("shell", command="echo metered"),
            finish_turn("measured"),
            approval={"mode": "tools", "tools": ["shell"]},
            webhook={"url": hook},
        )
        resp = await stack.http.post("/v1/runs", json=spec)
        assert resp.status_code == 201, resp.text
        run_id = resp.json()["run_id"]

        async def awaiting() -> Any:
            view = (await stack.http.get(f"/v1/runs/{run_id}")).json()
            return view if view["status"] == "awaiting_approval" else None

        view = await wait_until(awaiting, timeout=60)
        # The gauge counts from the visibility store, which is eventually consistent.
        # The workflow's series reach the scrape within a drain period of the runtime.
        requested = total(before, "agentrun_approvals_requested_total")
        waiting = await moved(
            stack,
            lambda s: (
                total(s, "agentrun_approvals_pending") >= waiting_before + 1
                and total(s, "agentrun_approvals_requested_total") > requested
            ),
        )
        assert total(waiting, "agentrun_approvals_requested_total") == requested + 1
        pending = view["pending_approval"]
        decided = await stack.http.post(
            f"/v1/runs/{run_id}/approvals/{pending['approval_id']}",
            json={"decision": "approve", "arguments_digest": pending["call"]["arguments_digest"]},
        )
        assert decided.status_code == 200, decided.text

        def finished(s: Samples) -> bool:
            done = total(s, "agentrun_runs_finished_total", status="completed", reason="completed")
            hooks = total(s, "agentrun_webhook_deliveries_total", outcome="delivered")
            # The SDK counts the workflow completed once its last task is answered.
            closed = total(s, "temporal_workflow_completed_total")
            return (
                done
                > total(
                    before, "agentrun_runs_finished_total", status="completed", reason="completed"
                )
                and hooks > total(before, "agentrun_webhook_deliveries_total", outcome="delivered")
                and closed > total(before, "temporal_workflow_completed_total")
            )

        after = await moved(stack, finished, timeout=90)

    def grew(name: str, by: float = 1, **labels: str) -> None:
        got, was = total(after, name, **labels), total(before, name, **labels)
        found = [(n, dict(got_labels), v) for (n, got_labels), v in after.items() if n == name]
        assert got - was == by, f"{name}{labels}: {was} → {got}, expected +{by}: {found}"

    grew("agentrun_runs_launched_total", outcome="started")
    grew("agentrun_runs_started_total")
    grew("agentrun_runs_finished_total", status="completed", reason="completed")
    grew("agentrun_step_duration_seconds_count", by=2)
    grew("agentrun_approval_wait_seconds_count", decision="approved")
    grew("agentrun_model_duration_seconds_count", by=2, outcome="ok")
    grew("agentrun_model_tokens_total", by=20, type="input")
    grew("agentrun_tool_duration_seconds_count", tool="shell", outcome="ok")
    grew("agentrun_sandbox_claims_total", source="cold")
    grew("agentrun_sandbox_cold_starts_total")
    grew("agentrun_webhook_deliveries_total", outcome="delivered")
    # The Temporal SDK's own series, from the same runtime.
    assert total(after, "temporal_workflow_completed_total") > total(
        before, "temporal_workflow_completed_total"
    )
    assert total(after, "temporal_activity_execution_latency_seconds_count") > 0
    # No series names a tenant or a run.
    for (_, labels), _value in after.items():
        assert run_id not in {value for _, value in labels}
        assert stack.tenant not in {value for _, value in labels}
    # The gauge follows the visibility store back down once nothing waits.
    await moved(stack, lambda s: total(s, "agentrun_approvals_pending") <= waiting_before)


@pytest.mark.docker
async def test_sse_followers_gauge_counts_open_streams(stack: Stack) -> None:
    run_id = (await stack.http.post("/v1/runs", json=scripted(finish_turn()))).json()["run_id"]
    base = total(await scrape(stack), "agentrun_sse_followers")

    async with stack.http.stream(
        "GET", f"/v1/runs/{run_id}/events/stream", headers={"Accept": "text/event-stream"}
    ) as stream:
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        await anext(lines)  # the stream is open: its feed follows the run
        following = total(await scrape(stack), "agentrun_sse_followers")
        assert following == base + 1
    await moved(stack, lambda s: total(s, "agentrun_sse_followers") == base)


@pytest.mark.docker
async def test_metrics_need_a_system_admin_key(stack: Stack) -> None:
    anonymous = await stack.http.get("/metrics", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    operator = await stack.http.get("/metrics")  # the stack's operator key
    assert operator.status_code == 403
    other_admin = await stack.new_tenant(unique("metrics-tenant"))
    assert (await stack.http.get("/metrics", headers=bearer(other_admin))).status_code == 403
    assert (await stack.http.get("/metrics", headers=stack.auth(Role.ADMIN))).status_code == 200


async def test_metrics_public_setting_serves_them_without_a_key(
    metrics_client: Client, tmp_path: Any
) -> None:
    settings = api_settings(tmp_path, f"tq-{uuid.uuid4().hex[:8]}", metrics_public=True)
    async with serve_api(settings, metrics_client) as url, httpx.AsyncClient(base_url=url) as http:
        resp = await http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert "# TYPE agentrun_approvals_pending gauge" in resp.text


@pytest.mark.docker
async def test_worker_endpoint_serves_the_same_series(stack: Stack, caplog: Any) -> None:
    port = free_port()
    settings = stack.settings.model_copy(update={"worker_metrics_port": port})
    server = serve_worker_metrics(settings)
    assert server is not None
    try:
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert resp.status_code == 200
        samples = parse(resp.text)
        assert total(samples, "agentrun_runs_started_total") >= 1
        assert any(name.startswith("temporal_") for name, _ in samples)
        # A second worker on the same port logs and runs on.
        assert serve_worker_metrics(settings) is None
        assert "worker metrics not served" in caplog.text
        off = settings.model_copy(update={"worker_metrics_port": 0})
        assert serve_worker_metrics(off) is None
    finally:
        server.shutdown()
        server.server_close()


def test_a_label_takes_a_bounded_number_of_values() -> None:
    attribute = f"test-{uuid.uuid4().hex}"
    values = [bounded(attribute, f"model-{n}") for n in range(100)]
    assert values[:64] == [f"model-{n}" for n in range(64)]
    assert set(values[64:]) == {"other"}
    assert bounded(attribute, "model-3") == "model-3"


def test_pending_approvals_query_names_the_status_search_attribute() -> None:
    assert 'AgentRunStatus = "awaiting_approval"' in PENDING_APPROVALS_QUERY
    assert 'ExecutionStatus = "Running"' in PENDING_APPROVALS_QUERY


@pytest.mark.docker
def test_sandbox_pool_size_and_a_pool_claim_are_counted(sandbox_config: SandboxConfig) -> None:
    config = replace(sandbox_config, namespace=f"agentrun-test-{uuid.uuid4().hex[:8]}", pool_size=1)
    sandbox = DockerSandbox(config)
    try:
        before = parse(render_prometheus().decode())
        sandbox.warm_pool()
        warm = parse(render_prometheus().decode())
        assert total(warm, "agentrun_sandbox_pool_size") == 1
        run = new_run()
        assert sh(sandbox, run, "echo pooled").exit_code == 0
        after = parse(render_prometheus().decode())
        sandbox.destroy(run, keep_workspace=False)
    finally:
        sandbox.close()
        leftovers(config.namespace, remove=True)
    claims = total(after, "agentrun_sandbox_claims_total", source="pool")
    assert claims == total(before, "agentrun_sandbox_claims_total", source="pool") + 1
    assert total(after, "agentrun_sandbox_cold_starts_total") == total(
        before, "agentrun_sandbox_cold_starts_total"
    )
