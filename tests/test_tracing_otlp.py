"""Traces leave by OTLP to a real collector, and survive a worker killed mid-run.

The collector is `rotel` (its agent binary ships in the `rotel` wheel): an OTLP
receiver on loopback whose debug log prints every span it receives. The API runs
in this process (exporting to rotel like the workers), the workers are `worker.py`
processes configured only by the standard `OTEL_*` variables. The first worker is
SIGKILLed while the run waits for an approval; the second replays the run and
finishes it. Rotel must then hold the run's spans from the API and both workers,
all in one trace, each span once.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from accounts.roles import Role
from agentrun.config import load_settings
from telemetry import current_telemetry, setup_telemetry
from tests.api_fixtures import (
    WEBHOOK_SECRET,
    api_settings,
    bearer,
    finish_turn,
    role_keys,
    scripted,
    serve_api,
    tool_turn,
    wait_until,
)
from tests.conftest import ROOT
from tests.model_fixtures import free_port

# Docker: worker.py processes with the real sandbox. own_process: OpenTelemetry's tracer provider is
# global and set once per process, as in production (one per service); these tests
# need it to be theirs, so scripts/test.sh runs them in a pytest process of their own.
pytestmark = [pytest.mark.docker, pytest.mark.own_process]

_ROTEL = importlib.util.find_spec("rotel")  # the package is untyped: found, not imported
assert _ROTEL is not None and _ROTEL.origin is not None, "pip install rotel (the dev extra)"
ROTEL_AGENT = Path(_ROTEL.origin).parent / "rotel-agent"


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str


@dataclass
class Collector:
    endpoint: str
    """The OTLP/HTTP base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`)."""
    output: Path

    def spans(self) -> list[ReceivedSpan]:
        """Every span rotel printed so far (its `--debug-log traces` detailed format)."""
        found: list[ReceivedSpan] = []
        service = ""
        fields: dict[str, str] = {}
        for line in self.output.read_text(errors="replace").splitlines():
            if m := re.search(r"-> service\.name: Str\((.*)\)", line):
                service = m.group(1)
            elif m := re.match(r"\s+(Trace ID|Parent ID|ID|Name)\s+: ?(.*)$", line):
                fields[m.group(1)] = m.group(2).strip()
                if m.group(1) == "Name":
                    found.append(
                        ReceivedSpan(
                            fields.get("Trace ID", ""),
                            fields.get("ID", ""),
                            fields.get("Parent ID", ""),
                            fields["Name"],
                            service,
                        )
                    )
                    fields = {}
        return found


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    """A rotel agent on loopback: OTLP in, spans printed to its output file."""
    http_port, grpc_port = free_port(), free_port()
    output = tmp_path / "rotel.out"
    proc = subprocess.Popen(
        [
            str(ROTEL_AGENT),
            "start",
            "--exporter=blackhole",
            "--debug-log=traces",
            "--debug-log-verbosity=detailed",
            f"--otlp-http-endpoint=127.0.0.1:{http_port}",
            f"--otlp-grpc-endpoint=127.0.0.1:{grpc_port}",
            f"--pid-file={tmp_path / 'rotel.pid'}",
            f"--log-file={tmp_path / 'rotel.log'}",
        ],
        stdout=output.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", http_port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rotel did not start: {output.read_text()[-2000:]}")
            time.sleep(0.05)
        yield Collector(f"http://127.0.0.1:{http_port}", output)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _spawn_worker(
    env: WorkflowEnvironment,
    collector: Collector,
    task_queue: str,
    state_dir: Path,
    log: Path,
    namespace: str,
) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        "AGENTRUN_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "AGENTRUN_TASK_QUEUE": task_queue,
        "AGENTRUN_STATE_DIR": str(state_dir),
        "AGENTRUN_DEFAULT_PROVIDER": "scripted",
        "AGENTRUN_SANDBOX_POOL_SIZE": "0",
        "AGENTRUN_SANDBOX_NAMESPACE": namespace,
        "AGENTRUN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "AGENTRUN_WORKER_METRICS_PORT": "0",
        # The test's API uses the session's plain pydantic converter.
        "AGENTRUN_PAYLOAD_ENCRYPTION": "off",
        # Only the standard variables turn tracing on.
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_SERVICE_NAME": "agentrun-worker",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export batches every 100 ms (default 5 s)
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    return subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py")],
        cwd=ROOT,
        env=environ,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
async def exporting_client(
    client: Client, collector: Collector, tmp_path: Path
) -> AsyncIterator[Client]:
    """This process's tracing on, exporting to `collector`; a client with the plugin."""
    telemetry = setup_telemetry("agentrun-test", load_settings(state_dir=tmp_path))
    exporter = OTLPSpanExporter(endpoint=f"{collector.endpoint}/v1/traces")
    telemetry.tracing.add_exporter(exporter)
    try:
        yield await Client.connect(
            client.service_client.config.target_host,
            namespace=client.namespace,
            data_converter=pydantic_data_converter,
            plugins=telemetry.client_plugins(),
        )
    finally:
        telemetry.tracing.exporters.remove(type(exporter).__name__)
        exporter.shutdown()  # type: ignore[no-untyped-call]


async def test_spans_reach_a_real_collector_and_a_killed_worker_leaves_no_duplicates(
    temporal_env: WorkflowEnvironment,
    exporting_client: Client,
    collector: Collector,
    tmp_path: Path,
) -> None:
    task_queue = f"tq-otlp-{uuid.uuid4().hex[:10]}"
    settings = api_settings(tmp_path, task_queue)
    log = tmp_path / "worker.log"
    namespace = f"otlp-{uuid.uuid4().hex[:10]}"
    spec = scripted(
        tool_turn("write_file", path="one.txt", content="one"),
        tool_turn("shell", command="cat one.txt"),
        finish_turn("exported"),
        approval={"mode": "tools", "tools": ["shell"]},
    )
    first = _spawn_worker(temporal_env, collector, task_queue, tmp_path, log, namespace)
    second: subprocess.Popen[bytes] | None = None
    try:
        async with serve_api(settings, exporting_client) as url:
            keys = await role_keys(url, settings)
            async with httpx.AsyncClient(
                base_url=url, timeout=30, headers=bearer(keys[Role.OPERATOR])
            ) as http:

                async def in_status(run_id: str, status: str) -> dict[str, Any] | None:
                    body: dict[str, Any] = (await http.get(f"/v1/runs/{run_id}")).json()
                    return body if body.get("status") == status else None

                resp = await http.post("/v1/runs", json=spec)
                assert resp.status_code == 201, resp.text
                run_id: str = resp.json()["run_id"]
                try:
                    waiting = await wait_until(
                        lambda: in_status(run_id, "awaiting_approval"), timeout=90
                    )
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\nworker log:\n{log.read_text()[-3000:]}") from None
                trace_id = waiting["trace_id"]
                # The first step's spans left the first worker before it dies.
                await wait_until(
                    lambda: any(
                        s.name == "execute_tool write_file" and s.trace_id == trace_id
                        for s in collector.spans()
                    ),
                    timeout=30,
                )
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
                second = _spawn_worker(
                    temporal_env, collector, task_queue, tmp_path, log, namespace
                )
                pending = waiting["pending_approval"]
                decided = await http.post(
                    f"/v1/runs/{run_id}/approvals/{pending['approval_id']}",
                    json={
                        "decision": "approve",
                        "arguments_digest": pending["call"]["arguments_digest"],
                    },
                )
                assert decided.status_code == 200, decided.text
                done = await wait_until(lambda: in_status(run_id, "completed"), timeout=120)
                assert done["final_answer"] == "exported" and done["trace_id"] == trace_id
        # A stopped worker flushes its batched spans before it exits.
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    await asyncio.sleep(0.5)  # rotel prints a batch within its 200 ms timeout
    trace = [s for s in collector.spans() if s.trace_id == trace_id]
    names = Counter(s.name for s in trace)
    assert names["POST /v1/runs"] == 1, names
    assert names["StartWorkflow:AgentRunWorkflow"] == 1, names
    assert names["RunWorkflow:AgentRunWorkflow"] == 1, names  # from the second worker only
    assert names["chat default"] == 3, names
    # Step 2 started on the killed worker and ended on the second: one span still.
    assert names["agentrun.step"] == 3, names
    assert names["execute_tool write_file"] == names["execute_tool shell"] == 1, names
    ids = Counter(s.span_id for s in trace)
    assert [s.name for s in trace if ids[s.span_id] > 1] == []
    # Both workers and the API exported into the one trace.
    services = {s.name: s.service for s in trace}
    # The API ran in this process: its service is this process's telemetry's
    # (named by whichever test set it up first: one provider per process).
    this_process = current_telemetry()
    assert this_process is not None and services["POST /v1/runs"] == this_process.service
    assert (
        services["execute_tool write_file"] == services["execute_tool shell"] == ("agentrun-worker")
    )
    # Parent/child across processes: the workflow's parent is the API's StartWorkflow.
    by_id = {s.span_id: s for s in trace}
    workflow = next(s for s in trace if s.name == "RunWorkflow:AgentRunWorkflow")
    assert by_id[workflow.parent_id].name == "StartWorkflow:AgentRunWorkflow"
    shell = next(s for s in trace if s.name == "execute_tool shell")
    assert by_id[shell.parent_id].name == "RunActivity:dispatch_tool"
    start = by_id[by_id[shell.parent_id].parent_id]
    assert start.name == "StartActivity:dispatch_tool"
    assert by_id[start.parent_id].name == "agentrun.step"
    assert by_id[by_id[start.parent_id].parent_id] == workflow
