"""Tracing (issue 13): one trace per run, from the API request to every model and tool call.

The run under test has two tool steps and an approval, and its worker is replaced
while the run waits for the decision: the new worker replays the whole history
(the first one's cache is gone), so any span the SDK's replay-safe provider failed
to suppress would show up twice. Spans are read from the SDK's in-memory exporter;
`tests/test_tracing_otlp.py` kills a worker process for real and reads the spans a
real collector received.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import ActivityEnvironment

from accounts.roles import Role
from activities.egress_broker import EgressBroker
from activities.tool_activities import ToolActivities
from agentrun.config import load_settings
from agentrun.contracts import (
    DispatchToolInput,
    EgressRule,
    SandboxPolicy,
    ToolCall,
    ToolResult,
    workflow_id_for,
)
from agentrun.search_attributes import SA_TRACE_ID
from agentrun.webhook_destinations import WebhookAllowList
from api.launcher import MEMO_TRACE_ID
from sandbox.docker_sandbox import DockerSandbox
from store.artifacts import LocalArtifactStore
from telemetry import setup_telemetry
from telemetry.tracing import (
    TracingSetup,
    current_trace_id,
    estimated_cost,
    instrument_httpx,
    record_model_reply,
    tool_span,
    tracer,
)
from tests.api_fixtures import (
    NOOP_TURN,
    api_settings,
    bearer,
    finish_turn,
    role_keys,
    scripted,
    serve_api,
    tool_turn,
    wait_until,
)
from tests.test_egress import echo_serving
from worker import build_worker

# Docker: the shell steps run in the real sandbox. own_process: OpenTelemetry's tracer provider is
# global and set once per process, as in production (one per service); these tests
# need it to be theirs, so scripts/test.sh runs them in a pytest process of their own.
pytestmark = [pytest.mark.docker, pytest.mark.own_process]


@pytest.fixture
def spans(tmp_path: Path) -> Any:
    """Tracing on for this test, its spans in memory; off again afterwards."""
    telemetry = setup_telemetry("agentrun-test", load_settings(state_dir=tmp_path))
    exporter = InMemorySpanExporter()
    telemetry.tracing.add_exporter(exporter)
    try:
        yield exporter
    finally:
        _disable(telemetry.tracing, exporter)


def _disable(setup: TracingSetup, exporter: InMemorySpanExporter) -> None:
    # One global provider per process: the exporter stays attached but drops spans
    # once shut down, and clients built by later tests get no plugin.
    setup.exporters.remove(type(exporter).__name__)
    exporter.shutdown()
    instrumentor = HTTPXClientInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


@pytest.fixture
async def traced_client(client: Client, spans: InMemorySpanExporter) -> AsyncIterator[Client]:
    """A client on the session's server with the SDK's OpenTelemetry plugin (tracing on)."""
    telemetry = setup_telemetry("agentrun-test", load_settings())
    plugins = telemetry.client_plugins()
    assert plugins, "tracing is on: the client gets the SDK's plugin"
    yield await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        data_converter=pydantic_data_converter,
        plugins=plugins,
    )


def _hex(value: int) -> str:
    return format(value, "032x")


def _by_id(spans: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans if s.context is not None}


def _ancestors(span: ReadableSpan, index: dict[int, ReadableSpan]) -> list[str]:
    names: list[str] = []
    parent = span.parent
    while parent is not None and parent.span_id in index:
        up = index[parent.span_id]
        names.append(up.name)
        parent = up.parent
    return names


async def test_a_run_with_an_approval_and_a_replaced_worker_is_one_trace_without_duplicates(
    traced_client: Client, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    task_queue = f"tq-trace-{uuid.uuid4().hex[:10]}"
    settings = api_settings(tmp_path, task_queue)
    spec = scripted(
        tool_turn("write_file", path="one.txt", content="one"),
        tool_turn("shell", command="cat one.txt; echo two"),
        finish_turn("traced"),
        approval={"mode": "tools", "tools": ["shell"]},
        goal="trace me",
    )
    async with serve_api(settings, traced_client) as url:
        keys = await role_keys(url, settings)
        async with httpx.AsyncClient(
            base_url=url, timeout=30, headers=bearer(keys[Role.OPERATOR])
        ) as http:

            async def view(run_id: str) -> dict[str, Any]:
                body: dict[str, Any] = (await http.get(f"/v1/runs/{run_id}")).json()
                return body

            async with build_worker(traced_client, settings, task_queue=task_queue):
                resp = await http.post("/v1/runs", json=spec)
                assert resp.status_code == 201, resp.text
                run_id: str = resp.json()["run_id"]
                waiting = await wait_until(
                    lambda: _status_is(view(run_id), "awaiting_approval"), timeout=90
                )
            # Worker one is gone (its workflow cache with it); worker two replays the
            # whole history when the decision arrives. Collecting now closes worker
            # one's workflow coroutine here, outside any workflow: its open
            # `RunWorkflow` span ends, and must not be exported (see `_DropEvicted`).
            gc.collect()
            async with build_worker(traced_client, settings, task_queue=task_queue):
                pending = waiting["pending_approval"]
                decided = await http.post(
                    f"/v1/runs/{run_id}/approvals/{pending['approval_id']}",
                    json={
                        "decision": "approve",
                        "arguments_digest": pending["call"]["arguments_digest"],
                    },
                )
                assert decided.status_code == 200, decided.text
                done = await wait_until(lambda: _status_is(view(run_id), "completed"), timeout=90)
    assert done["final_answer"] == "traced"

    # The trace id is in the run view, the search attribute and the memo.
    trace_id = done["trace_id"]
    assert trace_id and len(trace_id) == 32
    desc = await traced_client.get_workflow_handle(
        workflow_id_for(settings.dev_tenant, run_id)
    ).describe()
    assert desc.typed_search_attributes.get(SA_TRACE_ID) == trace_id
    assert await desc.memo_value(MEMO_TRACE_ID) == trace_id

    # Spans end asynchronously (the RunWorkflow span with the workflow task that ends it).
    def run_spans() -> list[ReadableSpan]:
        return [
            s
            for s in spans.get_finished_spans()
            if s.context is not None and _hex(s.context.trace_id) == trace_id
        ]

    await wait_until(
        lambda: any(s.name == "RunWorkflow:AgentRunWorkflow" for s in run_spans()), timeout=30
    )
    trace = run_spans()
    names = Counter(s.name for s in trace)
    index = _by_id(trace)

    # One trace, rooted in the launching request.
    launch = [s for s in trace if s.name == "POST /v1/runs" and s.kind == SpanKind.SERVER]
    assert len(launch) == 1, names
    # No duplicate spans from the replay: every span id once, one workflow span,
    # one activity span pair per model call and per tool call.
    ids = Counter(s.context.span_id for s in trace if s.context is not None)
    assert [s.name for s in trace if s.context and ids[s.context.span_id] > 1] == []
    assert names["RunWorkflow:AgentRunWorkflow"] == 1, names
    assert names["StartActivity:call_model"] == names["RunActivity:call_model"] == 3, names
    # (`finish` is a tool call too: three.)
    assert names["StartActivity:dispatch_tool"] == names["RunActivity:dispatch_tool"] == 3, names
    assert names["chat default"] == 3, names
    assert names["execute_tool write_file"] == names["execute_tool shell"] == 1, names
    assert names["execute_tool finish"] == 1, names

    # Parent/child: request → StartWorkflow → RunWorkflow → step → StartActivity →
    # RunActivity → the call's span. The step that waited for the approval started
    # on the first worker and ended on the second: still one span.
    assert names["agentrun.step"] == 3, names
    for span in trace:
        if span.name.startswith(("chat ", "execute_tool ")):
            chain = _ancestors(span, index)
            assert chain[0].startswith("RunActivity:"), chain
            assert chain[1].startswith("StartActivity:"), chain
            assert chain[2] == "agentrun.step", chain
            assert chain[3] == "RunWorkflow:AgentRunWorkflow", chain
            assert "StartWorkflow:AgentRunWorkflow" in chain and "POST /v1/runs" in chain, chain
            step = next(index[p.span_id] for p in [span.parent] if p is not None)
            while step.name != "agentrun.step":
                assert step.parent is not None
                step = index[step.parent.span_id]
            attrs = dict(span.attributes or {})
            assert dict(step.attributes or {})["agentrun.step"] == attrs["agentrun.step"]

    # GenAI semantic conventions on the model calls.
    chats = [s for s in trace if s.name == "chat default"]
    for chat in chats:
        attrs = dict(chat.attributes or {})
        assert chat.kind == SpanKind.CLIENT
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "scripted"
        assert attrs["gen_ai.request.model"] == "default"
        assert attrs["agentrun.run_id"] == run_id
        assert isinstance(attrs["gen_ai.usage.input_tokens"], int)
        assert isinstance(attrs["gen_ai.usage.output_tokens"], int)
        assert attrs["gen_ai.response.finish_reasons"]
        # Content capture is off by default: no prompt, no completion on the span.
        assert "gen_ai.input.messages" not in attrs and "gen_ai.output.messages" not in attrs
    assert sorted(int(str(dict(c.attributes or {})["agentrun.step"])) for c in chats) == [1, 2, 3]

    # Tool spans: name, call id, exit code, durations.
    shell = next(s for s in trace if s.name == "execute_tool shell")
    attrs = dict(shell.attributes or {})
    assert attrs["gen_ai.tool.name"] == "shell"
    assert attrs["gen_ai.tool.call.id"] == "s2-c0"
    assert attrs["agentrun.tool.exit_code"] == 0
    assert "agentrun.tool.limit_hit" not in attrs
    assert attrs["agentrun.tool.exec_s"] >= 0  # type: ignore[operator]
    assert attrs["agentrun.tool.sandbox_claim_s"] >= 0  # type: ignore[operator]
    assert attrs["agentrun.tool.queue_wait_s"] >= 0  # type: ignore[operator]


async def test_a_retried_model_call_and_a_run_continued_as_new_stay_in_its_trace(
    traced_client: Client, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    task_queue = f"tq-trace-{uuid.uuid4().hex[:10]}"
    settings = api_settings(tmp_path, task_queue, continue_as_new_after_steps=2)
    # The first model call fails once (a 503): its retry is one more attempt span.
    spec = scripted(
        {**NOOP_TURN, "fail_attempts": 1}, NOOP_TURN, NOOP_TURN, finish_turn("continued")
    )
    async with (
        serve_api(settings, traced_client) as url,
        build_worker(traced_client, settings, task_queue=task_queue),
    ):
        keys = await role_keys(url, settings)
        async with httpx.AsyncClient(
            base_url=url, timeout=30, headers=bearer(keys[Role.OPERATOR])
        ) as http:
            resp = await http.post("/v1/runs", json=spec)
            assert resp.status_code == 201, resp.text
            run_id: str = resp.json()["run_id"]

            async def ended() -> dict[str, Any] | None:
                body: dict[str, Any] = (await http.get(f"/v1/runs/{run_id}")).json()
                return body if body.get("status") == "completed" else None

            done = await wait_until(ended, timeout=90)
    trace_id = done["trace_id"]

    def workflows() -> list[ReadableSpan]:
        return [
            s
            for s in spans.get_finished_spans()
            if s.name == "RunWorkflow:AgentRunWorkflow"
            and s.context is not None
            and _hex(s.context.trace_id) == trace_id
        ]

    # One RunWorkflow span per Temporal run, all in the launch's trace, each the
    # parent of the next (the plugin carries the context through continue-as-new).
    runs = await wait_until(lambda: len(workflows()) >= 2 and workflows(), timeout=30)
    assert len({dict(s.attributes or {})["temporalRunID"] for s in runs}) == len(runs)
    ids = {s.context.span_id for s in runs if s.context is not None}
    assert sum(1 for s in runs if s.parent is not None and s.parent.span_id in ids) == len(runs) - 1
    chats = [
        s
        for s in spans.get_finished_spans()
        if s.name == "chat default" and dict(s.attributes or {}).get("agentrun.run_id") == run_id
    ]
    assert len(chats) == 5 and all(_hex(c.context.trace_id) == trace_id for c in chats if c.context)
    first = sorted(
        (c for c in chats if dict(c.attributes or {})["agentrun.step"] == 1),
        key=lambda c: int(str(dict(c.attributes or {})["agentrun.attempt"])),
    )
    assert [dict(c.attributes or {})["agentrun.attempt"] for c in first] == [1, 2]
    assert [c.status.status_code.name for c in first] == ["ERROR", "UNSET"]
    index = _by_id(list(spans.get_finished_spans()))
    activities = [index[c.parent.span_id] for c in first if c.parent is not None]
    assert [a.name for a in activities] == ["RunActivity:call_model"] * 2
    assert activities[0].context != activities[1].context  # one span per attempt …
    assert (
        {a.parent.span_id for a in activities if a.parent is not None}
        == {  # … one start
            a.parent.span_id for a in activities[:1] if a.parent is not None
        }
    )


async def _status_is(body: Any, status: str) -> dict[str, Any] | None:
    got: dict[str, Any] = await body
    return got if got.get("status") == status else None


# ------------------------------------------------------------ unit-level pieces


def test_content_is_captured_only_when_turned_on_and_then_redacted(tmp_path: Path) -> None:
    class Redact:
        def redact(self, text: str) -> str:
            return text.replace("hunter2-secret", "[REDACTED:pw]")

    telemetry = setup_telemetry("agentrun-test", load_settings(state_dir=tmp_path))
    exporter = InMemorySpanExporter()
    telemetry.tracing.add_exporter(exporter)
    try:
        for capture in (False, True):
            telemetry.tracing.capture_content = capture
            with tracer().start_as_current_span(f"capture={capture}") as span:
                record_model_reply(
                    span,
                    model="m",
                    input_tokens=3,
                    output_tokens=4,
                    finish_reason="stop",
                    prompt=[{"role": "user", "content": "the pw is hunter2-secret"}],
                    completion="echo hunter2-secret",
                    redactor=Redact(),
                )
        off, on = (dict(s.attributes or {}) for s in exporter.get_finished_spans())
    finally:
        telemetry.tracing.capture_content = False
        _disable(telemetry.tracing, exporter)
    assert "gen_ai.input.messages" not in off and "gen_ai.output.messages" not in off
    assert off["gen_ai.usage.input_tokens"] == 3 and off["gen_ai.response.finish_reasons"] == (
        "stop",
    )
    assert "[REDACTED:pw]" in str(on["gen_ai.input.messages"])
    assert "hunter2-secret" not in str(on["gen_ai.input.messages"]) + str(
        on["gen_ai.output.messages"]
    )


def test_a_tool_span_records_the_limit_hit_and_fails(tmp_path: Path) -> None:
    from telemetry.tracing import record_tool_result

    telemetry = setup_telemetry("agentrun-test", load_settings(state_dir=tmp_path))
    exporter = InMemorySpanExporter()
    telemetry.tracing.add_exporter(exporter)
    try:
        with tool_span(tool="shell", call_id="s1-c0", step=1, queue_wait_s=-0.5) as span:
            assert current_trace_id() is not None
            record_tool_result(span, ok=False, exit_code=137, limit_hit="timeout", exec_s=2.0)
        (done,) = exporter.get_finished_spans()
    finally:
        _disable(telemetry.tracing, exporter)
    attrs = dict(done.attributes or {})
    assert attrs["agentrun.tool.limit_hit"] == "timeout"
    assert attrs["agentrun.tool.exit_code"] == 137
    assert attrs["agentrun.tool.queue_wait_s"] == 0.0  # clock skew never goes negative
    assert done.status.status_code.name == "ERROR"


def test_the_cost_comes_from_the_price_table_and_unpriced_models_have_none() -> None:
    telemetry = setup_telemetry("agentrun-test", load_settings())
    saved = telemetry.tracing.prices
    telemetry.tracing.prices = {"gpt-x": {"input": 2.0, "output": 10.0}}
    try:
        assert estimated_cost("gpt-x", 1_000_000, 100_000) == pytest.approx(3.0)
        assert estimated_cost("unknown", 10, 10) is None
    finally:
        telemetry.tracing.prices = saved


def test_no_trace_id_outside_a_span() -> None:
    assert current_trace_id() is None


def test_a_span_without_an_exporter_gives_runs_no_trace_id(tmp_path: Path) -> None:
    # The run view, search attribute and memo would point at a trace nobody kept.
    telemetry = setup_telemetry("agentrun-test", load_settings(state_dir=tmp_path))
    assert not telemetry.tracing.enabled
    with tracer().start_as_current_span("not exported") as span:
        assert span.get_span_context().is_valid
        assert current_trace_id() is None


async def test_without_an_exporter_clients_get_no_plugin(tmp_path: Path) -> None:
    telemetry = setup_telemetry("agentrun-test", load_settings(state_dir=tmp_path))
    assert not telemetry.tracing.enabled
    assert telemetry.client_plugins() == []
    await asyncio.sleep(0)


def test_only_the_detach_error_of_an_evicted_workflow_is_silenced() -> None:
    from telemetry.tracing import _evicted_detach

    def record(context: BaseException | None) -> logging.LogRecord:
        try:
            try:
                if context is not None:
                    raise context
                raise ValueError("token was created in a different Context")
            except BaseException:
                raise ValueError("token was created in a different Context")  # noqa: B904
        except ValueError as exc:
            return logging.LogRecord(
                "opentelemetry.context",
                logging.ERROR,
                __file__,
                1,
                "Failed to detach context",
                None,
                (type(exc), exc, exc.__traceback__),
            )

    assert not _evicted_detach(record(GeneratorExit()))
    assert _evicted_detach(record(RuntimeError("something else")))


def test_egress_destinations_see_no_trace_context_while_tool_spans_record_the_call(
    spans: InMemorySpanExporter, docker_sandbox: DockerSandbox, tmp_path: Path
) -> None:
    # httpx instrumented as in a traced worker: the broker's upstream request must
    # still carry only what the tool sent (no `traceparent`, no span of its own).
    instrument_httpx()
    store = LocalArtifactStore(tmp_path / "artifacts")
    broker = EgressBroker(lambda tenant, name: "", WebhookAllowList.of([], ["127.0.0.1/32"]))
    tools = ToolActivities(docker_sandbox, store, egress=broker)
    with echo_serving() as server:
        url = f"http://127.0.0.1:{server.port}/hello"
        inp = DispatchToolInput(
            run_id="r-trace",
            tenant_id="t-trace",
            call=ToolCall(
                id="s1-c0",
                name="http_request",
                arguments_digest=store.for_tenant("t-trace").put(json.dumps({"url": url}).encode()),
            ),
            sandbox=SandboxPolicy(),
            timeout_seconds=30,
            max_output_bytes=4096,
            step=1,
            egress=[
                EgressRule.model_validate(
                    {"host": "127.0.0.1", "scheme": "http", "port": server.port}
                )
            ],
        )
        with tracer().start_as_current_span("a traced activity"):
            result: ToolResult = ActivityEnvironment().run(tools.dispatch_tool, inp)
    assert result.ok, result
    (seen,) = server.seen
    assert not {k.lower() for k in seen.headers} & {"traceparent", "tracestate"}, seen.headers
    finished = spans.get_finished_spans()
    assert not [s for s in finished if s.name.startswith("GET")]  # no httpx span either
    (tool,) = [s for s in finished if s.name == "execute_tool http_request"]
    assert dict(tool.attributes or {})["gen_ai.tool.call.id"] == "s1-c0"
