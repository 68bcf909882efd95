"""Worker versioning: a new build rolls out while a run that began on the old one
finishes there, as README "Stopping and upgrading workers" tells an operator to do.

Two `worker.py` processes of one Worker Deployment (`AGENTRUN_WORKER_DEPLOYMENT_NAME`)
with the builds `v1` and `v2`, on one task queue of the real dev server; each build
is made current with the real `temporal worker deployment set-current-version`. A
run started under v1 waits for an approval while v2 becomes current; a new run then
runs on v2, and the approved run finishes on v1: every workflow task of it was
completed by build v1 and every activity of it (the approved tool call included)
ran in v1's process, as its history records. `temporal workflow describe` shows the
waiting run pinned to v1; `temporal worker deployment describe-version` reports v1
draining while that run is open and drained once it ended, and then v1's worker is
stopped (SIGTERM) and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from agentrun.config import ConfigError, load_settings
from agentrun.contracts import ApprovalPolicy, RunStatus
from tests.conftest import ROOT
from tests.test_worker_startup import closed_port
from tests.test_workflow_recovery import _identity, _spawn_worker
from tests.workflow_harness import (
    approve_pending,
    finish,
    outcome,
    scripted_spec,
    shell,
    start_run,
    temporal,
    wait_for,
)

pytestmark = pytest.mark.docker


async def _set_current(client: Client, deployment: str, build: str) -> None:
    for _ in range(300):  # the version is known once its worker has polled
        code, out = await temporal(
            client,
            "worker",
            "deployment",
            "set-current-version",
            "--deployment-name",
            deployment,
            "--build-id",
            build,
            "--yes",
        )
        if code == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"set-current-version {build} failed: {out}")


async def _cli_json(client: Client, *args: str) -> Any:
    code, out = await temporal(client, *args, "--output", "json")
    assert code == 0, out
    return json.loads(out)


async def _drainage(client: Client, deployment: str, build: str) -> str:
    """The version's drainage status as `describe-version` reports it ("" while it is
    current or ramping, or before the server first checked it)."""
    described = await _cli_json(
        client,
        "worker",
        "deployment",
        "describe-version",
        "--deployment-name",
        deployment,
        "--build-id",
        build,
    )
    return str((described.get("drainageInfo") or {}).get("drainageStatus", ""))


async def _wait_for_drainage(client: Client, deployment: str, build: str, status: str) -> None:
    seen = ""
    for _ in range(300):  # the server refreshes it every second here (conftest)
        seen = await _drainage(client, deployment, build)
        if seen == status:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{deployment}.{build} never {status}: last {seen!r}")


async def _tasks_by(handle: WorkflowHandle[Any, Any]) -> tuple[set[str], set[str], set[str]]:
    """From the run's history: the builds that completed its workflow tasks, the
    worker identities that ran its activities, and the activity types."""
    builds, identities, kinds = set(), set(), set()
    async for e in handle.fetch_history_events():
        if e.event_type == HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            builds.add(e.workflow_task_completed_event_attributes.deployment_version.build_id)
        elif e.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            kinds.add(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif e.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            identities.add(e.activity_task_started_event_attributes.identity)
    return builds, identities, kinds


async def test_a_pinned_run_finishes_on_its_build_while_new_runs_start_on_the_next(
    temporal_env: WorkflowEnvironment, client: Client, task_queue: str, state_dir: Path
) -> None:
    deployment = f"agentrun-{uuid.uuid4().hex[:8]}"
    namespace = f"ver-{uuid.uuid4().hex[:10]}"
    log = state_dir / "worker.log"

    def worker(build: str) -> subprocess.Popen[bytes]:
        return _spawn_worker(
            temporal_env,
            task_queue,
            state_dir,
            log,
            namespace,
            worker_deployment_name=deployment,
            worker_build_id=build,
        )

    waits = scripted_spec(
        shell("echo approved >> ran.txt"),
        finish("old"),
        approval=ApprovalPolicy(mode="tools", tools=["shell"], timeout_seconds=None),
    )
    v1 = worker("v1")
    v2: subprocess.Popen[bytes] | None = None
    try:
        await _set_current(client, deployment, "v1")
        # Tool calls as normal activities, so the history names the process of each.
        old = await start_run(client, task_queue, waits, local_tool_seconds=0)
        view = await wait_for(old, lambda v: v.status == RunStatus.AWAITING_APPROVAL)
        described = await _cli_json(client, "workflow", "describe", "--workflow-id", old.id)
        v2 = worker("v2")
        await _set_current(client, deployment, "v2")
        new = await start_run(
            client, task_queue, scripted_spec(shell("true"), finish("new")), local_tool_seconds=0
        )
        assert (await outcome(new)).final_answer == "new"
        await _wait_for_drainage(client, deployment, "v1", "draining")
        await approve_pending(old, view)
        result = await outcome(old)
        await _wait_for_drainage(client, deployment, "v1", "drained")
        v1.send_signal(signal.SIGTERM)
        v1_code = v1.wait(timeout=60)
        old_tasks, new_tasks = await _tasks_by(old), await _tasks_by(new)
    finally:
        for proc in (v1, v2):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    versioning = described["workflowExecutionInfo"]["versioningInfo"]
    assert versioning["behavior"] == "VERSIONING_BEHAVIOR_PINNED", versioning
    assert versioning["deploymentVersion"] == {"deploymentName": deployment, "buildId": "v1"}
    told = log.read_text()
    assert result.status == RunStatus.COMPLETED and result.final_answer == "old", told[-3000:]
    assert v1_code == 0, told[-3000:]
    assert v2 is not None
    # The old run: every workflow task by build v1, every activity in v1's process,
    # the tool call approved after v2 became current included.
    assert old_tasks[0] == {"v1"}, old_tasks
    assert old_tasks[1] == {_identity(v1)}, old_tasks
    assert "dispatch_tool" in old_tasks[2], old_tasks
    assert new_tasks[0] == {"v2"}, new_tasks
    assert new_tasks[1] == {_identity(v2)}, new_tasks
    assert "dispatch_tool" in new_tasks[2], new_tasks


def test_a_deployment_name_without_a_build_id_is_refused_naming_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(state_dir=tmp_path, worker_deployment_name="agentrun")
    assert "AGENTRUN_WORKER_DEPLOYMENT_NAME and AGENTRUN_WORKER_BUILD_ID" in str(refused.value)


@pytest.mark.parametrize(
    "variable", ["AGENTRUN_WORKER_DEPLOYMENT_NAME", "AGENTRUN_WORKER_BUILD_ID"]
)
def test_a_worker_given_half_of_a_version_exits_2_before_connecting(
    tmp_path: Path, variable: str
) -> None:
    # Nothing listens at the address: a worker that got past its settings exits 1.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        env={
            "AGENTRUN_TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port()}",
            "AGENTRUN_STATE_DIR": str(tmp_path),
            variable: "agentrun",
            "PATH": "",
        },
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    assert "AGENTRUN_WORKER_DEPLOYMENT_NAME and AGENTRUN_WORKER_BUILD_ID go together" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
