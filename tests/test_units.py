"""Pure unit tests: settings validation, the tool registry, contracts, the blob store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from activities.tools import (
    ShellArgs,
    ToolArgumentError,
    UnknownTool,
    parse_arguments,
    tool_schemas,
)
from agentrun.config import ConfigError, load_settings
from agentrun.contracts import (
    ApprovalPolicy,
    Delta,
    Message,
    RunSpec,
    ToolName,
    run_ref_from_workflow_id,
    workflow_id_for,
)
from agentrun.sse_wire import SseDecoder, SseMessage
from api.sse import Cursor
from store.artifacts import BlobNotFound, LocalArtifactStore, get_bytes
from store.conversation import ConversationStore
from store.delta_log import DeltaLog
from tests.conftest import ROOT


def test_settings_reject_a_bad_temporal_address_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTRUN_TEMPORAL_ADDRESS", "no-port-here")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "AGENTRUN_TEMPORAL_ADDRESS=no-port-here" in str(err.value)
    assert "host:port" in str(err.value)


def test_settings_hide_secret_values_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRUN_MAX_CONCURRENT_ACTIVITIES", "zero")
    monkeypatch.setenv("AGENTRUN_OPENAI_API_KEY", "sk-very-secret")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "AGENTRUN_MAX_CONCURRENT_ACTIVITIES" in str(err.value)
    assert "sk-very-secret" not in str(err.value)


def test_worker_exits_with_a_clear_message_on_invalid_configuration() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        env={"AGENTRUN_TASK_QUEUE": "q", "AGENTRUN_MAX_CONCURRENT_ACTIVITIES": "-1", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "AGENTRUN_MAX_CONCURRENT_ACTIVITIES=-1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tool_schemas_are_json_schema_objects_for_the_requested_tools() -> None:
    schemas = {s.name: s for s in tool_schemas(["shell", "finish", "no_such_tool"])}
    assert set(schemas) == {"shell", "finish"}
    shell = schemas["shell"].parameters
    assert shell["type"] == "object"
    assert shell["required"] == ["command"]
    assert shell["additionalProperties"] is False
    json.dumps(shell)  # serialisable as-is for providers


@pytest.mark.parametrize(
    ("name", "raw", "expected", "error"),
    [
        ("shell", "{", "not valid JSON", ToolArgumentError),
        ("shell", "[1, 2]", "must be a JSON object", ToolArgumentError),
        ("shell", '{"command": ""}', "command", ToolArgumentError),
        ("shell", '{"command": "ls", "sudo": true}', "sudo", ToolArgumentError),
        ("write_file", '{"path": "a"}', "content", ToolArgumentError),
        ("rm_rf", "{}", "unknown tool", UnknownTool),
    ],
)
def test_bad_tool_arguments_raise_a_message_for_the_model_typed_by_what_is_wrong(
    name: str, raw: str, expected: str, error: type[ToolArgumentError]
) -> None:
    with pytest.raises(ToolArgumentError) as err:
        parse_arguments(name, raw)
    assert expected in str(err.value)
    assert type(err.value) is error  # an unknown tool is told apart by type, not by text


def test_valid_tool_arguments_parse_into_typed_models() -> None:
    args = parse_arguments("shell", '{"command": "echo hi", "timeout_seconds": 5}')
    assert isinstance(args, ShellArgs)
    assert args.command == "echo hi"
    assert args.timeout_seconds == 5


def test_run_spec_always_offers_finish_and_rejects_unknown_fields() -> None:
    spec = RunSpec(goal="g", tools=[ToolName.SHELL])
    assert spec.tools == [ToolName.SHELL, ToolName.FINISH]
    with pytest.raises(ValidationError):
        RunSpec.model_validate({"goal": "g", "unexpected": 1})
    with pytest.raises(ValidationError):
        RunSpec(goal="g", labels={"bad key": "v"})


def test_approval_policy_never_gates_finish() -> None:
    policy = ApprovalPolicy(mode="always")
    assert policy.requires_approval("shell")
    assert not policy.requires_approval("finish")
    assert ApprovalPolicy(mode="tools", tools=["shell"]).requires_approval("shell")
    assert not ApprovalPolicy(mode="tools", tools=["shell"]).requires_approval("read_file")


def test_workflow_ids_round_trip_tenant_and_run() -> None:
    wid = workflow_id_for("acme", "r1")
    assert run_ref_from_workflow_id(wid) == ("acme", "r1")
    with pytest.raises(ValueError):
        run_ref_from_workflow_id("other/acme/r1")


def test_blob_store_is_content_addressed_and_rejects_bad_digests(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path).for_tenant("acme")
    d1 = store.put(b"hello")
    assert store.put(b"hello") == d1
    assert get_bytes(store, d1) == b"hello"
    assert store.size(d1) == 5
    assert not list(tmp_path.rglob(".tmp-*"))
    with pytest.raises(BlobNotFound):
        store.open("../../etc/passwd")
    with pytest.raises(BlobNotFound):
        store.open("0" * 64)


def test_conversation_chain_stores_each_message_once_and_loads_in_order(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    conv = ConversationStore(store)
    system = conv.put_message("acme", Message(role="system", content="s"))
    head = conv.append("acme", None, [system])
    for i in range(5):
        msg = conv.put_message("acme", Message(role="user", content=f"m{i}"))
        head = conv.append("acme", head, [msg, system])  # the same message referenced again
    cold = ConversationStore(store).load("acme", head)  # fresh cache: walks the chain
    assert [m.content for m in cold] == ["s"] + [x for i in range(5) for x in (f"m{i}", "s")]
    assert conv.load("acme", head) == cold
    blobs = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(blobs) == 1 + 5 + 6  # 6 messages, 6 nodes
    assert all(p.is_relative_to(tmp_path / "tenants" / "acme") for p in blobs)


def test_the_conversation_cache_never_answers_for_another_tenant(tmp_path: Path) -> None:
    """The cache is keyed by (tenant, head): a head another tenant loaded (and so
    cached) is still read from the asking tenant's own prefix, where it is not."""
    conv = ConversationStore(LocalArtifactStore(tmp_path, legacy_reads=False))
    head = conv.append("acme", None, [conv.put_message("acme", Message(role="user", content="a"))])
    assert [m.content for m in conv.load("acme", head)] == ["a"]
    with pytest.raises(BlobNotFound):
        conv.load("globex", head)


def test_constrained_decoding_schema_keeps_the_relative_path_pattern_only() -> None:
    from activities.models.constrained import grammar_schema
    from activities.tools import RELATIVE_PATH_PATTERN

    schema = tool_schemas(["write_file"])[0]
    assert schema.grammar_safe_patterns == {RELATIVE_PATH_PATTERN}
    params = grammar_schema(schema.parameters, safe_patterns=schema.grammar_safe_patterns)
    assert params["properties"]["path"]["pattern"] == RELATIVE_PATH_PATTERN
    assert "pattern" not in grammar_schema(schema.parameters)["properties"]["path"]
    assert "maxLength" not in params["properties"]["content"]  # 4 MiB would blow up the grammar
    assert "pattern" not in grammar_schema({"type": "string", "pattern": "^(a|b)+$"})
    assert parse_arguments("read_file", '{"path": "my notes.txt"}')  # validation stays lenient


def test_the_envelope_schema_takes_each_tools_safe_patterns_from_its_tool_schema() -> None:
    from activities.models.constrained import tool_call_schema
    from activities.tools import RELATIVE_PATH_PATTERN

    envelope = tool_call_schema(tool_schemas(["read_file"]))
    path = envelope["properties"]["arguments"]["properties"]["path"]
    assert path["pattern"] == RELATIVE_PATH_PATTERN


def test_no_provider_imports_the_tool_registry() -> None:
    """Tools depend on the provider interface (`ToolSchema`), never the other way."""
    import ast

    offenders = []
    for path in sorted((ROOT / "activities" / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(n == "activities.tools" or n.startswith("activities.tools.") for n in names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


# ------------------------------------------------------------------ delta log


async def test_delta_writer_flushes_on_exit_and_the_tail_returns_each_delta_once(
    tmp_path: Path,
) -> None:
    log = DeltaLog(tmp_path)
    async with log.writer("t1", "run-1", 3, attempt=1) as sink:
        sink(Delta("text", "Hel"))
        sink(Delta("text", ""))  # nothing to show: not logged
        sink(Delta("tool_call", "", index=0, name="shell"))  # a name alone is news
    tail = log.tail("t1", "run-1", 3)
    first = await tail.poll()
    assert [(d.n, d.kind, d.text, d.name) for d in first] == [
        (1, "text", "Hel", None),
        (2, "tool_call", "", "shell"),
    ]
    assert await tail.poll() == []
    async with log.writer("t1", "run-1", 3, attempt=2) as sink:
        sink(Delta("text", "lo"))
    assert [(d.n, d.attempt, d.text) for d in await tail.poll()] == [(3, 2, "lo")]
    # A reader resuming after delta 2 starts at 3; other steps have their own logs.
    assert [d.n for d in await log.tail("t1", "run-1", 3, after_n=2).poll()] == [3]
    assert await log.tail("t1", "run-1", 4).poll() == []


def test_delta_tail_waits_for_whole_lines_and_skips_damaged_ones(tmp_path: Path) -> None:
    log = DeltaLog(tmp_path)
    path = log.path("t1", "run-1", 1)
    path.parent.mkdir(parents=True)
    good = json.dumps(
        {"step": 1, "attempt": 1, "kind": "text", "text": "a", "at": "2026-01-01T00:00:00Z"}
    )
    path.write_text(good + "\n{not json}\n" + good[:10])  # a batch caught half-written
    tail = log.tail("t1", "run-1", 1)
    assert [d.n for d in tail.poll_now()] == [1]  # line 2 is damaged but keeps its number
    with path.open("a") as file:
        file.write(good[10:] + "\n")
    assert [d.n for d in tail.poll_now()] == [3]


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "", ".hidden", "x" * 200])
def test_delta_log_refuses_unsafe_path_parts(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        DeltaLog(tmp_path).path(name, "run-1", 1)
    with pytest.raises(ValueError, match="unsafe"):
        DeltaLog(tmp_path).path("t1", name, 1)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("7", (7, None, 0)), (" 12.3.40 ", (12, 3, 40)), ("0", (0, None, 0))],
)
def test_sse_cursor_round_trips(text: str, parsed: tuple[int, int | None, int]) -> None:
    cursor = Cursor.parse(text)
    assert (cursor.seq, cursor.step, cursor.n) == parsed
    assert Cursor.parse(str(cursor)) == cursor


@pytest.mark.parametrize("text", ["", "x", "1.2", "1000.2000.3000.4000", "-1", "1.2.x", "1" * 16])
def test_sse_cursor_rejects_malformed_ids(text: str) -> None:
    with pytest.raises(ValueError):
        Cursor.parse(text)


def test_sse_decoder_keeps_each_id_with_its_event_and_holds_a_pending_one() -> None:
    decoder = SseDecoder()
    lines = ["\ufeffid: 4.1.2", "event: model.delta", "data: a", "data: b", "", ": ping", ""]
    lines += ["data: no id", "", "data: pending"]
    messages = [m for m in map(decoder.line, lines) if m is not None]
    assert messages == [
        SseMessage("model.delta", "a\nb", "4.1.2"),
        SseMessage("message", "no id", None),
    ]
    assert decoder.end() == SseMessage("message", "pending", None)
    assert decoder.end() is None
