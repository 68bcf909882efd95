"""Sandboxes on the Docker engine `DOCKER_HOST` names: a second, real `dockerd`.

The second engine (tests/dockerd_fixtures.py) has its own socket, data and exec
roots, and a loopback TCP port with mutual TLS. Checked from both engines' side:

* a `worker.py` process started with `DOCKER_HOST=unix://<its socket>` runs a
  run's tool calls there, and nothing of the run appears on the system engine;
* over `tcp://` with `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH` the sandbox creates,
  execs and removes there; a client certificate of another CA is refused, and the
  error shows no certificate;
* a worker whose engine cannot be reached, or whose placement cannot work
  (workspace quotas on another host, a remote engine without TLS), stops at start
  with one line naming the setting to change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from agentrun.contracts import EventType, RunStatus, ToolResultEvent
from sandbox._containers import LABEL_NAMESPACE
from sandbox.base import SandboxUnavailable
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from sandbox.engine import Engine, placement_problem
from tests.conftest import ROOT
from tests.dockerd_fixtures import SecondEngine
from tests.sandbox_fixtures import new_run, sh
from tests.test_workflow_recovery import _spawn_worker
from tests.workflow_harness import all_events, finish, outcome, scripted_spec, shell, start_run

pytestmark = pytest.mark.docker


def _namespace_containers(client: docker.DockerClient, namespace: str) -> list[str]:
    found = client.api.containers(all=True, filters={"label": f"{LABEL_NAMESPACE}={namespace}"})
    return [c["Names"][0].lstrip("/") for c in found]


async def test_a_worker_with_docker_host_runs_the_tools_on_that_engine_only(
    temporal_env: WorkflowEnvironment,
    client: Client,
    task_queue: str,
    state_dir: Path,
    second_engine: SecondEngine,
) -> None:
    namespace = f"remote-{uuid.uuid4().hex[:10]}"
    log = state_dir / "worker.log"
    worker = _spawn_worker(
        temporal_env,
        task_queue,
        state_dir,
        log,
        namespace,
        environ={"DOCKER_HOST": second_engine.unix_host},
    )
    second, system = second_engine.client(), docker.from_env()
    try:
        spec = scripted_spec(
            shell("echo built on the second engine > where.txt; sleep 3; cat where.txt"),
            finish("done"),
        )
        handle = await start_run(client, task_queue, spec)
        seen_there: list[str] = []
        for _ in range(600):  # while the run's container exists (the sleep)
            seen_there = _namespace_containers(second, namespace)
            if seen_there:
                break
            await asyncio.sleep(0.1)
        seen_here = _namespace_containers(system, namespace)
        result = await outcome(handle)
        events = await all_events(handle)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        second.close()
        system.close()
    assert result.status == RunStatus.COMPLETED, log.read_text()[-3000:]
    assert seen_there and not seen_here, (seen_there, seen_here)
    output = next(
        e for e in events if isinstance(e, ToolResultEvent) and e.type == EventType.TOOL_RESULT
    )
    assert "built on the second engine" in output.payload.model_dump_json()
    assert f"sandboxes on the Docker engine at {second_engine.unix_host}" in log.read_text()


@pytest.fixture
def tls_engine_env(second_engine: SecondEngine, monkeypatch: pytest.MonkeyPatch) -> SecondEngine:
    monkeypatch.setenv("DOCKER_HOST", second_engine.tcp_host)
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(second_engine.client_certs))
    return second_engine


def test_over_tcp_with_mutual_tls_the_sandbox_runs_there(
    tls_engine_env: SecondEngine, sandbox_config: SandboxConfig
) -> None:
    # A remote engine cannot mount the worker's loop devices (sandbox/engine.py).
    config = dataclasses.replace(
        sandbox_config, namespace=f"tls-{uuid.uuid4().hex[:8]}", workspace_images=None
    )
    assert (
        placement_problem(
            Engine.from_environ({"DOCKER_HOST": tls_engine_env.tcp_host, "DOCKER_TLS_VERIFY": "1"}),
            "off",
        )
        is None
    )
    sandbox = DockerSandbox(config)
    second = tls_engine_env.client()
    system = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    run = new_run()
    try:
        out = sh(sandbox, run, "echo over tls; id -u")
        assert out.exit_code == 0 and out.stdout.split() == [b"over", b"tls", b"10001"]
        assert len(_namespace_containers(second, config.namespace)) == 1
        assert _namespace_containers(system, config.namespace) == []
        sandbox.destroy(run, keep_workspace=False)
        assert _namespace_containers(second, config.namespace) == []
    finally:
        sandbox.close()
        second.close()
        system.close()


def test_a_client_certificate_of_another_ca_is_refused_without_showing_it(
    second_engine: SecondEngine, sandbox_config: SandboxConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", second_engine.tcp_host)
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(second_engine.foreign_certs))
    with pytest.raises(SandboxUnavailable) as refused:
        DockerSandbox(dataclasses.replace(sandbox_config, workspace_images=None))
    message = str(refused.value)
    assert "Docker engine unreachable" in message
    assert "BEGIN" not in message and "PRIVATE" not in message


def _start_worker(environ: dict[str, str], state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        env={"PATH": "", "AGENTRUN_STATE_DIR": str(state_dir), **environ},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_an_unreachable_engine_stops_the_worker_with_one_line_naming_docker_host(
    client: Client, tmp_path: Path
) -> None:
    missing = f"unix://{tmp_path / 'no-engine.sock'}"
    proc = _start_worker(
        {
            "AGENTRUN_TEMPORAL_ADDRESS": client.service_client.config.target_host,
            "AGENTRUN_PAYLOAD_ENCRYPTION": "off",
            "AGENTRUN_WORKER_METRICS_PORT": "0",
            "DOCKER_HOST": missing,
        },
        tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"cannot use the Docker engine at {missing} (DOCKER_HOST" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    ("environ", "quota", "names"),
    [
        (
            {"DOCKER_HOST": "tcp://sandbox-1.example:2376", "DOCKER_TLS_VERIFY": "1"},
            "loop",
            "AGENTRUN_SANDBOX_WORKSPACE_QUOTA=off",
        ),
        ({"DOCKER_HOST": "tcp://sandbox-1.example:2375"}, "off", "DOCKER_TLS_VERIFY=1"),
    ],
    ids=["quotas-on-another-host", "remote-without-tls"],
)
def test_a_placement_that_cannot_work_is_named(
    environ: dict[str, str], quota: str, names: str
) -> None:
    problem = placement_problem(Engine.from_environ(environ), quota)
    assert problem is not None and names in problem


@pytest.mark.parametrize(
    "host",
    [
        "",
        "unix:///var/run/docker.sock",
        "unix:///tmp/engine.sock",
        "tcp://127.0.0.1:2376",
        "tcp://localhost:2376",
        "tcp://[::1]:2376",
    ],
)
def test_an_engine_on_this_host_keeps_workspace_quotas(host: str) -> None:
    engine = Engine.from_environ({"DOCKER_HOST": host, "DOCKER_TLS_VERIFY": "1"})
    assert not engine.remote
    assert placement_problem(engine, "loop") is None
