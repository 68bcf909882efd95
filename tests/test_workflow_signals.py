"""Control by Temporal signal: `temporal workflow signal --name approve|deny|pause|…`.

Signals take the updates' payloads. A signal cannot be refused to its sender, so an
invalid one (the update's validator would reject it, or its input does not decode)
changes nothing and is recorded as a `control.rejected` event with the reason.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from agentrun.contracts import (
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalResolvedPayload,
    ControlRejectedPayload,
    ControlRequest,
    MessageReceivedPayload,
    RunStatus,
    StatusChangedPayload,
    TerminalReason,
    ToolResultPayload,
    UserMessage,
)
from tests.workflow_harness import (
    ALICE,
    all_events,
    call,
    finish,
    outcome,
    payloads,
    running_worker,
    scripted_spec,
    shell,
    start_run,
    temporal,
    turn,
    wait_for,
)

pytestmark = pytest.mark.docker


async def temporal_signal(client: Client, workflow_id: str, name: str, body: Any) -> str:
    """`temporal workflow signal` as an engineer types it (the real CLI, real server)."""
    code, out = await temporal(
        client,
        *("workflow", "signal", "--workflow-id", workflow_id, "--name", name),
        *("--input", json.dumps(body)),
    )
    assert code == 0, out
    return out


async def rejections(handle: WorkflowHandle[Any, Any], count: int) -> list[ControlRejectedPayload]:
    """Wait until the run recorded `count` rejected signals; return them."""
    for _ in range(300):
        found = payloads(await all_events(handle), ControlRejectedPayload)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} control.rejected events: {found}")


def _decision(view_pending: Any, **kw: Any) -> dict[str, Any]:
    return ApprovalDecision(
        approval_id=view_pending.approval_id,
        arguments_digest=view_pending.call.arguments_digest,
        actor=ALICE,
        **kw,
    ).model_dump(mode="json")


async def test_approve_and_deny_by_temporal_cli_signal_decide_the_pending_call(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        shell("echo approved-run >> ran.txt"),
        shell("echo denied-run >> ran.txt"),
        shell("cat ran.txt"),
        finish("done"),
        approval=ApprovalPolicy(mode="tools", tools=["shell"]),
    )
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        view = await wait_for(handle, lambda v: v.pending_approval is not None)
        first = view.pending_approval
        assert first is not None
        # A decision for other arguments changes nothing and says why, without the digest.
        wrong = {**_decision(first), "arguments_digest": "0" * 64}
        await temporal_signal(client, handle.id, "approve", wrong)
        [rejected] = await rejections(handle, 1)
        assert (rejected.action, rejected.actor) == ("approve", ALICE.subject)
        assert rejected.reason.startswith("ApprovalMismatch: arguments_digest does not match")
        assert first.call.arguments_digest not in rejected.reason
        still = await wait_for(handle, lambda v: True)
        assert still.status == RunStatus.AWAITING_APPROVAL
        assert still.pending_approval == first

        out = await temporal_signal(client, handle.id, "approve", _decision(first, reason="ok"))
        assert "Signal workflow succeeded" in out
        second_view = await wait_for(
            handle,
            lambda v: (
                v.pending_approval is not None
                and v.pending_approval.approval_id != first.approval_id
            ),
        )
        second = second_view.pending_approval
        assert second is not None
        await temporal_signal(client, handle.id, "deny", _decision(second, reason="not twice"))
        third_view = await wait_for(
            handle,
            lambda v: (
                v.pending_approval is not None
                and v.pending_approval.approval_id not in (first.approval_id, second.approval_id)
            ),
        )
        assert third_view.pending_approval is not None
        # The typed client sends the same signal by its name.
        await handle.signal(
            "approve", ApprovalDecision.model_validate(_decision(third_view.pending_approval))
        )
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.COMPLETED
    resolved = payloads(events, ApprovalResolvedPayload)
    assert [(r.approved, r.reason) for r in resolved] == [
        (True, "ok"),
        (False, "not twice"),
        (True, None),
    ]
    cat = payloads(events, ToolResultPayload)[-2]
    assert "approved-run" in cat.summary and "denied-run" not in cat.summary


async def test_invalid_signals_change_nothing_and_are_recorded_as_control_rejected(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        *[turn(call("nonexistent"), delay_seconds=0.5) for _ in range(30)], finish()
    )
    req = ControlRequest(actor=ALICE, reason="by signal").model_dump(mode="json")
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        await wait_for(handle, lambda v: v.steps >= 1)
        await temporal_signal(client, handle.id, "resume", req)  # not paused
        await temporal_signal(client, handle.id, "pause", {"reason": "no actor"})  # undecodable
        await temporal_signal(client, handle.id, "approve", _decision_for_nothing())  # none pending
        found = await rejections(handle, 3)
        assert (await wait_for(handle, lambda v: True)).status == RunStatus.RUNNING

        await handle.signal("message", UserMessage(text="steer by signal", actor=ALICE))
        await handle.signal("pause", ControlRequest(actor=ALICE))
        await wait_for(handle, lambda v: v.status == RunStatus.PAUSED)
        await handle.signal("resume", ControlRequest(actor=ALICE))
        await wait_for(handle, lambda v: v.status == RunStatus.RUNNING)
        await handle.signal("cancel", ControlRequest(actor=ALICE, reason="enough"))
        result = await outcome(handle)
        desc = await handle.describe()
        events = await all_events(handle)
    assert [(r.action, r.actor, r.reason.split(":")[0]) for r in found] == [
        ("resume", ALICE.subject, "InvalidTransition"),
        ("pause", "unknown", "InvalidInput"),
        ("approve", ALICE.subject, "InvalidTransition"),
    ]
    assert found[0].reason == "InvalidTransition: the run is not paused"
    # Each field's problem, without pydantic's URL or the values sent.
    assert found[1].reason == "InvalidInput: actor: Field required"
    assert [p.text for p in payloads(events, MessageReceivedPayload)] == ["steer by signal"]
    actions = [(p.action, p.actor) for p in payloads(events, StatusChangedPayload)]
    assert actions == [
        ("pause", ALICE.subject),
        ("resume", ALICE.subject),
        ("cancel", ALICE.subject),
    ]
    assert (result.status, result.reason) == (RunStatus.CANCELLED, TerminalReason.CANCELLED)
    assert desc.status == WorkflowExecutionStatus.CANCELED


def _decision_for_nothing() -> dict[str, Any]:
    return ApprovalDecision(
        approval_id="ap-none", arguments_digest="1" * 64, actor=ALICE
    ).model_dump(mode="json")
