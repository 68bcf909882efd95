"""The worker's janitor asks Temporal which runs are live and removes the rest's sandboxes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from temporalio.client import Client

from agentrun.contracts import SandboxPolicy
from sandbox.base import RunRef
from sandbox.docker_sandbox import DockerSandbox
from tests.sandbox_fixtures import leftovers
from tests.workflow_harness import TENANT, finish, scripted_spec, start_run, worker_settings
from worker import liveness_checker, sandbox_config


def _touch(sandbox: DockerSandbox, run: RunRef) -> None:
    out = sandbox.exec(
        run,
        "s1-c0",
        "echo here > f.txt",
        policy=SandboxPolicy(),
        timeout_s=30,
        max_output_bytes=1024,
    )
    assert out.exit_code == 0


async def test_janitor_keeps_live_runs_and_removes_sandboxes_of_unknown_or_expired_runs(
    client: Client, state_dir: Path, sandbox_image: str
) -> None:
    settings = worker_settings(state_dir, sandbox_retention_hours=0, sandbox_image=sandbox_image)
    sandbox = DockerSandbox(sandbox_config(settings))
    queue = f"no-worker-{uuid.uuid4().hex[:8]}"
    # Running: started on a queue no worker polls, so it stays open.
    live = await start_run(client, queue, scripted_spec(finish()))
    # Ended: terminated at once; with zero retention its sandbox may go.
    ended = await start_run(client, queue, scripted_spec(finish()))
    await ended.terminate("test")
    runs = {
        "live": RunRef(TENANT, live.id.rsplit("/", 1)[1]),
        "ended": RunRef(TENANT, ended.id.rsplit("/", 1)[1]),
        "unknown": RunRef(TENANT, uuid.uuid4().hex[:16]),
    }
    try:
        for run in runs.values():
            await asyncio.to_thread(_touch, sandbox, run)
        is_live = liveness_checker(client, settings, asyncio.get_running_loop())
        report = await asyncio.to_thread(sandbox.janitor, is_live)
        containers, _ = leftovers(settings.sandbox_namespace)
        assert len(report.removed_containers) == 2, report
        assert len(containers) == 1
        assert runs["live"].run_id in containers[0]
        # The live run's workspace is intact.
        data = await asyncio.to_thread(
            sandbox.read_file, runs["live"], "f.txt", policy=SandboxPolicy(), max_bytes=100
        )
        assert data == b"here\n"
    finally:
        await live.terminate("test done")
        await asyncio.to_thread(sandbox.destroy, runs["live"], keep_workspace=False)
        leftovers(settings.sandbox_namespace, remove=True)
        sandbox.close()
