"""Crash recovery: SIGKILL the worker mid-run; a new worker finishes the same run.

Proof that no completed tool call runs twice and none is lost: every shell step
appends one line to a file in the run's workspace, and the final file holds each
line exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from agentrun.contracts import EventType, RunStatus
from store.artifacts import LocalArtifactStore, get_bytes
from tests.conftest import ROOT
from tests.workflow_harness import (
    WEBHOOK_SECRET,
    all_events,
    finish,
    scripted_spec,
    shell,
    start_run,
    wait_for,
)

# The workers here are `worker.py` processes with the real Docker sandbox; the
# conftest's marking sees only in-process workers, so this module says it itself.
pytestmark = pytest.mark.docker


def _spawn_worker(
    env: WorkflowEnvironment, task_queue: str, state_dir: Path, log: Path, namespace: str
) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        "AGENTRUN_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "AGENTRUN_TASK_QUEUE": task_queue,
        "AGENTRUN_STATE_DIR": str(state_dir),
        "AGENTRUN_DEFAULT_PROVIDER": "scripted",
        "AGENTRUN_SANDBOX_POOL_SIZE": "0",
        "AGENTRUN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        # Both workers share one sandbox namespace (they serve the same runs), and it is
        # this test's own, so no other test's janitor or pool can touch it.
        "AGENTRUN_SANDBOX_NAMESPACE": namespace,
    }
    return subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py")],
        cwd=ROOT,
        env=environ,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_run_survives_worker_sigkill_without_losing_or_repeating_a_tool_call(
    temporal_env: WorkflowEnvironment, client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        shell("echo step1 >> count.txt"),
        shell("echo step2 >> count.txt; sleep 4"),
        shell("echo step3 >> count.txt"),
        finish("counted"),
    )
    log = state_dir / "worker.log"
    namespace = f"rec-{uuid.uuid4().hex[:10]}"
    first = _spawn_worker(temporal_env, task_queue, state_dir, log, namespace)
    second: subprocess.Popen[bytes] | None = None
    try:
        handle = await start_run(client, task_queue, spec)
        # Wait until the long second tool call is in flight, then kill the worker hard.
        try:
            await wait_for(handle, lambda v: v.steps >= 2, timeout=90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nworker log:\n{log.read_text()[-3000:]}") from None
        await asyncio.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = _spawn_worker(temporal_env, task_queue, state_dir, log, namespace)
        result = await asyncio.wait_for(handle.result(), timeout=120)
        events = await all_events(handle)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
    assert result.status == RunStatus.COMPLETED, log.read_text()[-3000:]
    assert result.final_answer == "counted"
    artifacts = {a.name: a for a in result.artifacts}
    count = get_bytes(LocalArtifactStore(state_dir / "artifacts"), artifacts["count.txt"].digest)
    assert count.decode().splitlines() == ["step1", "step2", "step3"]
    tool_results = [e for e in events if e.type == EventType.TOOL_RESULT]
    assert len(tool_results) == 4  # three shell calls and finish, each recorded once
