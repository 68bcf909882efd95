"""Structured logs: trace id, span id, run id and tenant on every line.

The formatter and filter alone (a real OpenTelemetry SDK tracer, no exporter), an
activity run by the SDK's `ActivityEnvironment` (its workflow id names the run), and
the API served by uvicorn with production's log config, whose access line of a
request names the request's trace, run and tenant.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from temporalio import activity
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from agentrun.contracts import workflow_id_for
from api.app import create_app
from telemetry import setup_telemetry
from telemetry.logs import (
    LOG_FIELDS,
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    bind_run,
    uvicorn_log_config,
)
from tests.api_fixtures import admin_headers, api_settings, serve_api

log = logging.getLogger("agentrun.test.logs")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What `log` writes, through the production filter and JSON formatter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield out
    finally:
        log.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_carries_the_trace_span_run_and_tenant(json_lines: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("step") as span, bind_run("r-42", "acme"):
        log.info("calling the model for %s", "step 3")
    context = span.get_span_context()
    (line,) = lines(json_lines)
    assert line["message"] == "calling the model for step 3"
    assert line["trace_id"] == trace.format_trace_id(context.trace_id)
    assert line["span_id"] == trace.format_span_id(context.span_id)
    assert (line["run_id"], line["tenant"]) == ("r-42", "acme")
    assert line["level"] == "INFO" and line["logger"] == "agentrun.test.logs"
    assert line["time"].endswith("Z")


def test_a_line_outside_any_trace_or_run_has_the_four_keys_null(
    json_lines: io.StringIO,
) -> None:
    log.warning("janitor sweep")
    (line,) = lines(json_lines)
    assert {key: line[key] for key in LOG_FIELDS} == dict.fromkeys(LOG_FIELDS)


def test_a_json_line_keeps_the_traceback_in_one_line(json_lines: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    assert len(json_lines.getvalue().splitlines()) == 1
    (line,) = lines(json_lines)
    assert "ValueError: boom" in line["exception"]


def test_an_activity_line_names_the_run_of_its_workflow_id(json_lines: io.StringIO) -> None:
    @activity.defn
    def noisy() -> None:
        log.info("inside the activity")

    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=workflow_id_for("acme", "r-7"))
    env.run(noisy)
    (line,) = lines(json_lines)
    assert (line["run_id"], line["tenant"]) == ("r-7", "acme")


def test_the_text_format_appends_what_it_knows() -> None:
    record = logging.LogRecord("agentrun.api", logging.INFO, __file__, 1, "hello", None, None)
    ContextFilter().filter(record)
    assert TextFormatter().format(record).endswith(" hello")
    with bind_run("r-1", "acme"):
        ContextFilter().filter(record := logging.makeLogRecord(record.__dict__ | {"run_id": None}))
    assert TextFormatter().format(record).endswith("hello [run=r-1 tenant=acme]")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_uvicorn_is_configured_with_the_same_formatter(fmt: Any) -> None:
    config = uvicorn_log_config(fmt)
    assert config["handlers"]["stderr"]["filters"] == ["context"]
    built = config["formatters"]["agentrun"]["()"](fmt=fmt)
    assert isinstance(built, JsonFormatter if fmt == "json" else TextFormatter)


async def test_the_api_access_line_carries_the_request_trace_run_and_tenant(
    client: Client, tmp_path: Path
) -> None:
    settings = api_settings(tmp_path, f"tq-{uuid.uuid4().hex[:8]}", log_format="json")
    setup_telemetry("agentrun-test", settings)  # the SDK tracer provider (no exporter)
    app = create_app(settings, client=client)
    FastAPIInstrumentor.instrument_app(app)  # the request's server span
    async with serve_api(settings, client, app=app) as url:
        access = logging.getLogger("uvicorn.access")
        (handler,) = access.handlers  # the one production's log config installs
        out = io.StringIO()
        old_stream = handler.setStream(out)  # type: ignore[attr-defined]
        access.setLevel(logging.INFO)  # the test server logs warnings only
        try:
            async with httpx.AsyncClient(base_url=url, headers=admin_headers(settings)) as http:
                resp = await http.get("/v1/runs/r-missing-1")
                traceparent = resp.request.headers.get("traceparent")
        finally:
            handler.setStream(old_stream)  # type: ignore[attr-defined]
    assert resp.status_code == 404
    assert traceparent is None  # the trace starts at the API: its server span is the root
    (line,) = [json.loads(raw) for raw in out.getvalue().splitlines()]
    assert line["logger"] == "uvicorn.access"
    assert line["http"]["path"] == "/v1/runs/r-missing-1" and line["http"]["status"] == 404
    assert (line["run_id"], line["tenant"]) == ("r-missing-1", settings.dev_tenant)
    assert line["trace_id"] and len(line["trace_id"]) == 32 and set(line["trace_id"]) != {"0"}
    assert line["span_id"] and len(line["span_id"]) == 16
