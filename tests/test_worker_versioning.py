"""Worker versioning: a new build rolls out while a run that began on the old one
finishes there.

Two workers of one Worker Deployment (`AGENTRUN_WORKER_DEPLOYMENT_NAME`) with the
builds `v1` and `v2`, on one task queue of the real dev server; each build is made
current with the real `temporal worker deployment set-current-version`, as an
operator would. A run started under v1 waits for an approval while v2 becomes
current; a new run then runs on v2, and the approved run finishes on v1: every
workflow task of it was completed by v1 (the version recorded in its history).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client, WorkflowHandle

from agentrun.config import ConfigError, load_settings
from agentrun.contracts import ApprovalDecision, ApprovalPolicy, RunStatus
from tests.workflow_harness import (
    ALICE,
    finish,
    outcome,
    running_worker,
    scripted_spec,
    shell,
    start_run,
    temporal,
    wait_for,
)
from workflows.agent_run import AgentRunWorkflow

pytestmark = pytest.mark.docker


async def _set_current(client: Client, deployment: str, build: str) -> None:
    for _ in range(100):  # the version is known once its worker has polled
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


async def _builds(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The build of each completed workflow task of the run, in order."""
    done = HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    return [
        e.workflow_task_completed_event_attributes.deployment_version.build_id
        async for e in handle.fetch_history_events()
        if e.event_type == done
    ]


async def test_a_pinned_run_finishes_on_its_build_while_new_runs_start_on_the_next(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    deployment = f"agentrun-{uuid.uuid4().hex[:8]}"
    waits = scripted_spec(
        shell("echo approved >> ran.txt"),
        finish("old"),
        approval=ApprovalPolicy(mode="tools", tools=["shell"], timeout_seconds=None),
    )
    async with running_worker(
        client,
        task_queue,
        state_dir / "v1",
        worker_deployment_name=deployment,
        worker_build_id="v1",
    ):
        await _set_current(client, deployment, "v1")
        old = await start_run(client, task_queue, waits)
        view = await wait_for(old, lambda v: v.status == RunStatus.AWAITING_APPROVAL)
        async with running_worker(
            client,
            task_queue,
            state_dir / "v2",
            worker_deployment_name=deployment,
            worker_build_id="v2",
        ):
            await _set_current(client, deployment, "v2")
            new = await start_run(client, task_queue, scripted_spec(finish("new")))
            assert (await outcome(new)).final_answer == "new"
            pending = view.pending_approval
            assert pending is not None
            await old.execute_update(
                AgentRunWorkflow.approve,
                ApprovalDecision(
                    approval_id=pending.approval_id,
                    arguments_digest=pending.call.arguments_digest,
                    actor=ALICE,
                ),
            )
            result = await outcome(old)
    assert result.status == RunStatus.COMPLETED and result.final_answer == "old"
    old_builds, new_builds = await _builds(old), await _builds(new)
    assert old_builds and set(old_builds) == {"v1"}, old_builds
    assert new_builds and set(new_builds) == {"v2"}, new_builds


def test_a_deployment_name_without_a_build_id_is_refused_naming_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(state_dir=tmp_path, worker_deployment_name="agentrun")
    assert "AGENTRUN_WORKER_DEPLOYMENT_NAME and AGENTRUN_WORKER_BUILD_ID" in str(refused.value)
