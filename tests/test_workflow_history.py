"""History stays small: bytes per step are flat however long the conversation grows.

Also replays the committed histories in `tests/histories/`, so a change to the
workflow that breaks determinism fails CI (regenerate them on purpose with
`python -m tests.record_histories` when a change is meant to be incompatible,
and version the workflow instead when runs are in flight).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from agentrun.contracts import Limits, RunStatus, ScriptedToolCall, ScriptedTurn
from agentrun.workflow_runner import workflow_runner
from store.artifacts import LocalArtifactStore
from store.conversation import ConversationStore
from tests.record_histories import SCENARIOS
from tests.workflow_harness import (
    TENANT,
    finish,
    outcome,
    running_worker,
    scripted_spec,
    start_run,
    status,
)
from worker import registered_workflows

HISTORIES = Path(__file__).parent / "histories"
STEPS = 100


@pytest.mark.docker
async def test_history_bytes_per_step_stay_flat_over_a_100_step_run(
    client: Client, task_queue: str, state_dir: Path, figures: Callable[[str], None]
) -> None:
    # Every turn adds ~1 KiB of assistant text and a tool error to the conversation,
    # so by step 100 the conversation is ~200 messages / >100 KiB.
    turns = [
        ScriptedTurn(
            content=f"step {i}: " + "thinking out loud " * 60,
            tool_calls=[ScriptedToolCall(name="no_such_tool", arguments={"i": i})],
        )
        for i in range(STEPS - 1)
    ]
    spec = scripted_spec(*turns, finish("100 steps"), limits=Limits(max_steps=STEPS + 1))
    async with running_worker(client, task_queue, state_dir) as settings:
        handle = await start_run(client, task_queue, spec)
        result = await outcome(handle)
        history = await handle.fetch_history()
        view = await status(handle)
    assert result.status == RunStatus.COMPLETED
    assert result.steps == STEPS

    # Cumulative history bytes at the moment each model call is scheduled.
    marks: list[int] = []
    total = 0
    for event in history.events:
        total += event.ByteSize()
        if (
            event.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and event.activity_task_scheduled_event_attributes.activity_type.name == "call_model"
        ):
            marks.append(total)
    per_step = [b - a for a, b in itertools.pairwise(marks)]
    assert len(per_step) == STEPS - 1
    early = statistics.mean(per_step[5:15])
    late = statistics.mean(per_step[-10:])
    assert view.conversation_head is not None
    conversation = ConversationStore(LocalArtifactStore(settings.artifacts_path)).load(
        TENANT, view.conversation_head
    )
    conv_bytes = sum(len(m.model_dump_json()) for m in conversation)
    figures(
        f"history: {len(history.events)} events, {total} bytes for {STEPS} steps; "
        f"bytes/step early (5-15) {early:.0f}, late (last 10) {late:.0f}, "
        f"max {max(per_step)}, ratio late/early {late / early:.3f}; "
        f"conversation {len(conversation)} messages, {conv_bytes} bytes (in the artifact store)"
    )
    assert len(conversation) > 2 * STEPS
    assert conv_bytes > 100_000
    # Flat: the late steps cost no more than the early ones (a re-sent conversation
    # would make them ~10x larger by step 100).
    assert late / early < 1.10
    assert total < 2 * STEPS * early + 50_000


def _recorded() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "versioned"])
@pytest.mark.parametrize("path", _recorded(), ids=lambda p: p.stem)
async def test_committed_history_replays_deterministically(path: Path, versioned: bool) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    # The definitions and runner (agentrun/workflow_runner.py) a worker registers, as
    # deployed: a versioned one's (AGENTRUN_WORKER_BUILD_ID) declare versioning
    # behaviors, which must not change what a history replays to.
    replayer = Replayer(
        workflows=registered_workflows(versioned=versioned),
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(pydantic_data_converter),
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name} no longer replays: {result.replay_failure}"


def test_histories_are_committed() -> None:
    names = {p.stem for p in _recorded()}
    assert set(SCENARIOS) <= names, f"not recorded: {set(SCENARIOS) - names}"
