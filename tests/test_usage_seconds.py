"""Tool seconds and sandbox seconds: measured by the run, summed by `GET /v1/usage`.

Real Temporal, real Docker, the scripted model. What they prove:

* the tool activity measures a call's wall time, and counts 0 for a call that
  executes nothing (`finish`, a denied call);
* a run with sandbox tools ends with `tool_seconds > 0` and `sandbox_seconds >=
  tool_seconds`; a run without tools with 0 for both;
* the ledger's per-run rows are the runs' own usage, and the tenant's totals their sums
  (whether the API recorded a run from its view or by reconciling with Temporal);
* a paused sandbox still counts (time-skipping server: an hour paused is an hour
  held) unless the idle stop stopped it (then only until the stop), and a tool call
  abandoned by an aborting cancel counts the time until then.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.tool_activities import ToolActivities
from agentrun.contracts import (
    ControlRequest,
    DispatchToolInput,
    EventsQuery,
    EventType,
    RunStatus,
    SandboxPolicy,
    TerminalReason,
    ToolCall,
    ToolResult,
    Usage,
)
from sandbox.base import RunRef
from sandbox.docker_sandbox import DockerSandbox
from store.artifacts import LocalArtifactStore
from tests.api_fixtures import (
    Stack,
    api_stack,
    bearer,
    finish_turn,
    scripted,
    tool_turn,
    unique,
    wait_until,
)
from tests.sandbox_fixtures import docker_sandbox, run_ref, sandbox_config, sandbox_image
from tests.workflow_harness import (
    ALICE,
    call,
    finish,
    outcome,
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

REQ = ControlRequest(actor=ALICE, reason="usage test")


# ------------------------------------------------------------------ the contract


def test_usage_adds_tool_and_sandbox_seconds_with_the_tokens() -> None:
    total = Usage(input_tokens=3, output_tokens=2, tool_seconds=1.25) + Usage(
        input_tokens=1, sandbox_seconds=4.5, estimated=True
    )
    assert total == Usage(
        input_tokens=4, output_tokens=2, estimated=True, tool_seconds=1.25, sandbox_seconds=4.5
    )
    # Results and states recorded before the fields existed read as 0.
    assert Usage.model_validate({"input_tokens": 7}).tool_seconds == 0.0
    old_result = ToolResult.model_validate({"call_id": "c", "name": "shell", "ok": True})
    assert old_result.tool_seconds == 0.0


# ------------------------------------------------------------------ the activity


def _dispatch(
    sandbox: DockerSandbox,
    run: RunRef,
    store: LocalArtifactStore,
    name: str,
    denied: str | None = None,
    **arguments: object,
) -> ToolResult:
    digest = store.for_tenant(run.tenant_id).put(json.dumps(arguments).encode())
    inp = DispatchToolInput(
        run_id=run.run_id,
        tenant_id=run.tenant_id,
        call=ToolCall(id=f"s1-c{uuid.uuid4().hex[:6]}", name=name, arguments_digest=digest),
        sandbox=SandboxPolicy(workspace_mb=8),
        timeout_seconds=60,
        max_output_bytes=4096,
        denied_reason=denied,
    )
    result = ActivityEnvironment().run(ToolActivities(sandbox, store).dispatch_tool, inp)
    assert isinstance(result, ToolResult)
    return result


def test_the_tool_activity_measures_what_a_call_executes_and_nothing_else(
    docker_sandbox: DockerSandbox, run_ref: RunRef, tmp_path: Path
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    slept = _dispatch(docker_sandbox, run_ref, store, "shell", command="sleep 0.4; echo hi")
    assert slept.ok and slept.duration_ms is not None
    # At least the command's own run time, as the in-container executor measured it.
    assert slept.tool_seconds >= slept.duration_ms / 1000 >= 0.4
    wrote = _dispatch(docker_sandbox, run_ref, store, "write_file", path="a.txt", content="x")
    assert wrote.ok and wrote.tool_seconds > 0
    finished = _dispatch(docker_sandbox, run_ref, store, "finish", answer="done")
    assert finished.final_answer == "done" and finished.tool_seconds == 0
    denied = _dispatch(docker_sandbox, run_ref, store, "shell", denied="no", command="true")
    assert denied.error_type is not None and denied.tool_seconds == 0


# ------------------------------------------------------------------ the API


@pytest.fixture
async def stack(client: Client, tmp_path: Path, sandbox_image: str) -> AsyncIterator[Stack]:
    namespace = f"t-{uuid.uuid4().hex[:10]}"  # the janitor of this stack touches only its own
    async with api_stack(client, tmp_path, sandbox_namespace=namespace) as stack:
        yield stack


def _sandbox_run(answer: str) -> dict[str, Any]:
    return scripted(
        tool_turn("write_file", path="notes.txt", content="counted\n"),
        tool_turn("shell", command="sleep 0.3; cat notes.txt"),
        finish_turn(answer),
    )


async def test_usage_reports_tool_and_sandbox_seconds_that_add_up_to_the_runs(
    stack: Stack,
) -> None:
    tenant = unique("seconds")
    admin = bearer(await stack.new_tenant(tenant))
    no_tools = scripted({"content": "no tools needed"}, finish="text", tools=[])
    specs = [_sandbox_run("first"), _sandbox_run("second"), no_tools]
    run_ids = []
    for spec in specs:
        resp = await stack.http.post("/v1/runs", json=spec, headers=admin)
        assert resp.status_code == 201, resp.text
        run_ids.append(resp.json()["run_id"])

    async def ended() -> bool:
        runs = (await stack.http.get("/v1/runs", headers=admin)).json()["runs"]
        return len(runs) == 3 and all(r["status"] == "completed" for r in runs)

    # Only the first run is looked at before the sum (recorded from its view); the
    # others are recorded by the reconciliation `GET /v1/usage` does first.
    async def first_view() -> dict[str, Any] | None:
        view = (await stack.http.get(f"/v1/runs/{run_ids[0]}", headers=admin)).json()
        return view if view["status"] == "completed" else None

    await wait_until(first_view, timeout=120, interval=0.3)
    await wait_until(ended, timeout=120, interval=0.3)
    usage = (await stack.http.get("/v1/usage", headers=admin)).json()
    views = [(await stack.http.get(f"/v1/runs/{r}", headers=admin)).json() for r in run_ids]

    rows = {row["run_id"]: row for row in usage["by_run"]}
    assert set(rows) == set(run_ids) and usage["runs"] == 3
    for run_id, view in zip(run_ids, views, strict=True):
        # Each row is the run's own usage, as the run recorded it.
        assert rows[run_id]["tool_seconds"] == pytest.approx(view["usage"]["tool_seconds"])
        assert rows[run_id]["sandbox_seconds"] == pytest.approx(view["usage"]["sandbox_seconds"])
    for run_id in run_ids[:2]:
        row = rows[run_id]
        assert row["tool_seconds"] >= 0.3  # the command slept that long
        assert row["sandbox_seconds"] >= row["tool_seconds"]
    idle = rows[run_ids[2]]
    assert (idle["tool_seconds"], idle["sandbox_seconds"]) == (0.0, 0.0)
    assert views[2]["usage"]["tool_seconds"] == views[2]["usage"]["sandbox_seconds"] == 0.0

    for field in ("tool_seconds", "sandbox_seconds"):
        assert usage[field] == pytest.approx(sum(row[field] for row in rows.values()))
        assert usage[field] > 0
    assert usage["sandbox_seconds"] >= usage["tool_seconds"]

    # The schema says they are numbers now (never null).
    schema = (await stack.http.get("/openapi.json", headers=admin)).json()
    report = schema["components"]["schemas"]["UsageReport"]["properties"]
    assert report["tool_seconds"]["type"] == report["sandbox_seconds"]["type"] == "number"


# ------------------------------------------------------------------ the workflow


@pytest.mark.parametrize("idle_stop", [0, 300], ids=["no-idle-stop", "idle-stop-300s"])
async def test_a_paused_sandbox_counts_as_held_until_an_idle_stop(
    time_skipping_env: WorkflowEnvironment, task_queue: str, state_dir: Path, idle_stop: int
) -> None:
    client = time_skipping_env.client
    spec = scripted_spec(
        shell("echo a > a.txt"),
        turn(call("nonexistent"), delay_seconds=1.0),
        shell("cat a.txt"),
        finish("resumed"),
    )
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec, idle_stop_seconds=idle_stop)
        await wait_for(handle, lambda v: v.steps >= 2)
        await handle.execute_update(AgentRunWorkflow.pause, REQ)
        await wait_for(handle, lambda v: v.status == RunStatus.PAUSED)
        await time_skipping_env.sleep(timedelta(hours=1))
        await handle.execute_update(AgentRunWorkflow.resume, REQ)
        result = await outcome(handle)
    assert result.status == RunStatus.COMPLETED
    if idle_stop:
        # Paused, then stopped 300 s into the pause: the stopped hour costs nothing,
        # and the call after the resume ran in the restarted container.
        assert idle_stop <= result.usage.sandbox_seconds < 3600
    else:
        # The container was paused for an hour of workflow time, and held all along.
        assert result.usage.sandbox_seconds >= 3600
    assert 0 < result.usage.tool_seconds <= result.usage.sandbox_seconds


async def test_a_tool_call_abandoned_by_an_aborting_cancel_counts_until_then(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(shell("sleep 60"), finish())
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)

        async def tool_called() -> bool:
            page = await handle.query(AgentRunWorkflow.events, EventsQuery(after_seq=0))
            return any(e.type == EventType.TOOL_CALLED for e in page.events)

        await wait_until(tool_called, timeout=60)
        await handle.execute_update(
            AgentRunWorkflow.cancel, ControlRequest(actor=ALICE, abort_in_flight=True)
        )
        result = await outcome(handle)
    assert result.reason == TerminalReason.CANCELLED
    # No result came back: the call counts from its start to the cancel, in workflow time.
    assert result.usage.tool_seconds > 0
    assert result.usage.sandbox_seconds >= result.usage.tool_seconds
