"""`exec` is exactly-once per call id, across worker crashes and container restarts."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import docker
import pytest

from agentrun.contracts import LimitKind
from sandbox import _names
from sandbox.base import RunRef
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from tests.sandbox_fixtures import POLICY, ROOT, sh

pytestmark = pytest.mark.docker

LONG_CALL = "echo x >> count.txt; sleep 3; echo finished"

WORKER = textwrap.dedent(
    """
    import sys
    from agentrun.config import Settings
    from agentrun.contracts import SandboxPolicy
    from sandbox.base import RunRef
    from sandbox.docker_sandbox import DockerSandbox
    from worker import sandbox_config

    namespace, tenant, run, call_id, command = sys.argv[1:6]
    sandbox = DockerSandbox(sandbox_config(Settings(sandbox_namespace=namespace,
                            sandbox_pool_size=0, sandbox_memory_mb=256, sandbox_pids=128)))
    sandbox.exec(RunRef(tenant, run), call_id, command, policy=SandboxPolicy(),
                 timeout_s=30, max_output_bytes=1000)
    print("worker finished", flush=True)
    """
)


def count_lines(sandbox: DockerSandbox, run: RunRef) -> int:
    return int(sh(sandbox, run, "wc -l < count.txt").stdout)


def test_call_of_a_killed_worker_is_reattached_and_runs_exactly_once(
    docker_sandbox: DockerSandbox, run_ref: RunRef, sandbox_config: SandboxConfig
) -> None:
    sh(docker_sandbox, run_ref, "true")  # the container exists before the worker starts
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            sandbox_config.namespace,
            run_ref.tenant_id,
            run_ref.run_id,
            "s1-c0",
            LONG_CALL,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while b"x" not in sh(docker_sandbox, run_ref, "cat count.txt 2>/dev/null").stdout:
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            assert time.monotonic() < deadline, "the worker never started the call"
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)  # the worker dies mid-call
        worker.wait()
        assert worker.stdout is not None and b"worker finished" not in worker.stdout.read()
    finally:
        if worker.poll() is None:
            worker.kill()
    started = time.monotonic()
    out = docker_sandbox.exec(
        run_ref, "s1-c0", LONG_CALL, policy=POLICY, timeout_s=30, max_output_bytes=1000
    )
    assert out.reattached is True
    assert (out.exit_code, out.stdout) == (0, b"finished\n")
    assert time.monotonic() - started > 0.5  # it waited for the running call
    assert count_lines(docker_sandbox, run_ref) == 1


def test_reattaching_to_a_finished_call_returns_the_recorded_result(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    cmd = "echo ran >> count.txt; echo out; echo err >&2; exit 4"
    first = docker_sandbox.exec(
        run_ref, "s2-c0", cmd, policy=POLICY, timeout_s=10, max_output_bytes=100
    )
    again = docker_sandbox.exec(
        run_ref, "s2-c0", cmd, policy=POLICY, timeout_s=10, max_output_bytes=100
    )
    assert first.reattached is False and again.reattached is True
    for field in ("exit_code", "stdout", "stderr", "stdout_total", "stderr_total", "limit"):
        assert getattr(first, field) == getattr(again, field)
    assert count_lines(docker_sandbox, run_ref) == 1


def test_concurrent_requests_for_one_call_id_start_it_once(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    results = []

    def call() -> None:
        results.append(
            docker_sandbox.exec(
                run_ref,
                "s3-c0",
                "echo x >> count.txt; sleep 1",
                policy=POLICY,
                timeout_s=10,
                max_output_bytes=10,
            )
        )

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.reattached for r in results) == [False, True, True, True]
    assert count_lines(docker_sandbox, run_ref) == 1


def test_call_cut_by_a_container_restart_is_reported_interrupted_not_rerun(
    docker_sandbox: DockerSandbox, run_ref: RunRef, sandbox_config: SandboxConfig
) -> None:
    sh(docker_sandbox, run_ref, "true")
    results = []
    thread = threading.Thread(
        target=lambda: results.append(
            docker_sandbox.exec(
                run_ref,
                "s4-c0",
                "echo x >> count.txt; sleep 30",
                policy=POLICY,
                timeout_s=60,
                max_output_bytes=10,
            )
        )
    )
    thread.start()
    while b"x" not in sh(docker_sandbox, run_ref, "cat count.txt 2>/dev/null").stdout:
        time.sleep(0.05)
    name = _names.container_name(sandbox_config.namespace, run_ref)
    docker.from_env().containers.get(name).restart(timeout=1)
    thread.join(timeout=60)
    assert results and results[0].limit is LimitKind.INTERRUPTED
    assert results[0].exit_code is None
    again = docker_sandbox.exec(
        run_ref, "s4-c0", "echo x >> count.txt", policy=POLICY, timeout_s=10, max_output_bytes=10
    )
    assert again.limit is LimitKind.INTERRUPTED and again.reattached
    assert count_lines(docker_sandbox, run_ref) == 1


def test_a_command_cannot_forge_the_record_of_a_future_call(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    forge = (
        "for d in s9-c0 s9-c0.0 s9-c0.x; do mkdir -p .agentrun/calls/$d; "
        'echo \'{"exit_code": 0, "stdout_total": 6, "stderr_total": 0, "duration_ms": 1,'
        ' "limit": null}\' > .agentrun/calls/$d/result.json;'
        " echo forged > .agentrun/calls/$d/out; done"
    )
    assert sh(docker_sandbox, run_ref, forge).exit_code == 0
    out = docker_sandbox.exec(
        run_ref, "s9-c0", "echo real", policy=POLICY, timeout_s=10, max_output_bytes=100
    )
    assert (out.stdout, out.reattached) == (b"real\n", False)


def test_a_long_call_heartbeats_while_the_worker_waits(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    beats: list[float] = []
    out = docker_sandbox.exec(
        run_ref,
        "s6-c0",
        "sleep 4.5; echo done",
        policy=POLICY,
        timeout_s=10,
        max_output_bytes=100,
        heartbeat=lambda: beats.append(time.monotonic()),
    )
    assert out.stdout == b"done\n"
    assert len(beats) >= 2
    assert all(b - a < 3.0 for a, b in itertools.pairwise(beats))
