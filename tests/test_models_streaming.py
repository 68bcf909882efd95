"""Streamed model replies: live deltas, and the same ``ModelReply`` as without streaming.

Both HTTP providers talk to the fake server on 127.0.0.1 (tests/model_fixtures.py),
which answers with canned server-sent event streams shaped like OpenAI's and
Anthropic's. Each streamed reply is compared with the reply the provider builds
from the equivalent non-streamed response, and each failure with the
classification the non-streamed path gives. The real llama.cpp server streams in
test_models_embedded.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.models._http import parse_sse
from activities.models.anthropic import AnthropicProvider
from activities.models.base import (
    PERMANENT_TYPES,
    RETRYABLE_TYPES,
    ModelProvider,
    ModelReply,
    ModelRequest,
)
from activities.models.openai_compat import OpenAICompatProvider
from activities.models.openai_stream import TOKENS_PER_MESSAGE, estimated_prompt_tokens
from activities.tools import tool_schemas
from agentrun.contracts import Delta, Message, ModelRef, RawToolCall
from tests.model_fixtures import FakeProvider

API_KEY = "sk-test-Zq8vT3kPw9LmN2xR7sY4"
TOOLS = tool_schemas(["shell", "finish"])
SSE = {"content-type": "text/event-stream"}


# ---------------------------------------------------------------------------
# Wire helpers: what the two APIs stream
# ---------------------------------------------------------------------------


def openai_stream(*chunks: dict[str, Any], done: bool = True) -> str:
    lines = [f"data: {json.dumps(chunk)}\n\n" for chunk in chunks]
    return "".join(lines) + ("data: [DONE]\n\n" if done else "")


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta=None`` makes a chunk without choices."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "c", "object": "chat.completion.chunk", "choices": choices, **extra}


def call_fragment(index: int, arguments: str | None = None, **fields: Any) -> dict[str, Any]:
    """A ``delta.tool_calls`` entry: ``fields`` may hold ``id`` and ``name``."""
    function: dict[str, Any] = {}
    if "name" in fields:
        function["name"] = fields.pop("name")
    if arguments is not None:
        function["arguments"] = arguments
    return {"index": index, **fields, "function": function}


USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


def chat_completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "x",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": USAGE,
    }


def anthropic_stream(*events: tuple[str, dict[str, Any]], stop: bool = True) -> str:
    if stop:
        events = (*events, ("message_stop", {"type": "message_stop"}))
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


def event(kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
    return kind, {"type": kind, **data}


def message_start(**usage: int) -> tuple[str, dict[str, Any]]:
    message: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "stop_reason": None,
        "usage": usage,
    }
    return event("message_start", message=message)


def text_delta(index: int, text: str) -> tuple[str, dict[str, Any]]:
    return event("content_block_delta", index=index, delta={"type": "text_delta", "text": text})


def block_start(index: int, **block: Any) -> tuple[str, dict[str, Any]]:
    """A ``content_block_start``: text by default, ``tool_use`` when given an id and name."""
    if "name" in block:
        block = {"type": "tool_use", **block, "input": {}}
    else:
        block = {"type": "text", "text": "", **block}
    return event("content_block_start", index=index, content_block=block)


def json_delta(index: int, part: str) -> tuple[str, dict[str, Any]]:
    delta = {"type": "input_json_delta", "partial_json": part}
    return event("content_block_delta", index=index, delta=delta)


def conversation(turns: int = 0) -> list[Message]:
    messages = [Message(role="system", content="sys"), Message(role="user", content="goal")]
    for n in range(turns):
        call = RawToolCall(id=f"s{n}-c0", name="shell", arguments="{}")
        messages.append(Message(role="assistant", tool_calls=[call]))
        messages.append(Message(role="tool", tool_call_id=call.id, name="shell", content="ok"))
    return messages


def openai(fake: FakeProvider, name: str, timeout: float = 5.0, **options: Any) -> ModelProvider:
    return OpenAICompatProvider(
        base_url=fake.url(name, "/v1"),
        api_key=API_KEY,
        timeout=timeout,
        default_model="m",
        **options,
    )


def anthropic(fake: FakeProvider, name: str, timeout: float = 5.0) -> ModelProvider:
    return AnthropicProvider(
        base_url=fake.url(name), api_key=API_KEY, timeout=timeout, default_model="claude-x"
    )


MakeProvider = Callable[[FakeProvider, str], ModelProvider]
PROVIDERS = pytest.mark.parametrize("make", [openai, anthropic], ids=["openai", "anthropic"])


async def complete(
    provider: ModelProvider, *, stream: bool, turns: int = 0, tools: bool = True
) -> tuple[ModelReply, list[Delta]]:
    """One call; with ``stream`` the deltas it reported, in order."""
    deltas: list[Delta] = []
    request = ModelRequest(
        model=ModelRef(temperature=0.2, max_output_tokens=77),
        messages=conversation(turns),
        tools=TOOLS if tools else [],
        on_delta=deltas.append if stream else None,
    )
    try:
        reply = await provider.complete(request)
    finally:
        await provider.aclose()
    return reply, deltas


async def stream_vs_plain(
    fake: FakeProvider,
    make: Any,
    streamed_body: str,
    plain_body: dict[str, Any],
    **options: Any,
) -> tuple[ModelReply, list[Delta], dict[str, Any]]:
    """The streamed reply (checked equal to the plain one), its deltas and request body."""
    streamed = fake.scenario(200, streamed_body, headers=SSE)
    plain = fake.scenario(200, plain_body)
    reply, deltas = await complete(make(fake, streamed, **options), stream=True, turns=1)
    expected, none = await complete(make(fake, plain, **options), stream=False, turns=1)
    assert reply == expected
    assert none == []
    (sent,) = fake.requests(streamed)
    (sent_plain,) = fake.requests(plain)
    body, plain_request = sent.json(), sent_plain.json()
    assert body["stream"] is True and plain_request.get("stream", False) is False
    # Apart from asking for a stream, the request is the one a plain call sends.
    for key in ("stream", "stream_options"):
        body.pop(key, None)
        plain_request.pop(key, None)
    assert body == plain_request
    return reply, deltas, sent.json()


def texts(deltas: list[Delta], kind: str = "text", index: int = 0) -> str:
    return "".join(d.text for d in deltas if d.kind == kind and d.index == index)


# ---------------------------------------------------------------------------
# OpenAI-compatible
# ---------------------------------------------------------------------------


async def test_openai_text_stream_reports_each_fragment_and_equals_the_plain_reply(
    fake_provider: FakeProvider,
) -> None:
    streamed = openai_stream(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo, "}),
        chunk({"content": "world"}),
        chunk({}, "stop"),
        chunk(None, usage=USAGE),  # stream_options.include_usage: the last chunk
    )
    reply, deltas, body = await stream_vs_plain(
        fake_provider,
        openai,
        streamed,
        chat_completion({"content": "Hello, world"}),
        json_schema_tools=False,
    )
    assert deltas == [Delta("text", "Hel"), Delta("text", "lo, "), Delta("text", "world")]
    assert reply.text == "Hello, world" == texts(deltas)
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (11, 5)
    assert reply.stop_reason == "stop"
    assert body["stream_options"] == {"include_usage": True}


async def test_openai_native_tool_calls_assemble_from_fragments_across_chunks(
    fake_provider: FakeProvider,
) -> None:
    first_args, second_args = '{"command": "ls -la"}', '{"answer": "done"}'
    streamed = openai_stream(
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [call_fragment(0, "", id="call_abc", name="shell")]}),
        chunk({"tool_calls": [call_fragment(0, '{"comm')]}),
        chunk({"tool_calls": [call_fragment(0, 'and": "ls')]}),
        # The second call has no id (Ollama) and names itself with its first fragment.
        chunk({"tool_calls": [call_fragment(1, '{"ans', name="finish")]}),
        chunk({"tool_calls": [call_fragment(0, ' -la"}')]}),  # a late fragment of call 0
        chunk({"tool_calls": [call_fragment(1, 'wer": "done"}')]}),
        # Usage on the last choice chunk, as Ollama sends it.
        chunk({}, "tool_calls", usage=USAGE),
    )
    wire_calls = [
        {
            "id": "call_abc",
            "type": "function",
            "function": {"name": "shell", "arguments": first_args},
        },
        {"type": "function", "function": {"name": "finish", "arguments": second_args}},
    ]
    reply, deltas, body = await stream_vs_plain(
        fake_provider,
        openai,
        streamed,
        chat_completion({"content": None, "tool_calls": wire_calls}, "tool_calls"),
        json_schema_tools=False,
    )
    assert reply.tool_calls == [
        RawToolCall(id="call_abc", name="shell", arguments=first_args),
        RawToolCall(id="call_1_1", name="finish", arguments=second_args),
    ]
    assert reply.text is None
    assert reply.stop_reason == "tool_calls"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (11, 5)
    assert deltas == [
        Delta("tool_call", "", 0, "shell"),  # the name arrived before any argument text
        Delta("tool_call", '{"comm', 0),
        Delta("tool_call", 'and": "ls', 0),
        Delta("tool_call", '{"ans', 1, "finish"),
        Delta("tool_call", ' -la"}', 0),
        Delta("tool_call", 'wer": "done"}', 1),
    ]
    assert texts(deltas, "tool_call", 0) == first_args
    assert texts(deltas, "tool_call", 1) == second_args
    assert [t["function"]["name"] for t in body["tools"]] == ["shell", "finish"]


async def test_openai_whole_tool_calls_without_index_are_kept_apart(
    fake_provider: FakeProvider,
) -> None:
    # Some servers (Ollama) stream each call whole, without an index, arguments as an object.
    whole = [
        {"id": "call_a", "function": {"name": "shell", "arguments": {"command": "ls"}}},
        {"id": "call_b", "function": {"name": "finish", "arguments": {"answer": "é"}}},
    ]
    streamed = openai_stream(
        chunk({"role": "assistant", "tool_calls": [whole[0]]}),
        chunk({"tool_calls": [whole[1]]}, "tool_calls"),
        chunk(None, usage=USAGE),
    )
    wire_calls = [{"type": "function", **call} for call in whole]
    reply, deltas, _ = await stream_vs_plain(
        fake_provider,
        openai,
        streamed,
        chat_completion({"content": None, "tool_calls": wire_calls}, "tool_calls"),
        json_schema_tools=False,
    )
    assert [(c.id, c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("call_a", "shell", {"command": "ls"}),
        ("call_b", "finish", {"answer": "é"}),
    ]
    assert [(d.index, d.name, json.loads(d.text)) for d in deltas] == [
        (0, "shell", {"command": "ls"}),
        (1, "finish", {"answer": "é"}),
    ]


async def test_openai_constrained_mode_streams_the_envelope_as_text(
    fake_provider: FakeProvider,
) -> None:
    envelope = '{"tool": "shell", "arguments": {"command":  "ls -la"}}'
    pieces = ['{"tool": "sh', 'ell", "argu', 'ments": {"command":  "ls', ' -la"}}']
    assert "".join(pieces) == envelope
    streamed = openai_stream(
        chunk({"role": "assistant"}),
        *(chunk({"content": piece}) for piece in pieces),
        chunk({}, "stop"),
        chunk(None, usage=USAGE),
    )
    reply, deltas, body = await stream_vs_plain(
        fake_provider, openai, streamed, chat_completion({"content": envelope})
    )
    assert reply.tool_calls == [
        RawToolCall(id="call_1_0", name="shell", arguments='{"command":  "ls -la"}')
    ]
    assert reply.text is None
    assert [d.kind for d in deltas] == ["text"] * 4
    assert texts(deltas) == envelope
    assert "response_format" in body


async def test_openai_stream_without_usage_estimates_instead_of_reporting_zero(
    fake_provider: FakeProvider,
) -> None:
    # llama-cpp-python's server (the embedded model's) streams one chunk per token
    # and no usage at all, whatever stream_options says.
    streamed = openai_stream(
        chunk({"role": "assistant"}),
        chunk({"content": "a"}),
        chunk({"content": " b"}),
        chunk({"content": " c"}),
        chunk({}, "length"),
    )
    name = fake_provider.scenario(200, streamed, headers=SSE)
    reply, deltas = await complete(openai(fake_provider, name), stream=True, tools=False)
    assert reply.text == "a b c" == texts(deltas)
    assert reply.stop_reason == "length"
    assert reply.usage.output_tokens == 3  # one per chunk that carried output
    (sent,) = fake_provider.requests(name)
    prompt_chars = len(json.dumps(sent.json()["messages"]))
    assert 0 < reply.usage.input_tokens <= prompt_chars


async def test_openai_sse_comments_crlf_and_missing_space_are_read(
    fake_provider: FakeProvider,
) -> None:
    raw = (
        ": keep-alive\r\n\r\n"
        'data:{"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": null}]}\r\n'
        "\r\n"
        ": another comment\r\n"
        'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],\r\n'
        'data:  "usage": {"prompt_tokens": 2, "completion_tokens": 1}}\r\n'
        "\r\n"
        "data: [DONE]"  # and no blank line after the terminator
    )
    name = fake_provider.scenario(200, raw, headers=SSE)
    reply, deltas = await complete(openai(fake_provider, name), stream=True, tools=False)
    assert deltas == [Delta("text", "x")]
    assert (reply.text, reply.stop_reason) == ("x", "stop")
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (2, 1)


async def test_sse_parser_follows_the_event_stream_rules() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [
            "\ufeffevent: first",
            "data: one",
            "data:two",
            "id: 7",
            "retry: 100",
            "",
            "",  # a second blank line dispatches nothing
            "event: ignored-without-data",
            "",
            ": comment",
            "data",  # a field name without a colon: empty data
            "",
            "data: tail",
        ]:
            yield line

    events = [pair async for pair in parse_sse(lines())]
    assert events == [("first", "one\ntwo"), ("message", ""), ("message", "tail")]


# ---------------------------------------------------------------------------
# Anthropic
# ---------------------------------------------------------------------------


async def test_anthropic_text_and_tool_use_stream_equals_the_plain_reply(
    fake_provider: FakeProvider,
) -> None:
    streamed = anthropic_stream(
        message_start(input_tokens=20, cache_read_input_tokens=100, output_tokens=1),
        block_start(0),
        event("ping"),
        text_delta(0, "List"),
        text_delta(0, "ing é."),
        event("content_block_stop", index=0),
        block_start(1, id="toolu_1", name="shell"),
        json_delta(1, ""),
        json_delta(1, '{"command": "echo h\\u00e9'),
        json_delta(1, 'llo",  "timeout_seconds": 5}'),
        event("content_block_stop", index=1),
        block_start(2, id="toolu_2", name="finish"),
        event("content_block_stop", index=2),  # no arguments at all: {}
        event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 7}),
    )
    shell_input = {"command": "echo héllo", "timeout_seconds": 5}
    plain = {
        "content": [
            {"type": "text", "text": "Listing é."},
            {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": shell_input},
            {"type": "tool_use", "id": "toolu_2", "name": "finish", "input": {}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 7},
    }
    reply, deltas, body = await stream_vs_plain(fake_provider, anthropic, streamed, plain)
    assert reply.text == "Listing é." == texts(deltas)
    assert reply.tool_calls == [
        # Both paths give the canonical JSON of the parsed input (é unescaped).
        RawToolCall(
            id="toolu_1", name="shell", arguments='{"command": "echo héllo", "timeout_seconds": 5}'
        ),
        RawToolCall(id="toolu_2", name="finish", arguments="{}"),
    ]
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (120, 7)
    assert reply.stop_reason == "tool_use"
    # Tool-call deltas are indexed by tool call (0, 1), not by content block (1, 2).
    assert [d for d in deltas if d.kind == "tool_call"] == [
        Delta("tool_call", "", 0, "shell"),
        Delta("tool_call", '{"command": "echo h\\u00e9', 0),
        Delta("tool_call", 'llo",  "timeout_seconds": 5}', 0),
        Delta("tool_call", "", 1, "finish"),
    ]
    assert "stream_options" not in body


async def test_anthropic_unparseable_streamed_input_is_passed_on_raw(
    fake_provider: FakeProvider,
) -> None:
    streamed = anthropic_stream(
        message_start(input_tokens=3, output_tokens=1),
        block_start(0, id="toolu_1", name="shell"),
        json_delta(0, '{"command": "ls'),
        event("message_delta", delta={"stop_reason": "max_tokens"}, usage={"output_tokens": 4}),
    )
    name = fake_provider.scenario(200, streamed, headers=SSE)
    reply, _ = await complete(anthropic(fake_provider, name), stream=True)
    assert reply.tool_calls == [
        RawToolCall(id="toolu_1", name="shell", arguments='{"command": "ls')
    ]
    assert (reply.stop_reason, reply.usage.output_tokens) == ("max_tokens", 4)


# ---------------------------------------------------------------------------
# Failures: classified as without streaming, never quoting the key
# ---------------------------------------------------------------------------


async def failure(provider: ModelProvider, deltas: list[Delta] | None = None) -> ApplicationError:
    sink = deltas.append if deltas is not None else (lambda delta: None)
    request = ModelRequest(
        model=ModelRef(), messages=[Message(role="user", content="hi")], tools=[], on_delta=sink
    )
    try:
        with pytest.raises(ApplicationError) as info:
            await provider.complete(request)
    finally:
        await provider.aclose()
    error = info.value
    assert API_KEY not in str(error) and API_KEY not in repr(error.details)
    assert (error.type in RETRYABLE_TYPES) != error.non_retryable
    assert error.type in RETRYABLE_TYPES + PERMANENT_TYPES
    return error


async def plain_failure(provider: ModelProvider) -> ApplicationError:
    request = ModelRequest(
        model=ModelRef(), messages=[Message(role="user", content="hi")], tools=[]
    )
    try:
        with pytest.raises(ApplicationError) as info:
            await provider.complete(request)
    finally:
        await provider.aclose()
    return info.value


@PROVIDERS
@pytest.mark.parametrize(
    ("status", "headers", "kind"),
    [
        (429, {"Retry-After": "7"}, "ModelRateLimited"),
        (503, {}, "ModelUnavailable"),
        (529, {}, "ModelUnavailable"),
        (401, {}, "ModelAuthError"),
        (404, {}, "ModelNotFound"),
        (400, {}, "ModelBadRequest"),
    ],
)
async def test_error_status_before_the_stream_is_classified_as_without_streaming(
    make: MakeProvider, status: int, headers: dict[str, str], kind: str, fake_provider: FakeProvider
) -> None:
    body = {"error": {"message": f"no luck, key {API_KEY}", "type": "some_error"}}
    name = fake_provider.scenario(status, body, headers=headers)
    streamed = await failure(make(fake_provider, name))
    plain = await plain_failure(make(fake_provider, name))
    assert streamed.type == kind
    assert (streamed.message, streamed.type, streamed.non_retryable, streamed.details) == (
        plain.message,
        plain.type,
        plain.non_retryable,
        plain.details,
    )
    assert streamed.next_retry_delay == plain.next_retry_delay
    assert "no luck" in str(streamed) and "[redacted]" in str(streamed)
    if status == 429:
        assert streamed.next_retry_delay == timedelta(seconds=7)


@PROVIDERS
async def test_stream_cut_before_its_terminator_is_retryable(
    make: MakeProvider, fake_provider: FakeProvider
) -> None:
    if make is openai:
        body = openai_stream(chunk({"content": "partial"}), done=False)
    else:
        body = anthropic_stream(
            message_start(input_tokens=1),
            block_start(0),
            text_delta(0, "partial"),
            stop=False,
        )
    deltas: list[Delta] = []
    error = await failure(make(fake_provider, fake_provider.scenario(200, body)), deltas)
    assert error.type == "ModelUnavailable" and not error.non_retryable
    assert "terminator" in str(error)
    assert deltas == [Delta("text", "partial")]  # what came before the cut was reported


@PROVIDERS
async def test_unparseable_stream_chunk_is_retryable(
    make: MakeProvider, fake_provider: FakeProvider
) -> None:
    body = 'event: message_start\ndata: {"type": "message_st\n\ndata: [DONE]\n\n'
    error = await failure(make(fake_provider, fake_provider.scenario(200, body, headers=SSE)))
    assert error.type == "ModelUnavailable" and not error.non_retryable
    assert "not a JSON object" in str(error)


async def test_openai_chunk_of_the_wrong_shape_is_retryable(fake_provider: FakeProvider) -> None:
    body = openai_stream({"choices": [{"delta": {"content": 42}}]})
    error = await failure(openai(fake_provider, fake_provider.scenario(200, body)))
    assert error.type == "ModelUnavailable" and not error.non_retryable
    assert "unexpected shape" in str(error)


@pytest.mark.parametrize(
    ("error_type", "kind", "retryable"),
    [
        ("overloaded_error", "ModelUnavailable", True),
        ("api_error", "ModelUnavailable", True),
        ("rate_limit_error", "ModelRateLimited", True),
        ("invalid_request_error", "ModelBadRequest", False),
        ("authentication_error", "ModelAuthError", False),
        ("permission_error", "ModelAuthError", False),
        ("some_future_error", "ModelUnavailable", True),
    ],
)
async def test_anthropic_error_event_in_the_stream_is_classified_by_type(
    error_type: str, kind: str, retryable: bool, fake_provider: FakeProvider
) -> None:
    body = anthropic_stream(
        message_start(input_tokens=5, output_tokens=1),
        block_start(0),
        text_delta(0, "Hal"),
        event("error", error={"type": error_type, "message": f"trouble for {API_KEY}"}),
        stop=False,
    )
    deltas: list[Delta] = []
    error = await failure(anthropic(fake_provider, fake_provider.scenario(200, body)), deltas)
    assert (error.type, error.non_retryable) == (kind, not retryable)
    assert error_type in str(error) and "trouble for [redacted]" in str(error)
    assert "response stream" in str(error)
    assert deltas == [Delta("text", "Hal")]


async def test_openai_error_object_in_the_stream_is_classified(fake_provider: FakeProvider) -> None:
    # llama.cpp's server reports a failure mid-stream as a data line with the status in code.
    error_chunk = {"error": {"code": 500, "message": "context overflow", "type": "server_error"}}
    body = openai_stream(chunk({"content": "a"}), error_chunk, done=False)
    error = await failure(openai(fake_provider, fake_provider.scenario(200, body)))
    assert (error.type, error.non_retryable) == ("ModelUnavailable", False)
    assert "context overflow" in str(error)
    quota = {"error": {"message": f"key {API_KEY} revoked", "type": "invalid_request_error"}}
    error = await failure(openai(fake_provider, fake_provider.scenario(200, openai_stream(quota))))
    assert (error.type, error.non_retryable) == ("ModelBadRequest", True)
    assert "[redacted] revoked" in str(error)


async def test_deltas_arrive_live_and_a_stalled_stream_times_out(
    fake_provider: FakeProvider,
) -> None:
    first = openai_stream(chunk({"content": "early"}), done=False)
    rest = openai_stream(chunk({}, "stop"))
    name = fake_provider.scenario(200, headers=SSE, chunks=[first, rest], chunk_delay=30)
    deltas: list[Delta] = []
    error = await failure(openai(fake_provider, name, timeout=0.5), deltas)
    assert error.type == "ModelTimeout" and not error.non_retryable
    # The first fragment reached the sink while the server was still generating.
    assert deltas == [Delta("text", "early")]


async def test_connection_dropped_mid_stream_is_retryable_unavailable(
    fake_provider: FakeProvider,
) -> None:
    # The server promises more body than it sends, then closes the connection.
    first = openai_stream(chunk({"content": "early"}), done=False)
    headers = {**SSE, "content-length": str(len(first) + 100)}
    name = fake_provider.scenario(200, headers=headers, chunks=[first])
    error = await failure(openai(fake_provider, name))
    assert error.type == "ModelUnavailable" and not error.non_retryable
    assert "cannot reach the model server" in str(error)


async def test_openai_done_without_a_finish_reason_is_an_incomplete_retryable_stream(
    fake_provider: FakeProvider,
) -> None:
    # llama-cpp-python abandons a stream for a newer request this way: a role chunk,
    # then [DONE], no finish_reason and no content.
    body = openai_stream(chunk({"role": "assistant"}))
    error = await failure(openai(fake_provider, fake_provider.scenario(200, body, headers=SSE)))
    assert error.type == "ModelUnavailable" and not error.non_retryable
    assert "ended incomplete" in str(error) and "finish_reason" in str(error)


async def test_openai_connection_closed_without_done_is_an_incomplete_retryable_stream(
    fake_provider: FakeProvider,
) -> None:
    name = fake_provider.scenario(200, headers=SSE, chunks=[openai_stream(done=False)])
    error = await failure(openai(fake_provider, name))
    assert error.type == "ModelUnavailable" and not error.non_retryable
    assert "ended incomplete" in str(error)


async def test_openai_usage_is_the_servers_when_sent_and_marked_estimated_otherwise(
    fake_provider: FakeProvider,
) -> None:
    reported = openai_stream(chunk({"content": "a"}), chunk({}, "stop"), chunk(None, usage=USAGE))
    silent = openai_stream(chunk({"content": "a"}), chunk({}, "stop"))
    name = fake_provider.scenario(200, reported, headers=SSE)
    reply, _ = await complete(openai(fake_provider, name), stream=True, tools=False)
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (11, 5)
    assert not reply.usage.estimated
    name = fake_provider.scenario(200, silent, headers=SSE)
    reply, _ = await complete(openai(fake_provider, name), stream=True, tools=False)
    assert reply.usage.estimated and reply.usage.input_tokens > 0
    (sent,) = fake_provider.requests(name)
    assert sent.json()["stream_options"] == {"include_usage": True}


def test_prompt_estimate_counts_text_not_json_syntax() -> None:
    # The old estimate (the messages' JSON over four) came out 2.9 times the real count.
    body = {
        "messages": [
            {"role": "system", "content": "x" * 400},
            {"role": "user", "content": "y" * 400},
        ]
    }
    assert estimated_prompt_tokens(body) == 200 + 2 * TOKENS_PER_MESSAGE
