"""The agent loop on a real Temporal server, real Docker, and the scripted model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import Client

from agentrun.config import Settings
from agentrun.contracts import (
    EventsPage,
    EventsQuery,
    EventType,
    Limits,
    ModelCalledEvent,
    ModelStartedEvent,
    RunResult,
    RunStatus,
    ScriptedToolCall,
    TerminalReason,
    ToolName,
    ToolResultPayload,
)
from store.artifacts import LocalArtifactStore, get_bytes
from store.conversation import ConversationStore
from store.delta_log import DeltaLog
from tests.workflow_harness import (
    TENANT,
    all_events,
    call,
    finish,
    outcome,
    payloads,
    running_worker,
    scripted_spec,
    shell,
    start_run,
    status,
    turn,
    types,
    wait_for,
)
from workflows.agent_run import AgentRunWorkflow
from workflows.prompts import CALL_A_TOOL, EMPTY_REPLY, finish_mode, nudge

# Every test here starts a worker whose tools run in the Docker sandbox.
pytestmark = pytest.mark.docker


async def test_happy_path_runs_a_sandboxed_tool_stores_an_artifact_and_completes(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        turn(call("write_file", path="notes/hello.txt", content="hello from the agent\n")),
        shell("cat notes/hello.txt && id -u"),
        finish("wrote notes/hello.txt"),
    )
    async with running_worker(client, task_queue, state_dir) as settings:
        handle = await start_run(client, task_queue, spec)
        result: RunResult = await outcome(handle)
        events = await all_events(handle)

    assert result.status == RunStatus.COMPLETED
    assert result.reason == TerminalReason.COMPLETED
    assert result.final_answer == "wrote notes/hello.txt"
    assert result.steps == 3
    assert result.usage.total == 60  # 3 turns x (10 in + 10 out)
    kinds = types(events)
    assert kinds[0] == EventType.RUN_STARTED
    assert kinds[-1] == EventType.RUN_FINISHED
    assert kinds.count(EventType.MODEL_CALLED) == 3
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    shell_result = next(p for p in payloads(events, ToolResultPayload) if p.tool == "shell")
    assert shell_result.ok is True
    assert "hello from the agent" in shell_result.summary
    # The command ran in the container as the sandbox's non-root user, not in the worker.
    assert "10001" in shell_result.summary
    stored = {a.name: a for a in result.artifacts}
    assert "notes/hello.txt" in stored
    store = LocalArtifactStore(settings.artifacts_path).for_tenant(TENANT)
    assert get_bytes(store, stored["notes/hello.txt"].digest) == b"hello from the agent\n"
    assert EventType.ARTIFACT_STORED in kinds


async def test_a_text_reply_without_tool_calls_is_the_final_answer(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(turn(content="The answer is 42."), finish="text")
    async with running_worker(client, task_queue, state_dir):
        result = await outcome(await start_run(client, task_queue, spec))
    assert result.status == RunStatus.COMPLETED
    assert result.final_answer == "The answer is 42."


def _conversation(settings: Settings, head: str | None) -> list[tuple[str, str | None]]:
    assert head is not None
    messages = ConversationStore(LocalArtifactStore(settings.artifacts_path)).load(TENANT, head)
    return [(m.role, m.content) for m in messages]


async def test_in_tool_mode_a_reply_without_tool_calls_is_not_an_answer_and_the_model_is_told(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    # The default for a run with tools besides `finish`: only `finish` answers.
    prose = scripted_spec(turn(content="I wrote the file, all done."), finish("the real answer"))
    assert prose.finish is None
    chatty = scripted_spec(
        *[turn(content=f"thinking {i}") for i in range(3)], limits=Limits(max_steps=3)
    )
    async with running_worker(client, task_queue, state_dir) as settings:
        handle = await start_run(client, task_queue, prose)
        result = await outcome(handle)
        view = await status(handle)
        bounded = await outcome(await start_run(client, task_queue, chatty))
    assert (result.status, result.final_answer, result.steps) == (
        RunStatus.COMPLETED,
        "the real answer",
        2,
    )
    roles = _conversation(settings, view.conversation_head)
    reply = roles.index(("assistant", "I wrote the file, all done."))
    assert roles[reply + 1] == ("user", CALL_A_TOOL)
    # Prose forever never ends the run as completed: max_steps does.
    assert (bounded.status, bounded.reason, bounded.final_answer) == (
        RunStatus.FAILED,
        TerminalReason.MAX_STEPS,
        None,
    )


async def test_an_empty_reply_is_never_an_answer_even_in_text_mode(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(turn(content="  \n "), turn(content="42"), finish="text")
    async with running_worker(client, task_queue, state_dir) as settings:
        handle = await start_run(client, task_queue, spec)
        result = await outcome(handle)
        view = await status(handle)
    assert (result.status, result.final_answer, result.steps) == (RunStatus.COMPLETED, "42", 2)
    assert ("user", EMPTY_REPLY) in _conversation(settings, view.conversation_head)


def test_the_finish_mode_defaults_to_tool_when_the_run_has_tools_besides_finish() -> None:
    assert finish_mode(scripted_spec()) == "tool"
    assert finish_mode(scripted_spec(tools=[ToolName.FINISH])) == "text"
    assert finish_mode(scripted_spec(tools=[ToolName.SHELL], finish="text")) == "text"
    assert finish_mode(scripted_spec(tools=[ToolName.FINISH], finish="tool")) == "tool"
    assert nudge("text", "an answer") is None
    assert nudge("text", " \t\n") == EMPTY_REPLY
    assert nudge("tool", "an answer") == CALL_A_TOOL


async def test_bad_tool_arguments_go_back_to_the_model_as_a_tool_error(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        turn(call("shell", command=42)),  # wrong type
        turn(call("write_file", path="x")),  # missing content
        turn(call("launch_missiles", target="moon")),  # unknown tool
        turn(ScriptedToolCall(name="shell", arguments='{"command": "ls"')),  # malformed JSON
        finish("recovered"),
    )
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.COMPLETED
    assert result.final_answer == "recovered"
    errors = [(p.error_type, p.summary) for p in payloads(events, ToolResultPayload) if not p.ok]
    assert [kind for kind, _ in errors] == [
        "bad_arguments",
        "bad_arguments",
        "unknown_tool",
        "bad_arguments",
    ]
    assert "command" in str(errors[0][1])
    assert "content" in str(errors[1][1])
    assert "not valid JSON" in str(errors[3][1])


async def test_max_steps_ends_the_run_with_reason_max_steps(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        *[turn(call("nonexistent_tool")) for _ in range(10)], limits=Limits(max_steps=3)
    )
    async with running_worker(client, task_queue, state_dir):
        result = await outcome(await start_run(client, task_queue, spec))
    assert result.status == RunStatus.FAILED
    assert result.reason == TerminalReason.MAX_STEPS
    assert result.steps == 3


async def test_token_budget_ends_the_run_with_reason_budget(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        *[turn(call("nonexistent_tool"), input_tokens=400, output_tokens=100) for _ in range(10)],
        limits=Limits(max_tokens=1200),
    )
    async with running_worker(client, task_queue, state_dir):
        result = await outcome(await start_run(client, task_queue, spec))
    assert result.reason == TerminalReason.BUDGET
    assert result.steps == 3  # 500, 1000, 1500 >= 1200 after the third call
    assert result.usage.total == 1500


async def test_deadline_ends_a_slow_run_with_reason_deadline(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    # On the dev server, not the time-skipping one: this deadline fires while a model
    # call is in flight, and an activity in flight holds the test server's clock, so
    # it would take the same 2.5 s there. The deadline timers of idle runs (paused, or
    # waiting for an approval) are skipped in test_workflow_control.
    spec = scripted_spec(
        *[turn(call("nonexistent_tool"), delay_seconds=1.0) for _ in range(30)],
        limits=Limits(deadline_seconds=2.5),
    )
    async with running_worker(client, task_queue, state_dir):
        result = await outcome(await start_run(client, task_queue, spec))
    assert result.status == RunStatus.FAILED
    assert result.reason == TerminalReason.DEADLINE
    assert 1 <= result.steps <= 3


async def test_non_retryable_model_error_fails_the_run_cleanly(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(finish(fail_attempts=5, fail_status=401))
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.FAILED
    assert result.reason == TerminalReason.ERROR
    assert result.error is not None and "ModelAuthError" in result.error
    assert events[-1].type == EventType.RUN_FINISHED
    assert EventType.MODEL_CALLED not in types(events)  # one attempt, no retries


async def test_transient_model_error_is_retried_and_the_event_names_the_attempt(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(finish("after retries", fail_attempts=2, fail_status=503))
    async with running_worker(client, task_queue, state_dir):
        handle = await start_run(client, task_queue, spec)
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == RunStatus.COMPLETED
    assert result.final_answer == "after retries"
    model_events = [e for e in events if e.type == EventType.MODEL_CALLED]
    assert [e.attempt for e in model_events] == [3]


async def test_continue_as_new_preserves_state_and_event_sequence(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        shell("echo one >> log.txt"),
        shell("echo two >> log.txt"),
        shell("echo three >> log.txt"),
        shell("cat log.txt"),
        shell("wc -l < log.txt"),
        finish("five steps"),
        tools=[ToolName.SHELL, ToolName.FINISH],
    )
    async with running_worker(client, task_queue, state_dir) as settings:
        handle = await start_run(client, task_queue, spec, continue_as_new_every=2)
        result = await outcome(handle)
        events = await all_events(handle, settings.artifacts_path)
        final_status = await status(handle)
    assert result.status == RunStatus.COMPLETED
    assert result.steps == 6
    assert result.usage.total == 120
    assert final_status.continued == 2
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "events lost or duplicated across runs"
    assert types(events).count(EventType.CONTINUED_AS_NEW) == 2
    assert types(events).count(EventType.RUN_STARTED) == 1
    last_shell = payloads(events, ToolResultPayload)[-2]
    assert "3" in last_shell.summary  # the workspace survived each hop
    assert {a.name for a in result.artifacts} >= {"log.txt"}


async def test_each_model_call_opens_a_delta_stream_the_events_query_reports(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    spec = scripted_spec(
        turn(call("finish"), delay_seconds=1.0),  # invalid arguments: the loop goes on
        turn(content="streamed answer", delay_seconds=1.0),
        finish="text",
    )
    async with running_worker(client, task_queue, state_dir) as settings:
        handle = await start_run(client, task_queue, spec)
        await wait_for(handle, lambda v: v.steps >= 0)  # the worker answers queries
        seen: dict[int, int] = {}
        while len(seen) < 2:
            page: EventsPage = await handle.query(AgentRunWorkflow.events, EventsQuery())
            if page.model_call is not None:
                seen[page.model_call.step] = page.model_call.started_seq
            assert not page.terminal, "finished before both model calls were seen in flight"
            await asyncio.sleep(0.1)
        result = await outcome(handle)
        events = await all_events(handle)
        log = DeltaLog(settings.deltas_path)
        logged = [await log.tail("test", result.run_id, step).poll() for step in (1, 2)]
        final = await handle.query(AgentRunWorkflow.events, EventsQuery())

    started = {e.payload.step: e.seq for e in events if isinstance(e, ModelStartedEvent)}
    assert started == seen  # the in-flight call names the seq of its model.started
    called = {e.payload.step: e.seq for e in events if isinstance(e, ModelCalledEvent)}
    assert all(started[step] < called[step] for step in (1, 2))
    assert final.model_call is None
    # The activity logged the streamed reply outside history: tool arguments, then text.
    assert [d.kind for d in logged[0]] == ["tool_call"] and logged[0][0].name == "finish"
    assert "".join(d.text for d in logged[1]) == "streamed answer"
    assert {d.attempt for d in logged[1]} == {1} and [d.n for d in logged[1]] == [1, 2]
