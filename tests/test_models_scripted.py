"""The scripted provider: the deterministic LLM double every workflow test relies on."""

from __future__ import annotations

import json
import time

import pytest
from temporalio.exceptions import ApplicationError

from activities.models.base import RETRYABLE_TYPES, ModelRequest
from activities.models.scripted import ScriptedProvider
from agentrun.contracts import Message, ModelRef, RawToolCall, ScriptedToolCall, ScriptedTurn

SCRIPT = [
    ScriptedTurn(
        content="first",
        tool_calls=[
            ScriptedToolCall(name="shell", arguments={"command": "ls"}),
            ScriptedToolCall(name="read_file", arguments={"path": "a.txt"}),
        ],
        input_tokens=3,
        output_tokens=4,
    ),
    ScriptedTurn(
        content="second", tool_calls=[ScriptedToolCall(name="shell", arguments='{"command": ')]
    ),
    ScriptedTurn(tool_calls=[ScriptedToolCall(name="finish", arguments={"answer": "done"})]),
]


def conversation(assistant_turns: int) -> list[Message]:
    """A conversation in which the model has already answered `assistant_turns` times."""
    messages = [Message(role="system", content="sys"), Message(role="user", content="goal")]
    for n in range(assistant_turns):
        call = RawToolCall(id=f"s{n}-c0", name="shell", arguments="{}")
        messages.append(Message(role="assistant", content=f"a{n}", tool_calls=[call]))
        messages.append(Message(role="tool", tool_call_id=call.id, name="shell", content="ok"))
        messages.append(Message(role="user", content="steer"))  # user messages do not count
    return messages


def request(
    assistant_turns: int, script: list[ScriptedTurn] | None = SCRIPT, attempt: int = 1
) -> ModelRequest:
    return ModelRequest(
        model=ModelRef(provider="scripted"),
        messages=conversation(assistant_turns),
        tools=[],
        script=script,
        attempt=attempt,
    )


async def test_turn_is_chosen_by_the_number_of_assistant_messages() -> None:
    provider = ScriptedProvider()
    texts = [(await provider.complete(request(n))).text for n in range(3)]
    assert texts == ["first", "second", None]


async def test_same_request_gives_the_same_reply_so_retries_replay_identically() -> None:
    provider = ScriptedProvider()
    first = await provider.complete(request(0))
    again = await ScriptedProvider().complete(request(0))
    assert first == again


async def test_dict_arguments_become_json_text_with_turn_based_ids_and_usage() -> None:
    reply = await ScriptedProvider().complete(request(0))
    assert [c.id for c in reply.tool_calls] == ["call_0_0", "call_0_1"]
    assert [c.name for c in reply.tool_calls] == ["shell", "read_file"]
    assert json.loads(reply.tool_calls[0].arguments) == {"command": "ls"}
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (3, 4)
    assert reply.stop_reason == "tool_calls"


async def test_string_arguments_pass_through_raw_to_simulate_malformed_model_output() -> None:
    reply = await ScriptedProvider().complete(request(1))
    assert reply.tool_calls[0].arguments == '{"command": '
    assert reply.tool_calls[0].id == "call_1_0"


async def test_fail_attempts_raise_retryable_unavailable_then_a_later_attempt_succeeds() -> None:
    script = [ScriptedTurn(content="ok", fail_attempts=2, fail_status=503)]
    provider = ScriptedProvider()
    for attempt in (1, 2):
        with pytest.raises(ApplicationError) as info:
            await provider.complete(request(0, script, attempt=attempt))
        assert info.value.type == "ModelUnavailable"
        assert info.value.type in RETRYABLE_TYPES
        assert not info.value.non_retryable
    reply = await provider.complete(request(0, script, attempt=3))
    assert reply.text == "ok"


async def test_fail_status_429_is_rate_limited_like_a_real_provider() -> None:
    script = [ScriptedTurn(fail_attempts=1, fail_status=429)]
    with pytest.raises(ApplicationError) as info:
        await ScriptedProvider().complete(request(0, script))
    assert info.value.type == "ModelRateLimited"
    assert not info.value.non_retryable


async def test_fail_status_401_is_a_non_retryable_auth_error() -> None:
    script = [ScriptedTurn(content="never", fail_attempts=1, fail_status=401)]
    with pytest.raises(ApplicationError) as info:
        await ScriptedProvider().complete(request(0, script))
    assert info.value.type == "ModelAuthError"
    assert info.value.non_retryable


async def test_running_past_the_script_is_a_non_retryable_config_error_naming_the_turn() -> None:
    with pytest.raises(ApplicationError) as info:
        await ScriptedProvider().complete(request(3))
    assert info.value.type == "ModelConfigError"
    assert info.value.non_retryable
    assert "script exhausted at turn 3" in str(info.value)


async def test_missing_script_is_a_non_retryable_config_error() -> None:
    with pytest.raises(ApplicationError) as info:
        await ScriptedProvider().complete(request(0, script=None))
    assert info.value.type == "ModelConfigError"
    assert info.value.non_retryable


async def test_delay_seconds_waits_before_answering() -> None:
    script = [ScriptedTurn(content="late", delay_seconds=0.3)]
    started = time.monotonic()
    reply = await ScriptedProvider().complete(request(0, script))
    assert reply.text == "late"
    assert time.monotonic() - started >= 0.3


async def test_turn_without_tool_calls_reports_stop() -> None:
    reply = await ScriptedProvider().complete(request(0, [ScriptedTurn(content="just text")]))
    assert reply.tool_calls == []
    assert reply.stop_reason == "stop"
