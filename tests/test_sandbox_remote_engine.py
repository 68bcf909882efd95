"""Sandboxes on the Docker engine `DOCKER_HOST` names: a second, real `dockerd`.

The second engine (tests/dockerd_fixtures.py) has its own socket, data and exec
roots, and a loopback TCP port with mutual TLS. Checked from both engines' side
(their event streams and listings, through docker-py clients of each):

* a `worker.py` process started with `DOCKER_HOST` at the second engine's unix
  socket, or at its TLS port with `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`, runs a
  run's tool calls there, and the system engine sees nothing of the run;
* over TCP with TLS the sandbox creates, execs (limits, a timeout, the egress proxy
  through the attach stream), moves files, pauses, stops and starts again, and
  removes there; quotas work on it (it is on this host), which its probe proves;
* the pool and the janitor of a sandbox on the second engine see only that engine:
  the system engine's objects of the same namespace and owner are not touched;
* a client certificate of another CA, a client that does not trust the engine's CA
  and a missing certificate are refused, the worker exits 1 with one line naming
  the variables, and no certificate's text is shown;
* a worker whose engine cannot be reached, lacks the sandbox image, or whose
  placement cannot work (quotas on another host, a remote engine without verified
  TLS, `ssh://`), or whose engine cannot mount its workspace images although
  `DOCKER_HOST` looks local (a worker in its own mount namespace), stops at start
  with one line naming the setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from agentrun.contracts import (
    EventType,
    LimitKind,
    RunStatus,
    SandboxPolicy,
    ToolResultEvent,
    workflow_id_for,
)
from sandbox import _names
from sandbox._containers import LABEL_NAMESPACE, LABEL_QUOTA_MB
from sandbox._pool import list_pool
from sandbox._workspace_images import attached_loops, release
from sandbox.base import EgressRequest, EgressResponse, SandboxUnavailable
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from sandbox.engine import Engine, placement_problem
from tests.conftest import ROOT
from tests.dockerd_fixtures import SecondEngine
from tests.sandbox_fixtures import leftovers, new_run, sh
from tests.test_workflow_recovery import _spawn_worker
from tests.workflow_harness import all_events, finish, outcome, scripted_spec, shell, start_run

pytestmark = pytest.mark.docker

SYSTEM_ENGINE = "unix:///var/run/docker.sock"


def system_client() -> docker.DockerClient:
    """The default engine, named explicitly (a test may have set DOCKER_HOST)."""
    return docker.DockerClient(base_url=SYSTEM_ENGINE, timeout=60)


def tls_environ(engine: SecondEngine, certs: Path | None = None) -> dict[str, str]:
    return {
        "DOCKER_HOST": engine.tcp_host,
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(certs or engine.client_certs),
    }


def namespace_containers(client: docker.DockerClient, namespace: str) -> dict[str, str]:
    """Name → id of the namespace's containers on one engine."""
    found = client.api.containers(all=True, filters={"label": f"{LABEL_NAMESPACE}={namespace}"})
    return {c["Names"][0].lstrip("/"): c["Id"] for c in found}


def namespace_volumes(client: docker.DockerClient, namespace: str) -> list[str]:
    found = client.api.volumes(filters={"label": f"{LABEL_NAMESPACE}={namespace}"})
    return [v["Name"] for v in found.get("Volumes") or []]


def namespace_events(
    client: docker.DockerClient, namespace: str, since: float
) -> list[dict[str, Any]]:
    """Every container event of the namespace on one engine from `since` until now."""
    return list(
        client.events(
            since=f"{since:.6f}",  # the API takes fractions of a second
            until=f"{time.time():.6f}",
            filters={"type": "container", "label": f"{LABEL_NAMESPACE}={namespace}"},
            decode=True,
        )
    )


def remove_namespace(client: docker.DockerClient, namespace: str) -> None:
    """Remove the namespace's containers and volumes from one engine, and release the
    workspace images of its quota volumes (loop devices must not leak)."""
    for container_id in namespace_containers(client, namespace).values():
        client.api.remove_container(container_id, force=True)
    found = client.api.volumes(filters={"label": f"{LABEL_NAMESPACE}={namespace}"})
    for volume in found.get("Volumes") or []:
        client.api.remove_volume(volume["Name"], force=True)
        device = (volume.get("Options") or {}).get("device")
        if LABEL_QUOTA_MB in (volume.get("Labels") or {}) and device:
            release(Path(device))


def cert_texts(*directories: Path) -> list[str]:
    """The base64 body lines of every PEM file there: none may appear in an error."""
    lines = []
    for directory in directories:
        for pem in directory.glob("*.pem"):
            lines += [ln for ln in pem.read_text().splitlines() if ln and "-----" not in ln]
    return lines


# ====================================================================== a whole run


@pytest.mark.parametrize("transport", ["unix", "tcp+tls"])
async def test_a_worker_with_docker_host_runs_the_tools_on_that_engine_only(
    temporal_env: WorkflowEnvironment,
    client: Client,
    task_queue: str,
    state_dir: Path,
    second_engine: SecondEngine,
    transport: str,
) -> None:
    namespace = f"remote-{uuid.uuid4().hex[:10]}"
    environ = (
        {"DOCKER_HOST": second_engine.unix_host}
        if transport == "unix"
        else tls_environ(second_engine)
    )
    log = state_dir / "worker.log"
    second, system = second_engine.client(), system_client()
    since = time.time() - 1
    # The worker keeps the default workspace quota: the second engine is on this host,
    # and its start-up probe must find that it mounts the worker's images.
    worker = _spawn_worker(temporal_env, task_queue, state_dir, log, namespace, environ=environ)
    try:
        spec = scripted_spec(
            shell("echo built on the second engine > where.txt; cat where.txt; hostname"),
            finish("done"),
        )
        handle = await start_run(client, task_queue, spec)
        result = await outcome(handle)
        events = await all_events(handle)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    try:
        there = namespace_events(second, namespace, since)
        here = namespace_events(system, namespace, since)
        volumes_here = namespace_volumes(system, namespace)
    finally:
        remove_namespace(second, namespace)
        second.close()
        system.close()
    assert result.status == RunStatus.COMPLETED, log.read_text()[-3000:]
    created = [e["Actor"]["Attributes"]["name"] for e in there if e["Action"] == "create"]
    runs = [r for r in (_names.run_of_container(namespace, n) for n in created) if r is not None]
    assert [workflow_id_for(r.tenant_id, r.run_id) for r in runs] == [handle.id], there
    # The worker's start-up probe of the workspace quota ran there too.
    assert [n for n in created if n.startswith(f"{namespace}-probe-")], there
    assert here == [] and volumes_here == [], (here, volumes_here)
    output = next(
        e for e in events if isinstance(e, ToolResultEvent) and e.type == EventType.TOOL_RESULT
    )
    assert "built on the second engine" in output.payload.model_dump_json()
    engine = environ["DOCKER_HOST"] + (" (TLS)" if transport == "tcp+tls" else "")
    assert f"sandboxes on the Docker engine at {engine}: Docker " in log.read_text()


# ====================================================================== over TCP with TLS


@pytest.fixture
def tls_engine_env(second_engine: SecondEngine, monkeypatch: pytest.MonkeyPatch) -> SecondEngine:
    for name, value in tls_environ(second_engine).items():
        monkeypatch.setenv(name, value)
    return second_engine


@pytest.fixture
def tls_sandbox(
    tls_engine_env: SecondEngine, sandbox_config: SandboxConfig
) -> Iterator[DockerSandbox]:
    config = dataclasses.replace(sandbox_config, namespace=f"tls-{uuid.uuid4().hex[:8]}")
    sandbox = DockerSandbox(config)
    try:
        yield sandbox
    finally:
        sandbox.janitor(lambda _run: False)
        sandbox.close()
        client = tls_engine_env.client()
        remove_namespace(client, config.namespace)
        client.close()


def test_over_tcp_with_mutual_tls_the_sandbox_runs_there(
    tls_sandbox: DockerSandbox, tls_engine_env: SecondEngine
) -> None:
    namespace = tls_sandbox.config.namespace
    second, system = tls_engine_env.client(), system_client()
    run = new_run()
    since = time.time() - 1
    try:
        # Quotas work on this engine (it shares the host): its probe says so.
        tls_sandbox.check_workspace_quota()
        out = sh(tls_sandbox, run, "echo over tls; id -u")
        assert out.exit_code == 0 and out.stdout.split() == [b"over", b"tls", b"10001"]
        (name, container_id), *others = namespace_containers(second, namespace).items()
        assert others == [] and name == _names.container_name(namespace, run)

        # The limits are the engine's: set on the container it runs.
        host = second.api.inspect_container(container_id)["HostConfig"]
        config = tls_sandbox.config
        assert host["Memory"] == config.memory_mb << 20
        assert host["PidsLimit"] == config.pids
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert host["NetworkMode"] == "none"
        slow = sh(tls_sandbox, run, "sleep 30", timeout_s=1)
        assert slow.limit == LimitKind.TIMEOUT

        # Files in and out, through the executor channel.
        tls_sandbox.write_file(run, "in/data.bin", bytes(range(256)) * 1000, policy=SandboxPolicy())
        assert sh(tls_sandbox, run, "sha256sum in/data.bin > out.txt").exit_code == 0
        listed = tls_sandbox.list_files(run, "in", policy=SandboxPolicy())
        assert [(e.path, e.size) for e in listed] == [("in/data.bin", 256_000)]
        digest = tls_sandbox.read_file(run, "out.txt", policy=SandboxPolicy(), max_bytes=1 << 16)
        collected = {f.path: f.data for f in tls_sandbox.collect(run, ["out.txt"])}
        expected = hashlib.sha256(bytes(range(256)) * 1000).hexdigest().encode()
        assert digest.split() == [expected, b"in/data.bin"]
        assert collected == {"out.txt": digest}

        # The egress proxy rides the same TLS stream, both ways at once.
        seen: list[EgressRequest] = []

        def broker(request: EgressRequest) -> EgressResponse:
            seen.append(request)
            return EgressResponse(200, [("Content-Type", "text/plain")], b"from the broker")

        fetch = (
            'python3 -c "import urllib.request;'
            "print(urllib.request.urlopen('http://api.example/x').read().decode())\""
        )
        proxied = tls_sandbox.exec(
            run,
            f"c-{uuid.uuid4().hex[:8]}",
            fetch,
            policy=SandboxPolicy(),
            timeout_s=30,
            max_output_bytes=4096,
            egress=broker,
        )
        assert proxied.stdout.strip() == b"from the broker", proxied
        assert [r.url for r in seen] == ["http://api.example/x"]

        # Pause, idle stop and start again keep the workspace.
        tls_sandbox.pause(run)
        assert second.api.inspect_container(container_id)["State"]["Paused"]
        tls_sandbox.resume(run)
        tls_sandbox.stop(run)
        assert not second.api.inspect_container(container_id)["State"]["Running"]
        again = sh(tls_sandbox, run, "cat out.txt")
        assert again.stdout == digest

        tls_sandbox.destroy(run, keep_workspace=False)
        assert namespace_containers(second, namespace) == {}
        assert namespace_volumes(second, namespace) == []
        assert namespace_events(system, namespace, since) == []
        assert namespace_containers(system, namespace) == {}
    finally:
        second.close()
        system.close()


# ====================================================================== pool and janitor


def test_the_pool_and_the_janitor_on_the_second_engine_leave_the_system_engine_alone(
    second_engine: SecondEngine, sandbox_config: SandboxConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One configuration (namespace, pool, owner) on both engines: were the second
    # engine's pool or janitor to see the system engine's objects, they would count,
    # claim and remove them as their own.
    config = dataclasses.replace(
        sandbox_config,
        namespace=f"iso-{uuid.uuid4().hex[:8]}",
        pool_size=1,
        workspace_images=None,
        owner="worker@both",
    )
    system = system_client()
    second = second_engine.client()
    here = DockerSandbox(config, docker_client=system)
    monkeypatch.setenv("DOCKER_HOST", second_engine.unix_host)
    there = DockerSandbox(config)
    # Runs of their own, not the pool's (a claim would start a refill meanwhile).
    own = SandboxPolicy(pids=config.pids // 2)
    try:
        assert here.warm_pool() == 1
        ended_here = new_run()
        assert sh(here, ended_here, "echo mine", policy=own).exit_code == 0
        before = namespace_containers(system, config.namespace)
        volumes_before = sorted(namespace_volumes(system, config.namespace))
        pooled_here = [c.id for c in list_pool(system, config.namespace, config.pool_id)]
        assert len(before) == 2 and len(pooled_here) == 1
        since = time.time()  # the engines share this host's clock

        assert there.warm_pool() == 1  # the system engine's pool container does not count
        pooled_there = [c.id for c in list_pool(second, config.namespace, config.pool_id)]
        claimer, ended_there = new_run(), new_run()
        assert sh(there, claimer, "true").exit_code == 0
        assert sh(there, ended_there, "true", policy=own).exit_code == 0
        claimed = namespace_containers(second, config.namespace)
        assert claimed[_names.container_name(config.namespace, claimer)] == pooled_there[0]

        report = there.janitor(lambda _run: False, lambda _owner: True)

        runs = {_names.container_name(config.namespace, r) for r in (claimer, ended_there)}
        assert runs <= set(report.removed_containers)
        # What else it removed, or kept, there is the pool it refilled after the claim.
        left = namespace_containers(second, config.namespace)
        for name in {*report.removed_containers, *left} - runs:
            assert name.startswith(f"{config.namespace}-pool-"), name
        assert namespace_containers(system, config.namespace) == before
        assert sorted(namespace_volumes(system, config.namespace)) == volumes_before
        assert [c.id for c in list_pool(system, config.namespace, config.pool_id)] == pooled_here
        assert namespace_events(system, config.namespace, since) == []
    finally:
        there.close()
        here.janitor(lambda _run: False)
        here.close()
        remove_namespace(second, config.namespace)
        leftovers(config.namespace, remove=True)  # DOCKER_HOST is the second engine's here
        monkeypatch.delenv("DOCKER_HOST")
        leftovers(config.namespace, remove=True)
        second.close()
        system.close()


# ====================================================================== refusals


REFUSALS = ["foreign", "untrusting", "no-client-certificate"]


def refused_certs(engine: SecondEngine, case: str, tmp_path: Path) -> Path:
    if case == "foreign":  # a client certificate the engine's CA did not sign
        return engine.foreign_certs
    if case == "untrusting":  # a CA that did not sign the engine's certificate
        return engine.untrusting_certs
    only_ca = tmp_path / "only-ca"
    only_ca.mkdir()
    (only_ca / "ca.pem").write_bytes((engine.client_certs / "ca.pem").read_bytes())
    return only_ca


@pytest.mark.parametrize("case", REFUSALS)
def test_a_client_the_engine_or_its_ca_refuses_gets_a_clear_error_without_the_certificates(
    second_engine: SecondEngine,
    sandbox_config: SandboxConfig,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    case: str,
) -> None:
    certs = refused_certs(second_engine, case, tmp_path)
    environ = tls_environ(second_engine, certs)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    engine = Engine.from_environ(environ)
    problem = placement_problem(engine, "off")
    if case == "no-client-certificate":  # named before connecting
        assert problem is not None
        assert f"DOCKER_CERT_PATH={certs}, which has no cert.pem, key.pem" in problem
        message = problem
    else:
        assert problem is None
        with pytest.raises(SandboxUnavailable) as refused:
            DockerSandbox(dataclasses.replace(sandbox_config, workspace_images=None))
        message = str(refused.value)
        assert "Docker engine unreachable" in message
        assert "SSL" in message or "certificate" in message, message
    assert not any(line in message for line in cert_texts(certs, second_engine.client_certs))
    assert "PRIVATE KEY" not in message and "BEGIN" not in message


def start_worker(environ: dict[str, str], state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        env={"PATH": os.environ["PATH"], "AGENTRUN_STATE_DIR": str(state_dir), **environ},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def worker_environ(client: Client, **more: str) -> dict[str, str]:
    return {
        "AGENTRUN_TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "AGENTRUN_PAYLOAD_ENCRYPTION": "off",
        "AGENTRUN_WORKER_METRICS_PORT": "0",
        "AGENTRUN_SANDBOX_POOL_SIZE": "0",
        **more,
    }


def assert_one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("case", REFUSALS)
def test_a_refused_client_certificate_stops_the_worker_with_one_line(
    client: Client, second_engine: SecondEngine, tmp_path: Path, case: str
) -> None:
    certs = refused_certs(second_engine, case, tmp_path)
    proc = start_worker(
        worker_environ(client, **tls_environ(second_engine, certs)), tmp_path / "state"
    )
    line = assert_one_line(proc)
    says = {
        "foreign": "the engine refused this worker's client certificate",
        "untrusting": "this worker does not trust the engine's certificate",
        "no-client-certificate": f"DOCKER_CERT_PATH={certs}, which has no cert.pem, key.pem",
    }
    assert says[case] in line
    assert not any(text in line for text in cert_texts(certs, second_engine.client_certs))
    assert "BEGIN" not in line


def test_an_unreachable_engine_stops_the_worker_with_one_line_naming_docker_host(
    client: Client, tmp_path: Path
) -> None:
    missing = f"unix://{tmp_path / 'no-engine.sock'}"
    line = assert_one_line(start_worker(worker_environ(client, DOCKER_HOST=missing), tmp_path))
    assert f"cannot use the Docker engine at {missing} (DOCKER_HOST" in line


def test_an_engine_without_the_sandbox_image_stops_the_worker_saying_how_to_copy_it(
    client: Client, second_engine: SecondEngine, tmp_path: Path
) -> None:
    image = f"agentrun-sandbox:absent-{uuid.uuid4().hex[:8]}"
    environ = worker_environ(
        client, DOCKER_HOST=second_engine.unix_host, AGENTRUN_SANDBOX_IMAGE=image
    )
    line = assert_one_line(start_worker(environ, tmp_path))
    assert f"the sandbox image {image} is not on this Docker engine" in line
    assert "docker save" in line and "AGENTRUN_SANDBOX_IMAGE" in line


def test_an_engine_that_cannot_mount_the_workers_workspace_images_stops_it_at_start(
    client: Client, sandbox_image: str, tmp_path: Path
) -> None:
    # The engine is the local one, as DOCKER_HOST says; but the worker runs in a mount
    # namespace of its own, with a private tmpfs on its workspace directory, like a
    # worker in a container without that directory shared, or an engine in a VM.
    workspaces = tmp_path / "workspaces"
    workspaces.mkdir()
    namespace = f"probe-{uuid.uuid4().hex[:8]}"
    environ = worker_environ(
        client,
        AGENTRUN_SANDBOX_WORKSPACE_DIR=str(workspaces),
        AGENTRUN_SANDBOX_NAMESPACE=namespace,
        AGENTRUN_SANDBOX_IMAGE=sandbox_image,
    )
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            'mount -t tmpfs agentrun-private "$0" && exec "$@"',
            str(workspaces),
            sys.executable,
            str(ROOT / "worker.py"),
        ],
        env={"PATH": os.environ["PATH"], "AGENTRUN_STATE_DIR": str(tmp_path), **environ},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    line = assert_one_line(proc)
    assert "cannot mount this worker's probe workspace" in line
    assert "AGENTRUN_SANDBOX_WORKSPACE_QUOTA=off" in line
    assert leftovers(namespace) == ([], [])
    assert [loop for loop in attached_loops() if str(workspaces) in loop[1]] == []


# ====================================================================== placement rules


@pytest.mark.parametrize(
    ("environ", "quota", "names"),
    [
        (
            {"DOCKER_HOST": "tcp://sandbox-1.example:2376", "DOCKER_TLS_VERIFY": "1"},
            "loop",
            "AGENTRUN_SANDBOX_WORKSPACE_QUOTA=off",
        ),
        ({"DOCKER_HOST": "tcp://sandbox-1.example:2375"}, "off", "DOCKER_TLS_VERIFY=1"),
        (
            {"DOCKER_HOST": "tcp://sandbox-1.example:2376", "DOCKER_CERT_PATH": "/certs"},
            "off",
            "DOCKER_TLS_VERIFY=1",
        ),
        ({"DOCKER_HOST": "ssh://me@sandbox-1.example"}, "off", "DOCKER_HOST=unix://"),
    ],
    ids=["quotas-on-another-host", "remote-without-tls", "tls-unverified", "ssh"],
)
def test_a_placement_that_cannot_work_is_named(
    environ: dict[str, str], quota: str, names: str
) -> None:
    problem = placement_problem(Engine.from_environ(environ), quota)
    assert problem is not None and names in problem


@pytest.mark.parametrize("verify", ["1", "0", "yes"])
def test_docker_tls_verify_means_verify_whatever_its_value_as_docker_reads_it(
    verify: str, tmp_path: Path
) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("")
    engine = Engine.from_environ(
        {
            "DOCKER_HOST": "tcp://sandbox-1.example:2376",
            "DOCKER_TLS_VERIFY": verify,
            "DOCKER_CERT_PATH": str(tmp_path),
        }
    )
    assert engine.tls and engine.verify
    assert placement_problem(engine, "off") is None


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
def test_an_engine_on_this_host_by_its_address_keeps_workspace_quotas(
    host: str, tmp_path: Path
) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("")
    engine = Engine.from_environ(
        {"DOCKER_HOST": host, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    )
    assert not engine.remote
    assert placement_problem(engine, "loop") is None
