"""Conversions between our contracts and the providers' wire formats (pure functions)."""

from __future__ import annotations

import json

from activities.models.anthropic import wire_request
from activities.models.base import ToolSchema
from activities.models.constrained import (
    GRAMMAR_LENGTH_BOUND,
    escape_control_characters,
    grammar_schema,
    parse_tool_envelope,
    tool_call_schema,
    tools_prompt,
)
from activities.models.openai_compat import wire_messages
from activities.tools import tool_schemas
from agentrun.contracts import Message, RawToolCall

TOOLS = tool_schemas(["shell", "write_file", "finish"])


def history() -> list[Message]:
    call = RawToolCall(id="s0-c0", name="shell", arguments='{"command": "ls"}')
    return [
        Message(role="system", content="be brief"),
        Message(role="user", content="list files"),
        Message(role="assistant", content="looking", tool_calls=[call]),
        Message(role="tool", tool_call_id="s0-c0", name="shell", content="a.txt"),
    ]


# --- OpenAI-compatible ---------------------------------------------------------


def test_schema_has_one_branch_per_tool_pinning_its_name_to_its_own_arguments() -> None:
    schema = tool_call_schema(TOOLS)
    branches = schema["anyOf"]
    assert [b["properties"]["tool"]["const"] for b in branches] == ["shell", "write_file", "finish"]
    for branch, tool in zip(branches, TOOLS, strict=True):
        assert branch["required"] == ["tool", "arguments"]
        assert branch["additionalProperties"] is False
        args = branch["properties"]["arguments"]
        assert set(args["properties"]) == set(tool.parameters["properties"])
        assert args["required"] == tool.parameters.get("required", [])
        assert list(branch["properties"]) == ["tool", "arguments"]  # name first


def test_single_tool_schema_is_that_tools_branch_without_anyof() -> None:
    schema = tool_call_schema(tool_schemas(["finish"]))
    assert "anyOf" not in schema
    assert schema["properties"]["tool"]["const"] == "finish"


def test_grammar_schema_drops_huge_length_bounds_that_crash_llama_cpp() -> None:
    # write_file's content allows 4 MiB: as a grammar that is millions of nested rules.
    params = tool_schemas(["write_file"])[0].parameters
    assert params["properties"]["content"]["maxLength"] > GRAMMAR_LENGTH_BOUND
    safe = grammar_schema(params)
    assert "maxLength" not in safe["properties"]["content"]
    assert safe["properties"]["path"]["minLength"] == 1
    assert "description" not in json.dumps(safe)


def test_grammar_schema_inlines_local_refs_and_drops_patterns() -> None:
    params = {
        "type": "object",
        "properties": {
            "target": {"$ref": "#/$defs/Target"},
            "id": {"type": "string", "pattern": "a+"},
        },
        "$defs": {"Target": {"type": "object", "properties": {"host": {"type": "string"}}}},
    }
    safe = grammar_schema(params)
    assert safe["properties"]["target"] == {
        "type": "object",
        "properties": {"host": {"type": "string"}},
    }
    assert safe["properties"]["id"] == {"type": "string"}
    assert "$defs" not in safe


def test_grammar_schema_stops_recursive_refs() -> None:
    params = {
        "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
        "$ref": "#/$defs/Node",
    }
    assert json.dumps(grammar_schema(params))  # terminates


def test_constrained_messages_carry_the_tool_catalogue_and_replay_calls_as_json() -> None:
    wire = wire_messages(history(), TOOLS, constrained=True)
    assert [m["role"] for m in wire] == ["system", "user", "assistant", "user"]
    assert wire[0]["content"].startswith("be brief\n\n")
    for tool in TOOLS:
        assert f"- {tool.name}: {tool.description}" in wire[0]["content"]
    assert "command (string, required)" in wire[0]["content"]
    assert json.loads(wire[2]["content"]) == {"tool": "shell", "arguments": {"command": "ls"}}
    assert wire[3]["content"] == "Result of shell:\na.txt"
    assert all("tool_calls" not in m for m in wire)


def test_constrained_messages_without_system_prompt_get_one() -> None:
    wire = wire_messages([Message(role="user", content="hi")], TOOLS, constrained=True)
    assert wire[0]["role"] == "system" and "Tools:" in wire[0]["content"]
    assert tools_prompt(TOOLS) == wire[0]["content"]


def test_native_messages_use_tool_calls_and_tool_call_id() -> None:
    wire = wire_messages(history(), TOOLS, constrained=False)
    assert wire[2] == {
        "role": "assistant",
        "content": "looking",
        "tool_calls": [
            {
                "id": "s0-c0",
                "type": "function",
                "function": {"name": "shell", "arguments": '{"command": "ls"}'},
            }
        ],
    }
    assert wire[3] == {"role": "tool", "tool_call_id": "s0-c0", "content": "a.txt"}
    assert "Tools:" not in wire[0]["content"]


def test_envelope_keeps_the_raw_argument_text_exactly() -> None:
    content = '{ "tool" : "write_file", "arguments" : { "path": "a",  "content" : "x\\ny" } }'
    call = parse_tool_envelope(content, call_id="call_2_0")
    assert call == RawToolCall(
        id="call_2_0", name="write_file", arguments='{ "path": "a",  "content" : "x\\ny" }'
    )


def test_raw_newlines_inside_strings_are_escaped_so_arguments_parse() -> None:
    # llama-cpp-python's grammar lets a literal newline into a JSON string.
    content = '{"tool": "write_file",\n "arguments": {"path": "a", "content": "l1\nl2\t\x01"}}'
    call = parse_tool_envelope(content, call_id="c")
    assert call is not None
    assert call.arguments == '{"path": "a", "content": "l1\\nl2\\t\\u0001"}'
    assert json.loads(call.arguments)["content"] == "l1\nl2\t\x01"


def test_escaping_leaves_whitespace_between_tokens_and_escaped_quotes_alone() -> None:
    text = '{\n "a": "x\\"\ny",\n\t"b": 1}'
    assert escape_control_characters(text) == '{\n "a": "x\\"\\ny",\n\t"b": 1}'
    assert json.loads(escape_control_characters(text)) == {"a": 'x"\ny', "b": 1}


def test_envelope_in_any_key_order_is_read() -> None:
    call = parse_tool_envelope('{"arguments": {"answer": "ok"}, "tool": "finish"}', call_id="c")
    assert (
        call is not None
        and call.name == "finish"
        and json.loads(call.arguments) == {"answer": "ok"}
    )


def test_truncated_arguments_are_passed_through_for_the_validator() -> None:
    call = parse_tool_envelope('{"tool": "shell", "arguments": {"command": "ech', call_id="c")
    assert call is not None and call.name == "shell"
    assert call.arguments == '{"command": "ech'


def test_envelope_without_a_tool_name_is_not_a_call() -> None:
    assert parse_tool_envelope('{"arguments": {}}', call_id="c") is None
    assert parse_tool_envelope("I will write the file now.", call_id="c") is None
    assert parse_tool_envelope('{"tool": 3, "arguments": {}}', call_id="c") is None
    assert parse_tool_envelope('{"to', call_id="c") is None


def test_envelope_missing_arguments_yields_empty_malformed_arguments() -> None:
    call = parse_tool_envelope('{"tool": "finish"}', call_id="c")
    assert call is not None and call.arguments == ""


# --- Anthropic -----------------------------------------------------------------


def test_anthropic_system_is_top_level_and_calls_become_tool_use_blocks() -> None:
    body = wire_request(history(), TOOLS)
    assert body["system"] == "be brief"
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "looking"},
        {"type": "tool_use", "id": "s0-c0", "name": "shell", "input": {"command": "ls"}},
    ]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "s0-c0", "content": "a.txt"}
    ]
    assert body["tools"][0] == {
        "name": "shell",
        "description": TOOLS[0].description,
        "input_schema": TOOLS[0].parameters,
    }


def test_anthropic_results_of_one_turn_and_steering_share_one_user_message() -> None:
    calls = [RawToolCall(id=f"c{i}", name="shell", arguments="{}") for i in range(2)]
    messages = [
        Message(role="user", content="go"),
        Message(role="assistant", tool_calls=calls),
        Message(role="tool", tool_call_id="c0", content="one"),
        Message(role="tool", tool_call_id="c1", content="two"),
        Message(role="user", content="hurry"),
    ]
    body = wire_request(messages, [])
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in body["messages"][2]["content"]] == [
        "tool_result",
        "tool_result",
        "text",
    ]
    assert body["messages"][1]["content"][0]["type"] == "tool_use"  # no empty text block
    assert "system" not in body and "tools" not in body


def test_anthropic_wraps_malformed_past_arguments_instead_of_failing() -> None:
    messages = [
        Message(role="user", content="go"),
        Message(
            role="assistant", tool_calls=[RawToolCall(id="c0", name="shell", arguments='{"co')]
        ),
    ]
    block = wire_request(messages, [])["messages"][1]["content"][0]
    assert block["input"] == {"raw_arguments": '{"co'}


def test_tool_schema_round_trip_keeps_description() -> None:
    tool = ToolSchema(name="t", description="does t", parameters={"type": "object"})
    assert "- t: does t Arguments: none" in tools_prompt([tool])
