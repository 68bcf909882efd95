"""The OpenAI provider in native-tools mode against a real llama.cpp server.

The server is llama-cpp-python's with ``--chat_format chatml-function-calling``
(the ``native_llm`` fixture) and the provider runs with ``json_schema_tools=False``,
as with ``AGENTRUN_OPENAI_JSON_SCHEMA_TOOLS=false``. What this server does, found by
hand and pinned here:

* without a ``tool_choice`` it ignores the tools (so the provider sends ``auto``);
  ``auto`` lets the model choose a call, but only unstreamed (streamed, the server
  ends the stream early, which the provider reports as a retryable incomplete
  stream); ``required`` it answers with HTTP 500, while the named form, which the
  provider sends for ``required`` with one tool, works streamed and not;
* the raw tool schemas crash its grammar compiler, and a ``"content": null``
  beside ``tool_calls`` is a 500: both would fail these tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.models.base import ModelReply, ModelRequest
from activities.models.openai_compat import OpenAICompatProvider
from activities.models.openai_stream import estimated_prompt_tokens
from activities.tools import tool_schemas
from agentrun.contracts import (
    Delta,
    Limits,
    Message,
    ModelRef,
    RawToolCall,
    RunSpec,
    TerminalReason,
    ToolCalledPayload,
    ToolResultPayload,
)
from cli.embedded_llm import DEFAULT_MODEL_ALIAS, EmbeddedModelServer
from tests.workflow_harness import all_events, outcome, payloads, running_worker, start_run

GOAL = "Create the file hello.txt containing the word hello, then finish."


def conversation() -> list[Message]:
    return [
        Message(role="system", content="You are an agent working in a sandboxed workspace."),
        Message(role="user", content=GOAL),
    ]


@pytest.fixture
async def provider(native_llm: EmbeddedModelServer) -> AsyncIterator[OpenAICompatProvider]:
    client = OpenAICompatProvider(
        base_url=native_llm.base_url, json_schema_tools=False, default_model=DEFAULT_MODEL_ALIAS
    )
    try:
        yield client
    finally:
        await client.aclose()


def real_calls(reply: ModelReply, offered: list[str]) -> list[dict[str, object]]:
    assert reply.tool_calls, reply
    arguments = []
    for call in reply.tool_calls:
        assert call.name in offered
        value = json.loads(call.arguments)
        assert isinstance(value, dict)
        arguments.append(value)
    return arguments


async def test_auto_unstreamed_returns_real_tool_calls_with_the_full_tool_schemas(
    provider: OpenAICompatProvider,
) -> None:
    tools = ["shell", "write_file", "finish"]  # write_file's 4 MiB bound once crashed it
    reply = await provider.complete(
        ModelRequest(
            model=ModelRef(tool_choice="auto", temperature=0, max_output_tokens=128),
            messages=conversation(),
            tools=tool_schemas(tools),
        )
    )
    real_calls(reply, tools)
    assert reply.stop_reason == "tool_calls"
    assert reply.usage.input_tokens > 0 and not reply.usage.estimated


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_required_with_one_tool_returns_a_real_call_streamed_or_not(
    provider: OpenAICompatProvider, stream: bool
) -> None:
    deltas: list[Delta] = []
    reply = await provider.complete(
        ModelRequest(
            model=ModelRef(tool_choice="required", temperature=0, max_output_tokens=128),
            messages=conversation(),
            tools=tool_schemas(["finish"]),
            on_delta=deltas.append if stream else None,
        )
    )
    real_calls(reply, ["finish"])
    if stream:
        assert any(d.kind == "tool_call" and d.name == "finish" for d in deltas)


async def test_a_second_turn_after_a_tool_only_reply_is_accepted(
    provider: OpenAICompatProvider,
) -> None:
    # "content": null beside tool_calls was a 500 from this server, on every retry.
    call = RawToolCall(id="s0-c0", name="write_file", arguments='{"path": "hello.txt"}')
    messages = [
        *conversation(),
        Message(role="assistant", tool_calls=[call]),
        Message(role="tool", tool_call_id="s0-c0", name="write_file", content="written"),
    ]
    reply = await provider.complete(
        ModelRequest(
            model=ModelRef(tool_choice="required", temperature=0, max_output_tokens=64),
            messages=messages,
            tools=tool_schemas(["finish"]),
        )
    )
    real_calls(reply, ["finish"])
    assert {c.name for c in reply.tool_calls} == {"finish"}  # the server took the turn


async def until_complete(
    provider: OpenAICompatProvider, request: ModelRequest, backoff: float
) -> ModelReply:
    """What Temporal does: retry a retryable failure (an interrupted stream) after a
    backoff, a few times (callers' backoffs differ, as activities' start times do)."""
    for attempt in range(1, 8):
        request.attempt = attempt
        try:
            return await provider.complete(request)
        except ApplicationError as exc:
            assert exc.type == "ModelUnavailable" and not exc.non_retryable, exc
            assert "ended incomplete" in exc.message
            await asyncio.sleep(backoff * attempt)
    raise AssertionError("seven attempts in a row were interrupted")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_concurrent_calls_all_get_real_tool_calls(
    provider: OpenAICompatProvider, stream: bool
) -> None:
    # A newer request interrupts this server's running stream (a role chunk, then
    # [DONE]); the provider reports that as retryable, and a retry completes it.
    def request() -> ModelRequest:
        return ModelRequest(
            model=ModelRef(tool_choice="required", temperature=0, max_output_tokens=64),
            messages=conversation(),
            tools=tool_schemas(["finish"]),
            on_delta=(lambda delta: None) if stream else None,
        )

    replies = await asyncio.gather(*(until_complete(provider, request(), n) for n in range(3)))
    for reply in replies:
        real_calls(reply, ["finish"])
    assert [{c.name for c in r.tool_calls} for r in replies] == [{"finish"}] * 3


async def test_streamed_usage_estimate_is_within_a_factor_of_the_servers_count(
    provider: OpenAICompatProvider,
) -> None:
    # This server reports usage only unstreamed: the same prompt, both ways.
    def request(stream: bool) -> ModelRequest:
        return ModelRequest(
            model=ModelRef(tool_choice="none", temperature=0, max_output_tokens=8),
            messages=conversation(),
            tools=[],
            on_delta=(lambda delta: None) if stream else None,
        )

    counted = await provider.complete(request(False))
    estimated = await provider.complete(request(True))
    assert not counted.usage.estimated and estimated.usage.estimated
    real, guess = counted.usage.input_tokens, estimated.usage.input_tokens
    assert real / 1.5 <= guess <= real * 1.5, (guess, real)
    # The old estimate (the messages' JSON over four) was far above it.
    old = len(json.dumps([m.model_dump(exclude_none=True) for m in conversation()])) // 4
    assert abs(guess - real) < abs(old - real)
    assert guess == estimated_prompt_tokens(
        {"messages": [{"role": m.role, "content": m.content} for m in conversation()]}
    )


@pytest.mark.docker
@pytest.mark.parametrize(
    ("stream", "tools", "choice"),
    [(False, ["write_file", "finish"], "auto"), (True, ["finish"], "required")],
    ids=["plain-auto", "streamed-required"],
)
async def test_runs_through_the_workflow_make_real_tool_calls_on_the_native_server(
    native_llm: EmbeddedModelServer,
    sandbox_image: str,
    client: Client,
    task_queue: str,
    state_dir: Path,
    stream: bool,
    tools: list[str],
    choice: str,
) -> None:
    """Two runs at once, on the real workflow and sandbox, through the native server.

    SmolLM2-135M is too weak to finish a task reliably, so this pins what it
    reliably does: every model call succeeds (no provider error ends a run: no
    grammar crash, no 500, interrupted streams retried), and the runs make real
    tool calls that the worker executes (unstreamed with `auto`, which this server
    can only do unstreamed; streamed with `required`, which the provider sends in
    the named form this server accepts). Which tool it picks is not pinned: in the
    workflow's prompt this model usually calls `finish` straight away, so a
    sandboxed `write_file` is checked only when it is called.
    """
    spec = RunSpec(
        goal=GOAL,
        instructions='Call write_file with {"path": "hello.txt", "content": "hello"}, '
        'then call finish with {"answer": "done"}.',
        tools=tools,
        model=ModelRef(temperature=0, max_output_tokens=128, tool_choice=choice),
        limits=Limits(max_steps=3, deadline_seconds=300),
    )
    async with running_worker(
        client,
        task_queue,
        state_dir,
        default_provider="openai",
        openai_base_url=native_llm.base_url,
        openai_json_schema_tools=False,
        model_stream=stream,
    ):
        handles = [await start_run(client, task_queue, spec) for _ in range(2)]
        results = [await outcome(handle) for handle in handles]
        runs = [await all_events(handle) for handle in handles]
    for result, events in zip(results, runs, strict=True):
        assert result.reason in (TerminalReason.COMPLETED, TerminalReason.MAX_STEPS), result
        called = payloads(events, ToolCalledPayload)
        assert called and {c.tool for c in called} <= set(tools)
        assert all(isinstance(json.loads(c.arguments), dict) for c in called)
        executed = {r.call_id for r in payloads(events, ToolResultPayload)}
        assert {c.call_id for c in called if c.tool != "finish"} <= executed
