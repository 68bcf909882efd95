"""Successful round trips: what each HTTP provider sends and how it reads the reply.

The providers talk to a fake server on 127.0.0.1 that records requests (OpenAI and
Anthropic are unreachable from tests; the real llama.cpp server is exercised in
test_models_embedded.py).
"""

from __future__ import annotations

import json
from typing import Any

from activities.models.anthropic import AnthropicProvider
from activities.models.base import ModelReply, ModelRequest
from activities.models.constrained import native_tools, tool_call_schema
from activities.models.openai_compat import OpenAICompatProvider
from activities.tools import tool_schemas
from agentrun.contracts import Message, ModelRef, RawToolCall
from tests.model_fixtures import FakeProvider

TOOLS = tool_schemas(["shell", "finish"])


def chat_completion(message: dict[str, object], finish: str = "stop") -> dict[str, object]:
    return {
        "id": "x",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }


def conversation(turns: int = 0) -> list[Message]:
    messages = [Message(role="system", content="sys"), Message(role="user", content="goal")]
    for n in range(turns):
        messages.append(
            Message(
                role="assistant",
                tool_calls=[RawToolCall(id=f"s{n}-c0", name="shell", arguments="{}")],
            )
        )
        messages.append(Message(role="tool", tool_call_id=f"s{n}-c0", name="shell", content="ok"))
    return messages


async def openai_call(
    fake: FakeProvider, reply: dict[str, object], *, turns: int = 0, **options: object
) -> tuple[ModelReply, dict[str, Any]]:
    name = fake.scenario(200, reply)
    provider = OpenAICompatProvider(base_url=fake.url(name, "/v1"), default_model="dflt", **options)  # type: ignore[arg-type]
    try:
        result = await provider.complete(
            ModelRequest(
                model=ModelRef(temperature=0.2, max_output_tokens=77),
                messages=conversation(turns),
                tools=TOOLS,
            )
        )
    finally:
        await provider.aclose()
    (sent,) = fake.requests(name)
    assert sent.path.endswith("/v1/chat/completions")
    return result, sent.json()


async def test_constrained_mode_sends_json_object_schema_and_reads_one_call(
    fake_provider: FakeProvider,
) -> None:
    content = '{"tool": "shell", "arguments": {"command":  "ls -la"}}'
    reply, body = await openai_call(fake_provider, chat_completion({"content": content}), turns=2)
    assert body["response_format"] == {"type": "json_object", "schema": tool_call_schema(TOOLS)}
    assert "tools" not in body
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("dflt", 77, 0.2)
    assert reply.tool_calls == [
        RawToolCall(id="call_2_0", name="shell", arguments='{"command":  "ls -la"}')
    ]
    assert reply.text is None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (11, 5)


async def test_constrained_mode_can_send_openai_json_schema_format(
    fake_provider: FakeProvider,
) -> None:
    content = '{"tool": "finish", "arguments": {"answer": "done"}}'
    _, body = await openai_call(
        fake_provider, chat_completion({"content": content}), schema_format="json_schema"
    )
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "tool_call", "schema": tool_call_schema(TOOLS)},
    }


async def test_constrained_reply_without_tool_name_comes_back_as_text(
    fake_provider: FakeProvider,
) -> None:
    reply, _ = await openai_call(fake_provider, chat_completion({"content": '{"to'}, "length"))
    assert reply.tool_calls == []
    assert reply.text == '{"to'
    assert reply.stop_reason == "length"


async def test_native_mode_sends_tools_and_keeps_provider_ids_and_raw_arguments(
    fake_provider: FakeProvider,
) -> None:
    wire_calls = [
        {
            "id": "call_abc",
            "type": "function",
            "function": {"name": "shell", "arguments": '{"command":"ls"'},
        },
        {"type": "function", "function": {"name": "finish", "arguments": {"answer": "ok"}}},
    ]
    reply, body = await openai_call(
        fake_provider,
        chat_completion({"content": None, "tool_calls": wire_calls}, "tool_calls"),
        json_schema_tools=False,
    )
    assert "response_format" not in body
    assert [t["function"]["name"] for t in body["tools"]] == ["shell", "finish"]
    # The schemas a grammar-based server can compile, descriptions kept for the model.
    assert body["tools"] == native_tools(TOOLS)
    assert body["tools"][0]["function"]["parameters"]["properties"]["command"]["description"]
    assert reply.tool_calls[0] == RawToolCall(
        id="call_abc", name="shell", arguments='{"command":"ls"'
    )
    # A server that sends no id and an object (Ollama) still gets a deterministic id and JSON text.
    assert reply.tool_calls[1].id == "call_0_1"
    assert json.loads(reply.tool_calls[1].arguments) == {"answer": "ok"}
    assert reply.stop_reason == "tool_calls"


async def test_no_api_key_means_no_authorization_header(fake_provider: FakeProvider) -> None:
    name = fake_provider.scenario(200, chat_completion({"content": "hi"}))
    provider = OpenAICompatProvider(base_url=fake_provider.url(name, "/v1"), default_model="m")
    reply = await provider.complete(
        ModelRequest(model=ModelRef(), messages=conversation(), tools=[])
    )
    await provider.aclose()
    assert reply.text == "hi"
    (sent,) = fake_provider.requests(name)
    assert "authorization" not in {k.lower() for k in sent.headers}
    assert "response_format" not in sent.json()  # nothing to constrain without tools


async def test_anthropic_reads_text_tool_use_and_cache_usage(fake_provider: FakeProvider) -> None:
    response = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Listing."},
            {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {"command": "ls"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 7},
    }
    name = fake_provider.scenario(200, response)
    provider = AnthropicProvider(api_key="k", base_url=fake_provider.url(name))
    reply = await provider.complete(
        ModelRequest(
            model=ModelRef(name="claude-test", temperature=1.7, max_output_tokens=99),
            messages=conversation(1),
            tools=TOOLS,
        )
    )
    await provider.aclose()
    assert reply.text == "Listing."
    assert reply.tool_calls == [
        RawToolCall(id="toolu_1", name="shell", arguments='{"command": "ls"}')
    ]
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (120, 7)
    assert reply.stop_reason == "tool_use"
    (sent,) = fake_provider.requests(name)
    body = sent.json()
    assert sent.path.endswith("/v1/messages")
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("claude-test", 99, 1.0)
    assert body["system"] == "sys"
    assert [t["name"] for t in body["tools"]] == ["shell", "finish"]
