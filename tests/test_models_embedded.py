"""The real embedded model (SmolLM2-135M under llama.cpp) behind the OpenAI provider.

The model is tiny and may choose badly; what these tests pin is the platform's
promise: with schema-constrained output every reply is exactly one call to an
offered tool whose arguments parse as a JSON object, whatever the temperature.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from activities.models.base import ModelReply, ModelRequest
from activities.models.constrained import parse_tool_envelope
from activities.models.openai_compat import OpenAICompatProvider
from activities.models.registry import build_providers
from activities.tools import tool_schemas
from agentrun.config import Settings
from agentrun.contracts import Delta, Message, ModelRef
from cli.embedded_llm import DEFAULT_MODEL_ALIAS, EmbeddedModelError, EmbeddedModelServer
from tests.model_fixtures import free_port

TOOLS = tool_schemas(["shell", "write_file", "finish"])
GOAL = "Write the word hello to hello.txt, then finish."


def goal_conversation() -> list[Message]:
    return [
        Message(role="system", content="You are an agent working in a sandboxed workspace."),
        Message(role="user", content=GOAL),
    ]


def assert_one_valid_call(reply: ModelReply, turn: int) -> dict[str, object]:
    assert len(reply.tool_calls) == 1, reply
    call = reply.tool_calls[0]
    assert call.name in {t.name for t in TOOLS}
    assert call.id == f"call_{turn}_0"
    arguments = json.loads(call.arguments)
    assert isinstance(arguments, dict)
    return arguments


@pytest.fixture
async def provider(embedded_llm: EmbeddedModelServer) -> AsyncIterator[OpenAICompatProvider]:
    """The OpenAI-compatible provider pointed at the embedded model, closed after the test."""
    client = OpenAICompatProvider(base_url=embedded_llm.base_url, default_model=DEFAULT_MODEL_ALIAS)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.llm
async def test_embedded_model_answers_the_goal_with_one_parseable_offered_tool_call(
    provider: OpenAICompatProvider,
) -> None:
    started = time.perf_counter()
    reply = await provider.complete(
        ModelRequest(model=ModelRef(temperature=0), messages=goal_conversation(), tools=TOOLS)
    )
    elapsed = time.perf_counter() - started
    assert_one_valid_call(reply, turn=0)
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    print(f"embedded model call: {elapsed:.2f}s, {reply.tool_calls[0]}")


@pytest.mark.llm
async def test_embedded_model_output_parses_even_when_sampling_hot(
    provider: OpenAICompatProvider,
) -> None:
    for _ in range(3):
        reply = await provider.complete(
            ModelRequest(
                model=ModelRef(temperature=1.5, max_output_tokens=256),
                messages=goal_conversation(),
                tools=TOOLS,
            )
        )
        if reply.stop_reason == "length":
            # A hot sample may ramble past the token budget inside a string: the
            # envelope still yields an offered tool, its arguments go to the
            # validator truncated (and are reported back to the model there).
            assert [c.name in {t.name for t in TOOLS} for c in reply.tool_calls] == [True]
            continue
        assert_one_valid_call(reply, turn=0)


@pytest.mark.llm
async def test_embedded_model_continues_a_conversation_with_tool_results(
    provider: OpenAICompatProvider,
) -> None:
    messages = goal_conversation()
    for turn in range(2):
        reply = await provider.complete(
            ModelRequest(model=ModelRef(temperature=0), messages=messages, tools=TOOLS)
        )
        assert_one_valid_call(reply, turn=turn)
        call = reply.tool_calls[0].model_copy(update={"id": f"s{turn}-c0"})
        messages += [
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", tool_call_id=call.id, name=call.name, content="ok"),
        ]


@pytest.mark.llm
async def test_embedded_model_arguments_parse_strictly_for_varied_goals(
    provider: OpenAICompatProvider,
) -> None:
    # These goals once produced a raw newline inside a string (invalid JSON) that
    # llama-cpp-python's grammar allows; the provider must hand over strict JSON.
    goals = [
        "Create a file named a.txt that contains 42.",
        "Write a three-line poem to poem.txt, one line per verse.",
        "Run the command `ls -la` and report.",
    ]
    for goal in goals:
        for tools in (TOOLS, list(reversed(TOOLS))):
            messages = [
                Message(
                    role="system", content="You are an agent working in a sandboxed workspace."
                ),
                Message(role="user", content=goal),
            ]
            reply = await provider.complete(
                ModelRequest(model=ModelRef(temperature=0), messages=messages, tools=tools)
            )
            assert_one_valid_call(reply, turn=0)


@pytest.mark.llm
async def test_default_deployment_settings_reach_the_embedded_model(
    embedded_llm: EmbeddedModelServer,
) -> None:
    cfg = Settings(
        default_provider="openai",
        default_model=DEFAULT_MODEL_ALIAS,
        openai_base_url=embedded_llm.base_url,
        openai_json_schema_tools=True,
        openai_schema_format="json_object",
    )
    providers = build_providers(cfg, environ={})
    try:
        reply = await providers.complete(
            ModelRequest(model=ModelRef(temperature=0), messages=goal_conversation(), tools=TOOLS)
        )
    finally:
        await providers.aclose()
    assert_one_valid_call(reply, turn=0)


@pytest.mark.llm
async def test_embedded_model_streams_deltas_that_add_up_to_the_reply(
    provider: OpenAICompatProvider,
) -> None:
    # llama-cpp-python's server streams one chunk per token but never reports usage
    # in a stream (it ignores stream_options): the provider estimates it then, so a
    # streamed call still counts toward the run's token budget.

    async def call(tools: bool, deltas: list[Delta] | None) -> ModelReply:
        return await provider.complete(
            ModelRequest(
                model=ModelRef(temperature=0, max_output_tokens=256 if tools else 24),
                messages=goal_conversation(),
                tools=TOOLS if tools else [],
                on_delta=None if deltas is None else deltas.append,
            )
        )

    text_deltas: list[Delta] = []
    envelope_deltas: list[Delta] = []
    streamed, plain = await call(False, text_deltas), await call(False, None)
    constrained, constrained_plain = await call(True, envelope_deltas), await call(True, None)
    assert len(text_deltas) > 1 and {d.kind for d in text_deltas} == {"text"}
    assert streamed.text and "".join(d.text for d in text_deltas) == streamed.text
    # Greedy decoding: the stream is the same completion as the plain call.
    assert (streamed.text, streamed.stop_reason) == (plain.text, plain.stop_reason)
    assert streamed.usage.output_tokens == plain.usage.output_tokens
    real = plain.usage.input_tokens
    assert real / 2 <= streamed.usage.input_tokens <= real * 2, (streamed.usage, plain.usage)
    # Schema-constrained: the envelope streams as text and parses into the same call.
    assert_one_valid_call(constrained, turn=0)
    assert constrained.tool_calls == constrained_plain.tool_calls
    assert {d.kind for d in envelope_deltas} == {"text"}
    envelope = "".join(d.text for d in envelope_deltas)
    assert parse_tool_envelope(envelope, call_id="call_0_0") == constrained.tool_calls[0]
    assert constrained.usage.input_tokens > 0 and constrained.usage.output_tokens > 0
    print(f"streamed usage {streamed.usage} (estimated) vs reported {plain.usage}")


def test_server_that_cannot_start_raises_with_its_log_tail(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"this is not a gguf file")
    server = EmbeddedModelServer(port=free_port(), threads=1, model=bogus, startup_timeout=60)
    with pytest.raises(EmbeddedModelError) as info:
        server.start()
    assert "exited with code" in str(info.value)
    assert "log tail" in str(info.value)
    assert not server.running()
