"""One model turn cannot exhaust the run's history: tool calls per turn are capped,
and a long turn continues-as-new between two of its tool calls.

Without a cap, one reply with 400 tool calls added ~2,400 history events, so ~8,400
calls would reach Temporal's 51,200-event limit and fail the run. Now the calls
beyond the cap never run and never reach history: the model gets a tool message
for each, saying why. And when Temporal suggests continue-as-new in the middle of
a turn (tests lower its threshold on a dev server of their own), the run
continues-as-new between two calls and the next run picks up the remaining ones.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.turn_cap import refusal_text, tool_call_cap
from agentrun.contracts import (
    ContinuedAsNewEvent,
    Limits,
    Message,
    ModelCalledPayload,
    RunStatus,
    ToolCalledPayload,
    ToolName,
    ToolResultEvent,
    ToolResultPayload,
)
from store.artifacts import LocalArtifactStore, get_bytes
from store.conversation import ConversationStore
from tests.conftest import dev_server
from tests.workflow_harness import (
    SUGGEST_CONTINUE_AS_NEW_AFTER,
    TENANT,
    all_events,
    call,
    early_continue_as_new_args,
    finish,
    outcome,
    payloads,
    running_worker,
    scripted_spec,
    start_run,
    status,
    turn,
    types,
)
from workflows import transitions
from workflows.policies import CONTINUE_AS_NEW_HISTORY_EVENTS

TOOLS = [ToolName.SHELL, ToolName.FINISH]


def _conversation(root: Path, head: str | None) -> list[Message]:
    assert head is not None
    return ConversationStore(LocalArtifactStore(root)).load(TENANT, head)


# ------------------------------------------------------------------ pure rules


def test_the_run_limit_lowers_the_deployment_cap_but_never_raises_it() -> None:
    assert tool_call_cap(None, 32) == 32
    assert tool_call_cap(3, 32) == 3
    assert tool_call_cap(100, 32) == 32


def test_the_refusal_tells_the_model_how_many_calls_ran_and_what_to_do() -> None:
    text = refusal_text(requested=40, cap=32)
    assert "not executed" in text
    assert "40 tool calls" in text and "at most 32" in text
    assert "next reply" in text


def test_a_full_history_means_continue_as_new_whether_temporal_suggests_it_or_not() -> None:
    assert transitions.history_full(suggested=True, history_events=10)
    assert transitions.history_full(suggested=False, history_events=CONTINUE_AS_NEW_HISTORY_EVENTS)
    assert not transitions.history_full(suggested=False, history_events=100)
    # Far below Temporal's hard limit of 51,200 events, with room for one capped turn.
    assert CONTINUE_AS_NEW_HISTORY_EVENTS + 10 * 1000 < 51_200


# ------------------------------------------------------------------ the cap in a run


@pytest.mark.docker
async def test_a_turn_over_the_run_cap_runs_the_first_calls_and_the_model_sees_the_refusals(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        turn(*[call("shell", command=f"echo c{i} >> calls.txt") for i in range(5)]),
        finish("capped"),
        tools=TOOLS,
        limits=Limits(max_tool_calls_per_turn=3),
    )
    async with running_worker(client, task_queue, state_dir) as settings:
        handle = await start_run(client, task_queue, spec)
        result = await outcome(handle)
        events = await all_events(handle)
        view = await status(handle)
    assert result.status == RunStatus.COMPLETED and result.final_answer == "capped"

    first = payloads(events, ModelCalledPayload)[0]
    assert first.tool_calls == ["shell"] * 3
    assert first.refused_tool_calls == 2
    called = [p.call_id for p in payloads(events, ToolCalledPayload)]
    assert called == ["s1-c0", "s1-c1", "s1-c2", "s2-c0"]  # the refused ones never ran
    store = LocalArtifactStore(settings.artifacts_path).for_tenant(TENANT)
    workspace = {a.name: a for a in result.artifacts}
    assert get_bytes(store, workspace["calls.txt"].digest) == b"c0\nc1\nc2\n"

    # The model's second turn saw a tool message for every call it made, the refused
    # ones saying so: the conversation stays valid for providers that check it.
    messages = _conversation(settings.artifacts_path, view.conversation_head)
    assistants = [i for i, m in enumerate(messages) if m.role == "assistant"]
    asked = [c.id for c in messages[assistants[0]].tool_calls]
    assert asked == [f"s1-c{i}" for i in range(5)]
    answers = {
        m.tool_call_id: m.content or ""
        for m in messages[assistants[0] : assistants[1]]
        if m.role == "tool"
    }
    assert set(answers) == set(asked)
    for refused in ("s1-c3", "s1-c4"):
        assert answers[refused] == refusal_text(requested=5, cap=3)
    assert "exit_code: 0" in answers["s1-c0"]


async def test_the_deployment_cap_bounds_a_run_that_allows_more_calls_per_turn(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    deployment_cap = 5  # AGENTRUN_MAX_TOOL_CALLS_PER_TURN, through the worker's settings
    spec = scripted_spec(
        turn(*[call("no_such_tool", i=i) for i in range(deployment_cap + 8)]),  # no sandbox
        finish("bounded"),
        tools=TOOLS,
        limits=Limits(max_tool_calls_per_turn=deployment_cap * 4),
    )
    async with running_worker(
        client, task_queue, state_dir, max_tool_calls_per_turn=deployment_cap
    ):
        handle = await start_run(client, task_queue, spec)
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.COMPLETED
    first = payloads(events, ModelCalledPayload)[0]
    assert len(first.tool_calls) == deployment_cap
    assert first.refused_tool_calls == 8
    results = [p for p in payloads(events, ToolResultPayload) if p.call_id.startswith("s1-")]
    assert len(results) == deployment_cap


# ------------------------------------------------------- continue-as-new in a turn


@pytest.fixture(scope="module")
async def early_suggestion_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server that suggests continue-as-new after a few dozen history events."""
    async with dev_server(*early_continue_as_new_args(SUGGEST_CONTINUE_AS_NEW_AFTER)) as env:
        yield env


@pytest.mark.docker
async def test_a_long_turn_continues_as_new_between_two_calls_and_runs_each_call_once(
    early_suggestion_env: WorkflowEnvironment, task_queue: str, state_dir: Path
) -> None:
    client = early_suggestion_env.client
    calls = 8
    spec = scripted_spec(
        turn(*[call("shell", command=f"echo c{i} >> calls.txt") for i in range(calls)]),
        finish("all calls ran"),
        tools=TOOLS,
    )
    async with running_worker(client, task_queue, state_dir) as settings:
        # Normal activities: a local call adds no history events (its marker comes with
        # the workflow task), so a turn of local calls never fills the history.
        handle = await start_run(client, task_queue, spec, local_tool_seconds=0)
        result = await outcome(handle)
        events = await all_events(handle, settings.artifacts_path)
        view = await status(handle)
    assert result.status == RunStatus.COMPLETED and result.final_answer == "all calls ran"
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "events lost or repeated"

    # At least one continue-as-new fell between two tool calls of turn 1.
    within_turn = [
        can
        for before, can in itertools.pairwise(events)
        if isinstance(can, ContinuedAsNewEvent)
        and isinstance(before, ToolResultEvent)
        and before.payload.call_id.startswith("s1-")
        and can.payload.pending_tool_calls > 0
    ]
    assert within_turn, [t.value for t in types(events)]
    assert view.continued >= len(within_turn)
    # Every call of the turn ran once, in order: in the events and in the workspace.
    ids = [f"s1-c{i}" for i in range(calls)]
    assert [p.call_id for p in payloads(events, ToolCalledPayload)][:calls] == ids
    assert [p.call_id for p in payloads(events, ToolResultPayload)][:calls] == ids
    store = LocalArtifactStore(settings.artifacts_path).for_tenant(TENANT)
    workspace = {a.name: a for a in result.artifacts}
    expected = "".join(f"c{i}\n" for i in range(calls)).encode()
    assert get_bytes(store, workspace["calls.txt"].digest) == expected
    # The model's second turn saw every result of the first, each once.
    messages = _conversation(settings.artifacts_path, view.conversation_head)
    answered = [m.tool_call_id for m in messages if m.role == "tool"]
    assert answered[:calls] == ids
