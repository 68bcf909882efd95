"""Record the workflow histories that `test_workflow_history` replays.

Run on purpose, when a workflow change is *meant* to be incompatible with runs
already in flight (otherwise version the workflow with `workflow.patched`), or to
add a scenario; name scenarios to record only those (histories recorded before a
patch are kept: they prove old runs still replay):

    .venv/bin/python -m tests.record_histories [scenario ...]

It starts its own Temporal dev server and a worker (real Docker, scripted model)
and writes `tests/histories/<scenario>.json`.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from agentrun import search_attributes
from agentrun.contracts import (
    ApprovalDecision,
    ApprovalPolicy,
    ControlRequest,
    RunStatus,
)
from tests.conftest import temporal_cli
from tests.workflow_harness import (
    ALICE,
    call,
    finish,
    running_worker,
    scripted_spec,
    shell,
    start_run,
    turn,
    wait_for,
)
from workflows.agent_run import AgentRunWorkflow

OUT = Path(__file__).parent / "histories"


async def _happy_path(client: Client, queue: str) -> str:
    # happy path: a file, a command, a text-less finish
    h = await start_run(
        client,
        queue,
        scripted_spec(
            turn(call("write_file", path="a.txt", content="hi\n")),
            shell("cat a.txt"),
            turn(call("shell", command=1)),
            finish("ok"),
        ),
    )
    await h.result()
    return (await h.fetch_history()).to_json()


async def _approval(client: Client, queue: str) -> str:
    # approval: one approved, one denied
    h = await start_run(
        client,
        queue,
        scripted_spec(
            shell("echo one"),
            shell("echo two"),
            finish("ok"),
            approval=ApprovalPolicy(mode="tools", tools=["shell"]),
        ),
    )
    seen: set[str] = set()
    for verb in (AgentRunWorkflow.approve, AgentRunWorkflow.deny):
        view = await wait_for(
            h,
            lambda v: v.pending_approval is not None and v.pending_approval.approval_id not in seen,
        )
        assert view.pending_approval is not None
        seen.add(view.pending_approval.approval_id)
        await h.execute_update(
            verb,
            ApprovalDecision(
                approval_id=view.pending_approval.approval_id,
                arguments_digest=view.pending_approval.call.arguments_digest,
                actor=ALICE,
            ),
        )
        await wait_for(h, lambda v: v.pending_approval is None or v.status.terminal)
    await h.result()
    return (await h.fetch_history()).to_json()


async def _continue_as_new(client: Client, queue: str) -> str:
    # continue-as-new: the first run's history (it ends in continue-as-new)
    h = await start_run(
        client,
        queue,
        scripted_spec(shell("echo 1"), shell("echo 2"), shell("echo 3"), finish()),
        continue_as_new_every=2,
    )
    await h.result()
    first = client.get_workflow_handle(h.id, run_id=h.first_execution_run_id)
    return (await first.fetch_history()).to_json()


async def _pause_cancel(client: Client, queue: str) -> str:
    # pause, resume, then cancel
    h = await start_run(
        client,
        queue,
        scripted_spec(
            shell("echo x", delay_seconds=1.0),
            shell("sleep 2"),
            shell("echo never"),
            finish(),
        ),
    )
    req = ControlRequest(actor=ALICE)
    await wait_for(h, lambda v: v.status == RunStatus.RUNNING)
    await h.execute_update(AgentRunWorkflow.pause, req)
    await asyncio.sleep(1.5)
    await h.execute_update(AgentRunWorkflow.resume, req)
    await wait_for(h, lambda v: v.steps >= 2)
    await h.execute_update(AgentRunWorkflow.cancel, req)
    await h.result()
    return (await h.fetch_history()).to_json()


async def _streamed_retry(client: Client, queue: str) -> str:
    # model.started events (patch "model-started-event") and a streamed attempt that fails
    h = await start_run(
        client,
        queue,
        scripted_spec(
            shell("echo streamed"),
            turn(content="all done", fail_attempts=1, fail_after_chunks=1),
        ),
    )
    await h.result()
    return (await h.fetch_history()).to_json()


SCENARIOS: dict[str, Callable[[Client, str], Awaitable[str]]] = {
    "happy_path": _happy_path,
    "approval": _approval,
    "continue_as_new": _continue_as_new,
    "pause_cancel": _pause_cancel,
    "streamed_retry": _streamed_retry,
    # The same approvals after the patch "decision-answers-new-status".
    "approval_answers_status": _approval,
}


async def main(names: list[str]) -> None:
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {sorted(SCENARIOS)}")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=search_attributes.ALL,
    )
    queue = f"record-{uuid.uuid4().hex[:8]}"
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        async with running_worker(env.client, queue, Path(tmp)):
            for name in names or list(SCENARIOS):
                (OUT / f"{name}.json").write_text(await SCENARIOS[name](env.client, queue))
                print(f"wrote {name}.json")
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
