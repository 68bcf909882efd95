"""Idle runs hold no container: a run waiting for an approval (or paused) past its
`idle_stop_seconds` has its sandbox container stopped, and the next call starts it.

Real Temporal (the dev server, real time), real Docker, the scripted model. What
they prove, from Docker's own view of the run's container:

* a run waiting for an approval past the threshold has its container stopped (not
  paused: no process, no memory), its workspace kept; approving starts it again and
  the approved call sees the file the first call wrote;
* a paused run's container goes from paused to stopped, and `resume` starts it;
* a run launched with the idle stop off keeps its container running while it waits;
* the sandbox directly: `stop` is idempotent, and the next `exec` starts the stopped
  container with its workspace.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import docker
import pytest
from temporalio.client import Client, WorkflowHandle

from agentrun.config import Settings
from agentrun.contracts import (
    ApprovalPolicy,
    ControlRequest,
    RunStatus,
    SandboxPolicy,
    ToolResultPayload,
    run_ref_from_workflow_id,
)
from sandbox import _names
from sandbox.base import RunRef
from sandbox.docker_sandbox import DockerSandbox
from tests.api_fixtures import wait_until
from tests.sandbox_fixtures import docker_sandbox, run_ref, sandbox_config, sandbox_image
from tests.workflow_harness import (
    ALICE,
    all_events,
    approve_pending,
    call,
    finish,
    outcome,
    payloads,
    running_worker,
    scripted_spec,
    shell,
    start_run,
    turn,
    wait_for,
)
from workflows.agent_run import AgentRunWorkflow

__all__ = ["docker_sandbox", "run_ref", "sandbox_config", "sandbox_image"]

pytestmark = pytest.mark.docker

IDLE_S = 1.0
REQ = ControlRequest(actor=ALICE, reason="idle stop test")


def _state(settings: Settings, handle: WorkflowHandle[Any, Any]) -> str:
    """Docker's status of the run's container: running, paused, exited …"""
    tenant, run_id = run_ref_from_workflow_id(handle.id)
    name = _names.container_name(settings.sandbox_namespace, RunRef(tenant, run_id))
    client = docker.from_env()
    try:
        return str(client.containers.get(name).status)
    except docker.errors.NotFound:
        return "missing"
    finally:
        client.close()


async def _until_state(settings: Settings, handle: WorkflowHandle[Any, Any], want: str) -> None:
    async def reached() -> bool:
        return _state(settings, handle) == want

    await wait_until(reached, timeout=60)


async def test_a_run_waiting_for_approval_stops_its_container_and_approving_starts_it(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        turn(call("write_file", path="note.txt", content="kept across the stop")),
        shell("cat note.txt"),
        finish("done"),
        approval=ApprovalPolicy(mode="tools", tools=["shell"], timeout_seconds=None),
    )
    async with running_worker(client, task_queue, state_dir) as settings:
        handle = await start_run(client, task_queue, spec, idle_stop_seconds=IDLE_S)
        view = await wait_for(handle, lambda v: v.status == RunStatus.AWAITING_APPROVAL)
        await _until_state(settings, handle, "exited")
        await approve_pending(handle, view)
        result = await outcome(handle)
        state_after = _state(settings, handle)
        events = await all_events(handle)
    assert result.status == RunStatus.COMPLETED
    cat = next(p for p in payloads(events, ToolResultPayload) if p.tool == "shell")
    assert cat.exit_code == 0 and "kept across the stop" in cat.summary
    # Ended: removed, unless the run kept its workspace (then stopped).
    assert state_after in {"exited", "missing"}


async def test_a_paused_run_goes_from_paused_to_stopped_and_resume_starts_it(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        shell("echo a > a.txt"),
        turn(call("nonexistent"), delay_seconds=2.0),
        shell("cat a.txt"),
        finish("resumed"),
    )
    async with running_worker(client, task_queue, state_dir) as settings:
        handle = await start_run(client, task_queue, spec, idle_stop_seconds=IDLE_S)
        await wait_for(handle, lambda v: v.steps >= 2)
        await handle.execute_update(AgentRunWorkflow.pause, REQ)
        await wait_for(handle, lambda v: v.status == RunStatus.PAUSED)
        await _until_state(settings, handle, "exited")
        await handle.execute_update(AgentRunWorkflow.resume, REQ)
        await _until_state(settings, handle, "running")
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.COMPLETED
    cat = [p for p in payloads(events, ToolResultPayload) if p.tool == "shell"][-1]
    assert cat.exit_code == 0 and "a" in cat.summary


async def test_with_the_idle_stop_off_a_waiting_run_keeps_its_container_running(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        turn(call("write_file", path="x.txt", content="x")),
        shell("cat x.txt"),
        finish("done"),
        approval=ApprovalPolicy(mode="tools", tools=["shell"], timeout_seconds=None),
    )
    async with running_worker(client, task_queue, state_dir) as settings:
        handle = await start_run(client, task_queue, spec, idle_stop_seconds=0)
        await wait_for(handle, lambda v: v.status == RunStatus.AWAITING_APPROVAL)
        # Three times the threshold the other tests use: still running.
        await asyncio.sleep(3 * IDLE_S)
        assert _state(settings, handle) == "running"
        await handle.execute_update(AgentRunWorkflow.cancel, REQ)
        await outcome(handle)


def test_stop_is_idempotent_and_the_next_exec_starts_the_container(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    policy = SandboxPolicy()
    first = docker_sandbox.exec(
        run_ref, "c1", "echo hi > w.txt", policy=policy, timeout_s=30, max_output_bytes=4096
    )
    assert first.exit_code == 0
    docker_sandbox.stop(run_ref)
    docker_sandbox.stop(run_ref)  # already stopped: nothing to do
    name = _names.container_name(docker_sandbox.config.namespace, run_ref)
    client = docker.from_env()
    try:
        assert client.containers.get(name).status == "exited"
        again = docker_sandbox.exec(
            run_ref, "c2", "cat w.txt", policy=policy, timeout_s=30, max_output_bytes=4096
        )
        assert client.containers.get(name).status == "running"
    finally:
        client.close()
    assert again.exit_code == 0 and again.stdout.strip() == b"hi"
