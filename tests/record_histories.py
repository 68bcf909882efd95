"""Record the workflow histories that `test_workflow_history` replays.

Run on purpose, when a workflow change is *meant* to be incompatible with runs
already in flight (otherwise version the workflow with `workflow.patched`), or to
add a scenario; name scenarios to record only those (histories recorded before a
patch are kept: they prove old runs still replay):

    .venv/bin/python -m tests.record_histories [scenario ...]

It starts its own Temporal dev server and a worker (real Docker, scripted model)
and writes `tests/histories/<scenario>.json`. Scenarios listed in `SERVER_FLAGS` get
a dev server of their own, started with those flags (e.g. an early continue-as-new
suggestion, so a test-sized turn fills its history).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle

from agentrun.config import load_settings
from agentrun.contracts import (
    ApprovalDecision,
    ApprovalPolicy,
    ControlRequest,
    Limits,
    RunSpec,
    RunStatus,
    TerminalReason,
    ToolName,
    slots_workflow_id,
)
from api import launcher
from api.slots import SlotLimit
from tests.conftest import start_dev_server
from tests.workflow_harness import (
    ALICE,
    SUGGEST_CONTINUE_AS_NEW_AFTER,
    call,
    early_continue_as_new_args,
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
from workflows.tenant_slots import TenantSlotsWorkflow

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
    await outcome(h)
    return (await h.fetch_history()).to_json()


async def _decide(h: WorkflowHandle[Any, Any], *verbs: Any) -> None:
    """Answer the run's approvals in turn, one verb (approve or deny) each."""
    seen: set[str] = set()
    for verb in verbs:
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
    await _decide(h, AgentRunWorkflow.approve, AgentRunWorkflow.deny)
    await outcome(h)
    return (await h.fetch_history()).to_json()


async def _continue_as_new(client: Client, queue: str) -> str:
    # continue-as-new: the first run's history (it ends in continue-as-new)
    h = await start_run(
        client,
        queue,
        scripted_spec(shell("echo 1"), shell("echo 2"), shell("echo 3"), finish()),
        continue_as_new_every=2,
    )
    await outcome(h)
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
    await outcome(h)
    return (await h.fetch_history()).to_json()


async def _idle_stop(client: Client, queue: str) -> str:
    # waits past the idle threshold: the container stopped during an approval wait
    # (approving starts it again), then during a pause (resume starts it)
    h = await start_run(
        client,
        queue,
        scripted_spec(
            turn(call("write_file", path="a.txt", content="a")),
            shell("cat a.txt"),
            turn(call("nonexistent"), delay_seconds=1.0),
            shell("cat a.txt"),
            finish("ok"),
            approval=ApprovalPolicy(mode="tools", tools=["shell"], timeout_seconds=None),
        ),
        idle_stop_seconds=1,
    )
    req = ControlRequest(actor=ALICE)
    view = await wait_for(h, lambda v: v.pending_approval is not None)
    await asyncio.sleep(2.5)  # past the threshold: the stop activity ran
    assert view.pending_approval is not None
    await h.execute_update(
        AgentRunWorkflow.approve,
        ApprovalDecision(
            approval_id=view.pending_approval.approval_id,
            arguments_digest=view.pending_approval.call.arguments_digest,
            actor=ALICE,
        ),
    )
    await wait_for(h, lambda v: v.steps >= 3)
    await h.execute_update(AgentRunWorkflow.pause, req)
    await wait_for(h, lambda v: v.status == RunStatus.PAUSED)
    await asyncio.sleep(2.5)
    await h.execute_update(AgentRunWorkflow.resume, req)
    view = await wait_for(h, lambda v: v.pending_approval is not None)
    assert view.pending_approval is not None
    await h.execute_update(
        AgentRunWorkflow.approve,
        ApprovalDecision(
            approval_id=view.pending_approval.approval_id,
            arguments_digest=view.pending_approval.call.arguments_digest,
            actor=ALICE,
        ),
    )
    await outcome(h)
    history = await h.fetch_history()
    stops = [
        e
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and b'"stop"' in e.activity_task_scheduled_event_attributes.input.payloads[0].data
    ]
    assert len(stops) >= 2, "the scenario must stop the container twice"
    return history.to_json()


async def _streamed_retry(client: Client, queue: str) -> str:
    # model.started events (patch "model-started-event") and a streamed attempt that fails
    h = await start_run(
        client,
        queue,
        scripted_spec(
            shell("echo streamed"),
            turn(content="all done", fail_attempts=1, fail_after_chunks=1),
            finish="text",
        ),
    )
    await outcome(h)
    return (await h.fetch_history()).to_json()


async def _turn_histories(client: Client, queue: str) -> list[str]:
    """The Temporal runs of one run whose first turn continues-as-new between calls.

    Eight shell calls, two of them beyond the run's cap of six (refused in call_model),
    on a server that suggests continue-as-new early (`SERVER_FLAGS`).
    """
    h = await start_run(
        client,
        queue,
        scripted_spec(
            turn(*[call("shell", command=f"echo c{i} >> calls.txt") for i in range(8)]),
            finish("turn done"),
            tools=[ToolName.SHELL, ToolName.FINISH],
            limits=Limits(max_tool_calls_per_turn=6),
        ),
    )
    await outcome(h)
    histories: list[str] = []
    run_id = h.first_execution_run_id
    while run_id:
        history = await client.get_workflow_handle(h.id, run_id=run_id).fetch_history()
        histories.append(history.to_json())
        last = history.events[-1].workflow_execution_continued_as_new_event_attributes
        run_id = last.new_execution_run_id or None
    return histories


async def _turn_continue_as_new(client: Client, queue: str) -> str:
    # patch "continue-as-new-within-turn": the first run ends between two tool calls
    return (await _turn_histories(client, queue))[0]


async def _turn_resumed(client: Client, queue: str) -> str:
    # the next run: it starts by running the calls the first one carried
    return (await _turn_histories(client, queue))[1]


async def _failed_run(client: Client, queue: str) -> str:
    # patches "finish-mode" and "temporal-status-matches-outcome": prose is not an
    # answer (the model is told so), and the run fails at max_steps as Temporal `Failed`
    h = await start_run(
        client,
        queue,
        scripted_spec(
            turn(content="I think I am done."),
            turn(call("nonexistent")),
            limits=Limits(max_steps=2),
        ),
    )
    result = await outcome(h)
    assert result.reason == TerminalReason.MAX_STEPS, result
    return (await h.fetch_history()).to_json()


async def _cancelled_run(client: Client, queue: str) -> str:
    # patch "temporal-status-matches-outcome": a signal that changes nothing
    # (`control.rejected`), then the cancel update; the run ends as Temporal `Canceled`
    h = await start_run(
        client,
        queue,
        scripted_spec(shell("echo x", delay_seconds=1.0), shell("echo never"), finish()),
    )
    req = ControlRequest(actor=ALICE)
    await wait_for(h, lambda v: v.status == RunStatus.RUNNING)
    await h.signal("resume", req)
    await h.execute_update(AgentRunWorkflow.cancel, req)
    result = await outcome(h)
    assert result.reason == TerminalReason.CANCELLED, result
    return (await h.fetch_history()).to_json()


async def _slots_interplay(client: Client, queue: str) -> dict[str, str]:
    """A tenant of one slot that queues: `held` runs, `queued` ones waits then runs,
    `cancelled` is cancelled while it waits; the histories of the three runs and of the
    tenant's slots workflow."""
    tenant = f"slots-{uuid.uuid4().hex[:8]}"
    settings = load_settings(task_queue=queue)
    slot = SlotLimit(1, wait=True)

    async def launch(spec: RunSpec) -> WorkflowHandle[Any, Any]:
        started = await launcher.start_run(client, settings, tenant, spec, ALICE, slots=slot)
        return client.get_workflow_handle(started.workflow_id)

    held = await launch(scripted_spec(turn(call("finish"), delay_seconds=1.0), finish("held")))
    queued = await launch(scripted_spec(finish("queued")))
    cancelled = await launch(scripted_spec(finish("never")))
    await wait_for(cancelled, lambda v: v.status == RunStatus.QUEUED)
    await cancelled.execute_update(AgentRunWorkflow.cancel, ControlRequest(actor=ALICE))
    for handle in (held, queued, cancelled):
        await outcome(handle)
    slots = client.get_workflow_handle(slots_workflow_id(tenant))
    for _ in range(100):  # the last release is a signal: wait until it has landed
        if not (await slots.query(TenantSlotsWorkflow.view)).holders:
            break
        await asyncio.sleep(0.1)
    return {
        "held": (await held.fetch_history()).to_json(),
        "queued": (await queued.fetch_history()).to_json(),
        "cancelled": (await cancelled.fetch_history()).to_json(),
        "slots": (await slots.fetch_history()).to_json(),
    }


async def _queued_run(client: Client, queue: str) -> str:
    # a run started `queued`: enqueue, slot_granted, then the loop, then release
    return (await _slots_interplay(client, queue))["queued"]


async def _queued_cancelled(client: Client, queue: str) -> str:
    # a run cancelled while it waits for a slot
    return (await _slots_interplay(client, queue))["cancelled"]


async def _held_slot(client: Client, queue: str) -> str:
    # a run started `held`: releases its slot at its end
    return (await _slots_interplay(client, queue))["held"]


async def _tenant_slots(client: Client, queue: str) -> str:
    # the slots workflow: acquire (granted, queued x2), enqueue, release, slot_granted
    return (await _slots_interplay(client, queue))["slots"]


async def _local_tools(client: Client, queue: str) -> str:
    # tool calls as local activities first: a short one, one denied, one past the 1 s
    # budget (handed over to a normal activity), finish
    h = await start_run(
        client,
        queue,
        scripted_spec(
            shell("echo short"),
            shell("echo denied"),
            shell("echo long; sleep 2"),
            finish("ok"),
            approval=ApprovalPolicy(mode="tools", tools=["shell"], timeout_seconds=None),
        ),
        local_tool_seconds=1,
    )
    await _decide(h, AgentRunWorkflow.approve, AgentRunWorkflow.deny, AgentRunWorkflow.approve)
    await outcome(h)
    return (await h.fetch_history()).to_json()


SCENARIOS: dict[str, Callable[[Client, str], Awaitable[str]]] = {
    "happy_path": _happy_path,
    "approval": _approval,
    "continue_as_new": _continue_as_new,
    "pause_cancel": _pause_cancel,
    "streamed_retry": _streamed_retry,
    "idle_stop": _idle_stop,
    # The same approvals after the patch "decision-answers-new-status".
    "approval_answers_status": _approval,
    "turn_continue_as_new": _turn_continue_as_new,
    "turn_resumed": _turn_resumed,
    "failed_run": _failed_run,
    "cancelled_run": _cancelled_run,
    "held_slot": _held_slot,
    "queued_run": _queued_run,
    "queued_cancelled": _queued_cancelled,
    "tenant_slots": _tenant_slots,
    "local_tools": _local_tools,
}

SERVER_FLAGS: dict[str, list[str]] = {
    "turn_continue_as_new": early_continue_as_new_args(SUGGEST_CONTINUE_AS_NEW_AFTER),
    "turn_resumed": early_continue_as_new_args(SUGGEST_CONTINUE_AS_NEW_AFTER),
}
"""Dev-server flags per scenario; the others share a server with default settings."""


async def main(names: list[str]) -> None:
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {sorted(SCENARIOS)}")
    groups: dict[tuple[str, ...], list[str]] = {}
    for name in names or list(SCENARIOS):
        groups.setdefault(tuple(SERVER_FLAGS.get(name, [])), []).append(name)
    OUT.mkdir(exist_ok=True)
    for flags, group in groups.items():
        env = await start_dev_server(*flags)
        queue = f"record-{uuid.uuid4().hex[:8]}"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                async with running_worker(env.client, queue, Path(tmp)):
                    for name in group:
                        history = await SCENARIOS[name](env.client, queue)
                        (OUT / f"{name}.json").write_text(history)
                        print(f"wrote {name}.json")
        finally:
            await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
