"""What the providers send, against the documented request shapes of the real APIs.

`tests/wire/*.json` hold requests in the shapes that OpenAI's Chat Completions and
Anthropic's Messages API references document (tools, tool calls, tool results,
tool choice, streaming options). Each provider's request body, recorded by the
loopback fake server, must use only keys those shapes have, with the same JSON
types, message by message (matched by role) and block by block (matched by type).
JSON schemas (`parameters`, `input_schema`) are free-form and not descended into.
Also here: how `tool_choice` and tool-only assistant turns are sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from activities.models.anthropic import AnthropicProvider
from activities.models.base import ModelRequest
from activities.models.constrained import GRAMMAR_LENGTH_BOUND, native_tools
from activities.models.openai_compat import OpenAICompatProvider, wire_messages
from activities.tools import tool_schemas
from agentrun.contracts import Message, ModelRef, RawToolCall
from tests.model_fixtures import FakeProvider

WIRE = Path(__file__).parent / "wire"
FREE_FORM = {"parameters", "input_schema", "input"}
TOOLS = tool_schemas(["shell", "write_file", "finish"])
OK_CHAT = {
    "choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}
OK_MESSAGE = {"content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn"}


def documented(name: str) -> dict[str, Any]:
    shape: dict[str, Any] = json.loads((WIRE / name).read_text())
    shape.pop("_source")
    return shape


def conforms(sent: object, shape: object, path: str = "$") -> list[str]:
    """Where ``sent`` strays from ``shape`` (keys it lacks, other JSON types)."""
    if isinstance(shape, bool) or isinstance(sent, bool):
        ok = isinstance(sent, bool) and isinstance(shape, bool)
        return [] if ok else [f"{path}: {type(sent).__name__}, documented bool"]
    if isinstance(shape, int | float) and isinstance(sent, int | float):
        return []
    if type(sent) is not type(shape):
        return [f"{path}: {type(sent).__name__}, documented {type(shape).__name__}"]
    if isinstance(sent, dict) and isinstance(shape, dict):
        problems: list[str] = []
        for key, value in sent.items():
            if key not in shape:
                problems.append(f"{path}.{key}: not a documented key")
            elif key not in FREE_FORM:
                problems += conforms(value, shape[key], f"{path}.{key}")
        return problems
    if isinstance(sent, list) and isinstance(shape, list):
        problems = []
        for i, item in enumerate(sent):
            # The documented element of the same role/type it matches best.
            twins = [s for s in shape if _kind(s) == _kind(item)] or shape
            found: list[list[str]] = [conforms(item, twin, f"{path}[{i}]") for twin in twins]
            best = min(found, key=len) if found else [f"{path}[{i}]: none documented"]
            problems += best
        return problems
    return []


def _kind(item: object) -> object:
    if not isinstance(item, dict):
        return None
    return item.get("role"), item.get("type")


def history() -> list[Message]:
    call = RawToolCall(id="s0-c0", name="write_file", arguments='{"path": "a", "content": "b"}')
    return [
        Message(role="system", content="be brief"),
        Message(role="user", content="write a"),
        Message(role="assistant", tool_calls=[call]),  # no text beside the call
        Message(role="tool", tool_call_id="s0-c0", name="write_file", content="written"),
        Message(role="user", content="now finish"),
    ]


async def sent_body(provider: Any, fake: FakeProvider, name: str, **ref: Any) -> dict[str, Any]:
    deltas: list[object] = []
    request = ModelRequest(
        model=ModelRef(temperature=0.2, **ref),
        messages=history(),
        tools=TOOLS,
        on_delta=deltas.append if ref.pop("stream", False) else None,
    )
    try:
        await provider.complete(request)
    finally:
        await provider.aclose()
    (seen,) = fake.requests(name)
    body: dict[str, Any] = seen.json()
    return body


async def test_openai_native_request_has_the_documented_chat_completions_shape(
    fake_provider: FakeProvider,
) -> None:
    name = fake_provider.scenario(200, OK_CHAT)
    provider = OpenAICompatProvider(
        base_url=fake_provider.url(name, "/v1"), json_schema_tools=False, default_model="m"
    )
    body = await sent_body(provider, fake_provider, name)
    assert conforms(body, documented("openai_chat_completions_request.json")) == []
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert body["tool_choice"] == "auto"


async def test_anthropic_request_has_the_documented_messages_shape(
    fake_provider: FakeProvider,
) -> None:
    name = fake_provider.scenario(200, OK_MESSAGE)
    provider = AnthropicProvider(
        api_key="k", base_url=fake_provider.url(name), default_model="claude-x"
    )
    body = await sent_body(provider, fake_provider, name, tool_choice="required")
    assert conforms(body, documented("anthropic_messages_request.json")) == []
    blocks = [b["type"] for m in body["messages"] for b in m["content"]]
    assert blocks == ["text", "tool_use", "tool_result", "text"]
    assert body["tool_choice"] == {"type": "any"}


def test_the_shape_check_catches_a_null_content_and_an_unknown_key() -> None:
    shape = documented("openai_chat_completions_request.json")
    sent = {"messages": [{"role": "assistant", "content": None, "tool_calls": []}], "x": 1}
    assert conforms(sent, shape) == [
        "$.messages[0].content: NoneType, documented str",
        "$.x: not a documented key",
    ]


def test_a_tool_only_assistant_turn_sends_empty_content_not_null() -> None:
    # llama-cpp-python answers HTTP 500 to "content": null beside tool_calls.
    (assistant,) = [
        m for m in wire_messages(history(), TOOLS, constrained=False) if "tool_calls" in m
    ]
    assert assistant["content"] == ""


def test_native_tool_schemas_are_ones_llama_cpp_can_compile() -> None:
    # write_file's raw `maxLength: 4194304` crashed llama.cpp's grammar compiler.
    text = json.dumps(native_tools(TOOLS))
    assert "4194304" not in text
    for tool in native_tools(TOOLS):
        for prop in tool["function"]["parameters"].get("properties", {}).values():
            assert prop.get("maxLength", 0) <= GRAMMAR_LENGTH_BOUND
    content = native_tools(tool_schemas(["write_file"]))[0]["function"]["parameters"]
    assert content["properties"]["content"]["description"]  # the model still reads them


@pytest.mark.parametrize(
    ("choice", "tools", "sent"),
    [
        ("auto", ["shell", "finish"], "auto"),
        ("required", ["shell", "finish"], "required"),
        # One tool: the named form means the same, and llama-cpp-python accepts only it.
        ("required", ["finish"], {"type": "function", "function": {"name": "finish"}}),
    ],
)
async def test_native_mode_sends_the_tool_choice(
    fake_provider: FakeProvider, choice: str, tools: list[str], sent: object
) -> None:
    name = fake_provider.scenario(200, OK_CHAT)
    provider = OpenAICompatProvider(
        base_url=fake_provider.url(name, "/v1"), json_schema_tools=False, default_model="m"
    )
    request = ModelRequest(
        model=ModelRef(tool_choice=choice),
        messages=history(),
        tools=tool_schemas(tools),
    )
    try:
        await provider.complete(request)
    finally:
        await provider.aclose()
    (seen,) = fake_provider.requests(name)
    assert seen.json()["tool_choice"] == sent


@pytest.mark.parametrize("constrained", [True, False], ids=["constrained", "native"])
async def test_tool_choice_none_offers_no_tools(
    fake_provider: FakeProvider, constrained: bool
) -> None:
    name = fake_provider.scenario(200, OK_CHAT)
    provider = OpenAICompatProvider(
        base_url=fake_provider.url(name, "/v1"), json_schema_tools=constrained, default_model="m"
    )
    request = ModelRequest(model=ModelRef(tool_choice="none"), messages=history(), tools=TOOLS)
    try:
        reply = await provider.complete(request)
    finally:
        await provider.aclose()
    (seen,) = fake_provider.requests(name)
    body = seen.json()
    assert not {"tools", "tool_choice", "response_format"} & set(body)
    assert "Tools:" not in body["messages"][0]["content"]
    assert reply.text == "ok"
