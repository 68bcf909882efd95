"""Granted values never leave an activity: tool results, artifacts, replies, errors, logs.

Real components throughout: the embedded secret store (AES-GCM on SQLite) holds the
value, the Docker sandbox runs the commands, Temporal runs the workflow, and the
scripted model is the only double. The secret reaches the sandbox the one way a
run may give it to a command (`RunSpec.exec_env` + the shell call's `env_secrets`),
and every test then looks for the value, its base64 (each alignment) and its hex
in everything that left.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.egress_broker import EgressBroker
from activities.model_activities import ModelActivities
from activities.models.scripted import ScriptedProvider
from activities.secret_values import SecretValues, redacted_errors
from activities.tool_activities import ToolActivities
from agentrun.config import Settings
from agentrun.contracts import (
    DispatchToolInput,
    Message,
    ModelCallInput,
    ModelRef,
    SandboxPolicy,
    ScriptedToolCall,
    ScriptedTurn,
    StoreArtifactInput,
    ToolCall,
    ToolResult,
    canonical_json,
)
from agentrun.redaction import Redactor, install_log_redaction, remove_log_redaction
from sandbox.base import RunRef
from sandbox.docker_sandbox import DockerSandbox
from secretstore import SecretStore, SecretStoreUnavailable, open_secret_store
from store.artifacts import ArtifactStore, LocalArtifactStore, get_bytes, get_model
from store.conversation import ConversationStore
from store.delta_log import DeltaLog
from tests.sandbox_fixtures import docker_sandbox, run_ref, sandbox_config, sandbox_image
from tests.workflow_harness import (
    TENANT,
    all_events,
    call,
    outcome,
    running_worker,
    scripted_spec,
    start_run,
    turn,
)

__all__ = ["docker_sandbox", "run_ref", "sandbox_config", "sandbox_image"]

SECRET = "API_TOKEN"
VALUE = "tok-" + uuid.uuid4().hex
"""Random per session: finding it (or an encoding of it) anywhere is a leak."""
MARK = f"[REDACTED:{SECRET}]"


def forms(value: str = VALUE) -> list[str]:
    """The value and the encodings a leak would take: base64 at each alignment (the
    characters that depend on the value only), hex lower and upper."""
    raw = value.encode()
    out = [value, raw.hex(), raw.hex().upper()]
    for pad in (b"", b"x", b"xy"):
        encoded = base64.b64encode(pad + raw).decode()
        start = -(-8 * len(pad) // 6)
        out.append(encoded[start + 1 : start + len(raw) * 4 // 3 - 2])
    return out


def leaks(text: str | bytes) -> list[str]:
    data = text.decode(errors="replace") if isinstance(text, bytes) else text
    return [f for f in forms() if f in data]


# Prints the value plainly, to stderr, base64-encoded at all three alignments, hex
# (an `od -An -tx1` dump, and upper case), and writes it to a file the run's artifacts
# collect.
LEAKY = (
    'printf "plain %s\\n" "$TOKEN"; echo "err $TOKEN" >&2; '
    'printf %s "$TOKEN" | base64; printf "x%s" "$TOKEN" | base64; '
    'printf "xy%s" "$TOKEN" | base64; '
    'printf %s "$TOKEN" | od -An -tx1; '
    "python3 -c 'import os; print(os.environ[\"TOKEN\"].encode().hex().upper())'; "
    'mkdir -p out && printf "in a file: %s\\n" "$TOKEN" > out/leak.txt'
)


@pytest.fixture
def secret_store(tmp_path: Path) -> Iterator[SecretStore]:
    store = open_secret_store(Settings(state_dir=tmp_path / "secrets"))
    try:
        yield store
    finally:
        store.close()


def values_of(store: SecretStore) -> SecretValues:
    return SecretValues(lambda tenant, name: store.get(tenant, name).reveal())


# ------------------------------------------------------------------ SecretValues


def test_redactor_covers_the_granted_names_values_only(secret_store: SecretStore) -> None:
    secret_store.put("acme", SECRET, VALUE)
    secret_store.put("acme", "OTHER", "other-" + VALUE[::-1])
    redactor = values_of(secret_store).redactor("acme", [SECRET])
    assert redactor.names == {SECRET}
    assert redactor.redact(f"a {VALUE} b") == f"a {MARK} b"


def test_a_rotated_value_stays_redacted_after_the_store_changes(secret_store: SecretStore) -> None:
    secret_store.put("acme", SECRET, VALUE)
    now = [0.0]
    values = SecretValues(
        lambda tenant, name: secret_store.get(tenant, name).reveal(),
        ttl_seconds=10,
        clock=lambda: now[0],
    )
    assert values.value("acme", SECRET) == VALUE
    secret_store.put("acme", SECRET, "rotated-" + VALUE)
    now[0] = 11.0  # past the TTL: looked up again
    redactor = values.redactor("acme", [SECRET])
    assert redactor.redact(f"{VALUE} rotated-{VALUE}") == f"{MARK} {MARK}"


def test_a_deleted_secret_redacts_what_was_handed_out_and_nothing_new(
    secret_store: SecretStore,
) -> None:
    secret_store.put("acme", SECRET, VALUE)
    now = [0.0]
    values = SecretValues(
        lambda tenant, name: secret_store.get(tenant, name).reveal(), clock=lambda: now[0]
    )
    values.value("acme", SECRET)
    secret_store.delete("acme", SECRET)
    now[0] = 100.0
    assert values.redactor("acme", [SECRET]).redact(VALUE) == MARK
    assert not values.redactor("acme", ["NEVER_STORED"])


def test_an_unreachable_store_fails_the_activity_before_anything_runs_and_retries() -> None:
    """Vault on a port nobody listens on (127.0.0.1): the store cannot answer."""
    settings = Settings(
        secret_backend="vault", vault_addr="http://127.0.0.1:9", vault_token="t-" + VALUE
    )
    store = open_secret_store(settings)
    values = SecretValues(lambda tenant, name: store.get(tenant, name).reveal())
    with pytest.raises(ApplicationError) as info:
        values.redactor("acme", [SECRET])
    assert info.value.type == "SecretUnavailable" and not info.value.non_retryable
    with pytest.raises(SecretStoreUnavailable):
        values.value("acme", SECRET)


def test_without_a_store_a_granted_secret_is_a_permanent_error() -> None:
    with pytest.raises(ApplicationError) as info:
        SecretValues(None).redactor("acme", [SECRET])
    assert info.value.type == "SecretStoreMissing" and info.value.non_retryable
    assert not SecretValues(None).redactor("acme", [])


def test_the_log_redactor_covers_every_value_handed_out(secret_store: SecretStore) -> None:
    secret_store.put("acme", SECRET, VALUE)
    values = values_of(secret_store)
    logger = logging.getLogger("tests.redaction.worker")
    logger.propagate = False
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logger.addHandler(handler)
    redacting = install_log_redaction(values.active_redactor, logger)
    try:
        logger.warning("before: %s", VALUE)  # not handed out yet: nothing to redact
        values.value("acme", SECRET)
        logger.warning("after: %s", base64.b64encode(VALUE.encode()).decode())
    finally:
        remove_log_redaction(redacting, logger)
        logger.removeHandler(handler)
    assert buffer.getvalue() == f"before: {VALUE}\nafter: {MARK}\n"


# ------------------------------------------------------------------ errors


def test_an_error_holding_a_value_leaves_redacted_with_its_type_and_posture() -> None:
    redactor = Redactor({SECRET: VALUE})
    with pytest.raises(ApplicationError) as info, redacted_errors(redactor):
        try:
            raise KeyError(f"lookup of {VALUE} failed")
        except KeyError as exc:
            raise ApplicationError(
                f"tool failed: {VALUE.encode().hex()}", type="ToolBroke", non_retryable=True
            ) from exc
    error = info.value
    assert error.type == "ToolBroke" and error.non_retryable
    assert error.__cause__ is None and not leaks(str(error))
    assert str(error).count(MARK) == 2  # the message, and the cause's text


def test_a_plain_exception_holding_a_value_keeps_its_type_name_and_stays_retryable() -> None:
    with pytest.raises(ApplicationError) as info, redacted_errors(Redactor({SECRET: VALUE})):
        raise RuntimeError(f"boom {VALUE}")
    assert info.value.type == "RuntimeError" and not info.value.non_retryable
    assert str(info.value) == f"RuntimeError: boom {MARK}"


def test_an_error_without_a_value_passes_unchanged() -> None:
    original = ValueError("nothing secret")
    with pytest.raises(ValueError) as info, redacted_errors(Redactor({SECRET: VALUE})):
        raise original
    assert info.value is original


# ------------------------------------------------------------------ the model activity


async def test_a_reply_holding_the_value_is_redacted_in_text_arguments_and_deltas(
    secret_store: SecretStore, tmp_path: Path
) -> None:
    secret_store.put("acme", SECRET, VALUE)
    stores = LocalArtifactStore(tmp_path / "artifacts")
    store = stores.for_tenant("acme")
    deltas = DeltaLog(tmp_path / "deltas")
    conversations = ConversationStore(stores)
    head = conversations.append(
        "acme", None, [conversations.put_message("acme", Message(role="user", content="go"))]
    )
    b64 = base64.b64encode(VALUE.encode()).decode()
    script = [
        ScriptedTurn(
            content=f"The key is {VALUE} or {b64} in base64.",
            tool_calls=[ScriptedToolCall(name="shell", arguments={"command": f"echo {VALUE}"})],
        )
    ]
    models = ModelActivities(ScriptedProvider(), stores, deltas, secrets=values_of(secret_store))
    inp = ModelCallInput(
        run_id="r-" + uuid.uuid4().hex[:8],
        tenant_id="acme",
        step=1,
        model=ModelRef(provider="scripted"),
        script_digest=store.put(canonical_json([t.model_dump(mode="json") for t in script])),
        conversation_head=head,
        tools=["shell", "finish"],
        secrets=[SECRET],
    )
    out = await ActivityEnvironment().run(models.call_model, inp)
    assert out.text_preview == f"The key is {MARK} or {MARK} in base64."
    assert out.tool_calls[0].preview == json.dumps({"command": f"echo {MARK}"})
    arguments = get_bytes(store, out.tool_calls[0].arguments_digest)
    assert json.loads(arguments) == {"command": f"echo {MARK}"}
    stored = conversations.load("acme", out.conversation_head)[-1]
    assert not leaks(stored.model_dump_json()) and MARK in (stored.content or "")
    streamed = deltas.path("acme", inp.run_id, 1).read_text()
    text = "".join(json.loads(line)["text"] for line in streamed.splitlines())
    assert not leaks(streamed) and text.count(MARK) >= 2


# ------------------------------------------------------------------ the tool activity


def _dispatch(
    tools: ToolActivities,
    store: ArtifactStore,
    run: RunRef,
    command: str,
    *,
    max_output_bytes: int = 8192,
) -> ToolResult:
    raw = json.dumps({"command": command, "env_secrets": ["TOKEN"]}).encode()
    inp = DispatchToolInput(
        run_id=run.run_id,
        tenant_id=run.tenant_id,
        call=ToolCall(
            id=f"c-{uuid.uuid4().hex[:6]}", name="shell", arguments_digest=store.put(raw)
        ),
        sandbox=SandboxPolicy(workspace_mb=8),
        secrets=[SECRET],
        exec_env={"TOKEN": SECRET},
        timeout_seconds=60,
        max_output_bytes=max_output_bytes,
    )
    result: ToolResult = ActivityEnvironment().run(tools.dispatch_tool, inp)
    return result


@pytest.fixture
def tool_activities(
    docker_sandbox: DockerSandbox, secret_store: SecretStore, run_ref: RunRef, tmp_path: Path
) -> tuple[ToolActivities, ArtifactStore]:
    """The activities, and the run's tenant's view of their store."""
    secret_store.put(run_ref.tenant_id, SECRET, VALUE)
    values = values_of(secret_store)
    store = LocalArtifactStore(tmp_path / "artifacts")
    tools = ToolActivities(docker_sandbox, store, egress=EgressBroker(values.value), secrets=values)
    return tools, store.for_tenant(run_ref.tenant_id)


def test_a_tool_printing_the_value_in_every_encoding_returns_only_markers(
    tool_activities: tuple[ToolActivities, ArtifactStore], run_ref: RunRef
) -> None:
    tools, store = tool_activities
    result = _dispatch(tools, store, run_ref, LEAKY)
    assert result.ok, result.summary
    assert result.message_digest is not None
    view = get_model(store, result.message_digest, Message).content or ""
    assert not leaks(view) and not leaks(result.model_dump_json())
    # plain, stderr, three base64 lines, hex, HEX: each one replaced, not dropped
    assert view.count(MARK) == 7, view
    assert "plain " + MARK in view and "err " + MARK in view
    collected = ActivityEnvironment().run(
        tools.store_artifact,
        StoreArtifactInput(run_id=run_ref.run_id, tenant_id=run_ref.tenant_id, secrets=[SECRET]),
    )
    [leak] = [a for a in collected.artifacts if a.name == "out/leak.txt"]
    body = get_bytes(store, leak.digest)
    assert body == f"in a file: {MARK}\n".encode() and leak.size == len(body)


def test_output_stored_whole_as_an_artifact_is_redacted_too(
    tool_activities: tuple[ToolActivities, ArtifactStore], run_ref: RunRef
) -> None:
    tools, store = tool_activities
    command = 'for i in $(seq 200); do printf "%s line %s\\n" "$TOKEN" "$i"; done'
    result = _dispatch(tools, store, run_ref, command, max_output_bytes=1024)
    assert result.output_artifact is not None
    body = get_bytes(store, result.output_artifact.digest)
    assert not leaks(body) and body.count(MARK.encode()) == 200
    assert not leaks(result.model_dump_json())


def test_a_failing_tool_with_the_value_in_its_error_is_redacted(
    tool_activities: tuple[ToolActivities, ArtifactStore], run_ref: RunRef
) -> None:
    tools, store = tool_activities
    result = _dispatch(tools, store, run_ref, 'echo "fatal: bad token $TOKEN" >&2; exit 3')
    assert not result.ok and result.exit_code == 3
    assert f"fatal: bad token {MARK}" in result.summary and not leaks(result.summary)


# ------------------------------------------------------------------ a whole run


async def test_a_run_whose_tool_leaks_the_value_leaves_markers_only(
    client: Client, tmp_path: Path
) -> None:
    """Real Temporal, Docker and store: results, events, artifacts, the final answer
    and the workflow's history hold `[REDACTED:API_TOKEN]`, never the value."""
    queue = f"redaction-{uuid.uuid4().hex[:8]}"
    async with running_worker(client, queue, tmp_path) as settings:
        store = open_secret_store(settings)
        try:
            store.put(TENANT, SECRET, VALUE)
        finally:
            store.close()
        spec = scripted_spec(
            turn(call("shell", command=LEAKY, env_secrets=["TOKEN"])),
            turn(call("shell", command="cat out/leak.txt")),
            turn(call("finish", answer=f"the token was {VALUE}")),
            secrets=[SECRET],
            exec_env={"TOKEN": SECRET},
        )
        handle = await start_run(client, queue, spec)
        result = await outcome(handle)
        events = await all_events(handle, settings.artifacts_path)
        history = (await handle.fetch_history()).to_json()
    assert result.final_answer == f"the token was {MARK}"
    assert not leaks(result.model_dump_json())
    dumped = json.dumps([e.model_dump(mode="json") for e in events])
    assert not leaks(dumped) and dumped.count(MARK) >= 8
    artifacts = LocalArtifactStore(settings.artifacts_path).for_tenant(TENANT)
    names = {a.name for a in result.artifacts}
    assert {"out/leak.txt", "transcript.json"} <= names
    for ref in result.artifacts:
        assert not leaks(get_bytes(artifacts, ref.digest)), ref.name
    # The client's own script (the double's "knowledge" of the value, for the final
    # answer) is the workflow's input and `init_run`'s: there, and nowhere else.
    scripted: list[dict[str, object]] = []
    rest: list[dict[str, object]] = []
    for event in json.loads(history)["events"]:
        scheduled = event.get("activityTaskScheduledEventAttributes", {})
        started = "workflowExecutionStartedEventAttributes" in event
        is_init = scheduled.get("activityType", {}).get("name") == "init_run"
        (scripted if started or is_init else rest).append(event)
    assert leaks(json.dumps(scripted)), "the search would find the value in history"
    assert not leaks(json.dumps(rest))
