"""Temporal history is not a leak path: payloads are ciphertext, readable through the codec.

Unit tests of `agentrun.payload_codec` (the key ring, rotation, the key file), then
runs on a real Temporal dev server through production's clients
(`agentrun.temporal.connect`, which encrypts), a real worker and the real API:
the history fetched with the `temporal` CLI without the codec holds no plaintext;
through the API's codec server (`--codec-endpoint`) it reads; a run written under
an old key still reads after rotation; an unknown key id fails naming the key;
recorded histories still replay with the encrypting converter.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from accounts.roles import Role
from agentrun.config import Settings
from agentrun.contracts import RunResult, RunStatus
from agentrun.payload_codec import (
    ENCRYPTED_ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    KeyFileError,
    KeyRing,
    PayloadDecryptError,
    encrypting_converter,
    load_key_ring,
    write_key_ring,
)
from agentrun.payload_codec import (
    main as keys_cli,
)
from agentrun.temporal import connect, data_converter
from cli.devstack import DevStack
from tests.api_fixtures import (
    NOOP_TURN,
    admin_headers,
    api_settings,
    api_stack,
    bearer,
    finish_turn,
    scripted,
    serve_api,
    unique,
)
from tests.conftest import ROOT
from tests.workflow_harness import temporal
from worker import build_worker
from workflows.agent_run import AgentRunWorkflow
from workflows.tenant_slots import TenantSlotsWorkflow

HISTORIES = Path(__file__).parent / "histories"


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


# ------------------------------------------------------------------ the codec


async def test_a_payload_is_sealed_under_the_current_key_id_and_opens_back() -> None:
    ring = KeyRing.generate()
    codec = EncryptionCodec(ring)
    marker = unique("marker")
    [sealed] = await codec.encode([plain(marker)])
    assert sealed.metadata["encoding"] == ENCRYPTED_ENCODING
    assert sealed.metadata[KEY_ID_METADATA] == ring.current.encode()
    assert marker.encode() not in sealed.data
    assert set(sealed.metadata) == {"encoding", KEY_ID_METADATA}  # json/plain is inside
    [opened] = await codec.decode([sealed])
    assert opened == plain(marker)
    # A random nonce per payload: the same value never gives the same ciphertext.
    [again] = await codec.encode([plain(marker)])
    assert again.data != sealed.data


async def test_a_payload_that_is_not_encrypted_passes_through_decode() -> None:
    codec = EncryptionCodec(KeyRing.generate())
    payload = plain("written before encryption was on")
    assert await codec.decode([payload]) == [payload]


async def test_after_rotation_the_old_key_still_decrypts_and_the_new_one_encrypts() -> None:
    old = KeyRing.generate()
    [sealed_before] = await EncryptionCodec(old).encode([plain("old run")])
    rotated, new_id = old.with_new_key()
    assert rotated.current == new_id != old.current
    codec = EncryptionCodec(rotated)
    assert await codec.decode([sealed_before]) == [plain("old run")]
    [sealed_after] = await codec.encode([plain("new run")])
    assert sealed_after.metadata[KEY_ID_METADATA] == new_id.encode()


async def test_an_unknown_key_id_fails_naming_the_key_and_the_key_file() -> None:
    [sealed] = await EncryptionCodec(KeyRing.generate()).encode([plain("x")])
    other = KeyRing.generate(source="the payload key file /etc/agentrun/keys.json")
    with pytest.raises(PayloadDecryptError) as caught:
        await EncryptionCodec(other).decode([sealed])
    key_id = sealed.metadata[KEY_ID_METADATA].decode()
    assert caught.value.key_id == key_id
    message = str(caught.value)
    assert f"key {key_id!r}, which is not in the payload key file /etc/agentrun/keys.json" in (
        message
    )
    assert "add that key back" in message


async def test_an_altered_payload_or_a_reused_key_id_does_not_decrypt() -> None:
    ring = KeyRing.generate()
    codec = EncryptionCodec(ring)
    [sealed] = await codec.encode([plain("x")])
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadDecryptError, match="altered"):
        await codec.decode([tampered])
    # Another key filed under the same id (a regenerated file) is told apart too.
    impostor = KeyRing(ring.current, {ring.current: os.urandom(32)})
    with pytest.raises(PayloadDecryptError, match="does not decrypt"):
        await EncryptionCodec(impostor).decode([sealed])


async def test_the_encrypting_converter_encrypts_failure_messages_too() -> None:
    converter = encrypting_converter(KeyRing.generate())
    assert converter.payload_converter_class is pydantic_data_converter.payload_converter_class
    marker = unique("in-an-error")
    failure = Failure()
    await converter.encode_failure(ApplicationError(f"tool failed: {marker}"), failure)
    assert marker.encode() not in failure.SerializeToString()
    assert failure.message == "Encoded failure"
    restored = await converter.decode_failure(failure)
    assert isinstance(restored, ApplicationError) and marker in str(restored)


def test_with_encryption_off_clients_use_the_plain_pydantic_converter(tmp_path: Path) -> None:
    off = api_settings(tmp_path, "unused", payload_encryption="off")
    assert data_converter(off) is pydantic_data_converter
    assert not off.payload_keys_path.exists()  # and no key file is made


# ------------------------------------------------------------------ the key file


def test_the_key_file_is_generated_once_with_mode_0600_and_shared(tmp_path: Path) -> None:
    settings = api_settings(tmp_path / "state", "unused")
    # A worker and an API starting at the same moment end up with one key.
    with ThreadPoolExecutor(8) as pool:
        rings = list(pool.map(lambda _: load_key_ring(settings), range(16)))
    path = settings.payload_keys_path
    assert path == tmp_path / "state" / "payload-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {r.current for r in rings} == {rings[0].current}
    assert all(dict(r.keys) == dict(rings[0].keys) for r in rings)
    assert [p.name for p in path.parent.iterdir()] == ["payload-keys.json"]  # no temp left
    document = json.loads(path.read_text())
    assert document["current"] == rings[0].current
    assert base64.b64decode(document["keys"][rings[0].current]) == rings[0].keys[rings[0].current]


def test_a_named_key_file_that_is_missing_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    missing = tmp_path / "keys.json"
    settings = api_settings(tmp_path, "unused", payload_keys_file=missing)
    with pytest.raises(KeyFileError, match="does not exist") as caught:
        load_key_ring(settings)
    assert "python -m agentrun.payload_codec rotate" in str(caught.value)
    assert not missing.exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "is not JSON"),
        ('{"keys": {}}', 'must be {"current"'),
        ('{"current": "a", "keys": {"a": "%%%"}}', "key 'a' is not base64"),
        ('{"current": "a", "keys": {"a": "c2hvcnQ="}}', "key 'a' is 5 bytes; AES-256 needs 32"),
        ('{"current": "b", "keys": {"a": "' + "A" * 43 + '="}}', "current key 'b' is not"),
        ('{"current": "a b", "keys": {"a b": "' + "A" * 43 + '="}}', "key id 'a b' must be"),
    ],
)
def test_a_malformed_key_file_is_refused_saying_what_is_wrong(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeyFileError, match="payload key file") as caught:
        load_key_ring(api_settings(tmp_path, "unused", payload_keys_file=path))
    assert problem in str(caught.value)
    assert "A" * 43 not in str(caught.value)  # never a key in a message


def test_rotation_from_the_command_line_keeps_the_old_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.json"
    assert keys_cli(["--keys-file", str(path), "rotate"]) == 0
    first = KeyRing.from_json(path.read_text(), "f")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Step 1 of a rolling rotation: the new key is listed, not yet used.
    assert keys_cli(["--keys-file", str(path), "rotate", "--keep-current"]) == 0
    staged = KeyRing.from_json(path.read_text(), "f")
    [new_id] = set(staged.keys) - set(first.keys)
    assert staged.current == first.current
    assert keys_cli(["--keys-file", str(path), "activate", new_id]) == 0
    active = KeyRing.from_json(path.read_text(), "f")
    assert active.current == new_id and dict(active.keys) == dict(staged.keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    capsys.readouterr()
    assert keys_cli(["--keys-file", str(path), "show"]) == 0
    shown = capsys.readouterr().out
    assert f"{new_id}  (current)" in shown and first.current in shown
    assert all(base64.b64encode(k).decode() not in shown for k in active.keys.values())
    assert keys_cli(["--keys-file", str(path), "activate", "key-unknown"]) == 2
    assert "has no key 'key-unknown'" in capsys.readouterr().err


def test_a_worker_with_a_missing_key_file_exits_1_saying_which_file() -> None:
    missing = f"/nonexistent/{uuid.uuid4().hex}/keys.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        env={"AGENTRUN_PAYLOAD_KEYS_FILE": missing, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"the payload key file {missing} (AGENTRUN_PAYLOAD_KEYS_FILE) does not exist" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ real runs


@dataclass
class Deployment:
    """A worker and the API on production's encrypting client (one key file)."""

    settings: Settings
    client: Client
    url: str
    admin: str
    """The bootstrap admin key: an admin of the system tenant."""

    async def launch(self, goal: str, answer: str) -> str:
        """Launch a scripted run through the API; its workflow id once it ended."""
        async with httpx.AsyncClient(base_url=self.url, headers=bearer(self.admin)) as http:
            resp = await http.post("/v1/runs", json=scripted(finish_turn(answer), goal=goal))
        assert resp.status_code == 201, resp.text
        workflow_id: str = resp.json()["workflow_id"]
        handle = self.client.get_workflow_handle(workflow_id, result_type=RunResult)
        result = await handle.result()
        assert result.status == RunStatus.COMPLETED
        return workflow_id


@asynccontextmanager
async def deployment(env: WorkflowEnvironment, state_dir: Path) -> AsyncIterator[Deployment]:
    task_queue = f"tq-codec-{uuid.uuid4().hex[:10]}"
    settings = api_settings(
        state_dir, task_queue, temporal_address=env.client.service_client.config.target_host
    )
    assert settings.payload_encryption  # the default
    client = await connect(settings)
    async with (
        build_worker(client, settings, task_queue=task_queue),
        serve_api(settings, client) as url,
    ):
        yield Deployment(settings, client, url, admin_headers(settings)["Authorization"][7:])


LEFT_PLAIN = ("searchAttributes", "patch-data")
"""What no codec touches: search attributes (the server indexes them: tenant, status,
agent, model, labels, steps, creator) and the SDK's patch markers (patch ids). Also
the bookkeeping of a local activity's marker (`details.data` of a
`core_local_activity` marker: its sequence number, attempt, activity type and times,
written by the SDK's core); the local activity's result beside it is encrypted."""


def payloads_in(document: Any) -> Iterator[dict[str, Any]]:
    """Every protobuf-JSON payload (an object with base64 `metadata` and `data`)
    outside `LEFT_PLAIN`."""
    if isinstance(document, dict):
        if isinstance(document.get("metadata"), dict) and "encoding" in document["metadata"]:
            yield document
        for key, value in document.items():
            if key in LEFT_PLAIN:
                continue
            if key == "details" and document.get("markerName") == "core_local_activity":
                value = {k: v for k, v in value.items() if k != "data"}
            yield from payloads_in(value)
    elif isinstance(document, list):
        for value in document:
            yield from payloads_in(value)


def contents(history_json: str) -> str:
    """What the payloads of a `temporal workflow show --output json` hold, decoded
    from base64 (the CLI prints payload data as base64 even after the codec)."""
    return "\n".join(
        base64.b64decode(p.get("data", "")).decode(errors="replace")
        for p in payloads_in(json.loads(history_json))
    )


def encoding(payload: dict[str, Any]) -> bytes:
    return base64.b64decode(payload["metadata"]["encoding"])


async def show(client: Client, workflow_id: str, *codec: str) -> str:
    code, out = await temporal(
        client, "workflow", "show", "--workflow-id", workflow_id, "--output", "json", *codec
    )
    assert code == 0, out
    return out


@pytest.fixture(scope="module")
def codec_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("codec-state")


async def test_raw_history_is_ciphertext_and_the_codec_server_reads_it(
    temporal_env: WorkflowEnvironment, client: Client, tmp_path: Path
) -> None:
    marker = unique("goal-marker")
    answer = unique("answer-marker")
    async with deployment(temporal_env, tmp_path) as dep:
        workflow_id = await dep.launch(f"find {marker} please", f"found {answer}")

        raw = await show(client, workflow_id)
        assert marker not in raw and answer not in raw
        found = list(payloads_in(json.loads(raw)))
        # The input, the memo, every activity's input and result, the result.
        assert len(found) > 5
        assert {encoding(p) for p in found} == {ENCRYPTED_ENCODING}
        for p in found:  # nor inside any payload's bytes
            data = base64.b64decode(p.get("data", ""))
            assert marker.encode() not in data and answer.encode() not in data

        endpoint = ["--codec-endpoint", f"{dep.url}/codec"]
        decoded = await show(client, workflow_id, *endpoint, "--codec-auth", f"Bearer {dep.admin}")
        assert {encoding(p) for p in payloads_in(json.loads(decoded))} == {b"json/plain"}
        read = contents(decoded)
        assert marker in read and answer in read

        # Without a system admin's key the codec server reads nothing.
        async with httpx.AsyncClient(base_url=dep.url) as http:
            resp = await http.post(
                "/v1/admin/tenants/apitest/keys",
                json={"role": "operator", "subject": "codec-op"},
                headers=bearer(dep.admin),
            )
        operator = resp.json()["api_key"]
        code, out = await temporal(
            client,
            "workflow",
            "show",
            "--workflow-id",
            workflow_id,
            "--output",
            "json",
            *endpoint,
            "--codec-auth",
            f"Bearer {operator}",
        )
        assert code != 0 and marker not in out

        # The Python SDK path: production's client reads the result ...
        handle = dep.client.get_workflow_handle(workflow_id, result_type=RunResult)
        assert answer in ((await handle.result()).final_answer or "")
        # ... a client without the codec cannot.
        with pytest.raises(Exception) as caught:
            await client.get_workflow_handle(workflow_id, result_type=RunResult).result()
        assert answer not in str(caught.value)


async def test_recorded_histories_and_an_encrypted_one_replay_with_the_encrypting_converter(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with deployment(temporal_env, tmp_path) as dep:
        workflow_id = await dep.launch("replay me", "replayed")
        encrypted = await dep.client.get_workflow_handle(
            workflow_id, result_type=RunResult
        ).fetch_history()
    converter = encrypting_converter(load_key_ring(dep.settings))
    # The workflows the committed histories record (tests/test_workflow_history.py).
    replayer = Replayer(workflows=[AgentRunWorkflow, TenantSlotsWorkflow], data_converter=converter)
    recorded = [
        WorkflowHistory.from_json(p.stem, p.read_text()) for p in sorted(HISTORIES.glob("*.json"))
    ]
    assert recorded, "no committed histories"
    for history in [*recorded, encrypted]:
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{history.workflow_id}: {result.replay_failure}"


async def test_a_run_written_under_an_old_key_reads_after_rotation_and_not_without_it(
    temporal_env: WorkflowEnvironment, client: Client, tmp_path: Path
) -> None:
    async with deployment(temporal_env, tmp_path) as before:
        old_run = await before.launch("written under the first key", "old answer")
    first = load_key_ring(before.settings)
    rotated, new_id = first.with_new_key()
    write_key_ring(before.settings.payload_keys_path, rotated)

    # Every process restarts on the rotated file: the old run still reads, new ones
    # are written under the new key.
    async with deployment(temporal_env, tmp_path) as after:
        handle = after.client.get_workflow_handle(old_run, result_type=RunResult)
        assert (await handle.result()).final_answer == "old answer"
        new_run = await after.launch("written under the second key", "new answer")
        raw = json.loads(await show(client, new_run))
        key_ids = {
            base64.b64decode(p["metadata"][KEY_ID_METADATA]).decode() for p in payloads_in(raw)
        }
        assert key_ids == {new_id}
        old_raw = await show(client, old_run)
        decoded = await show(
            client, old_run, "--codec-endpoint", f"{after.url}/codec", "--codec-auth",
            f"Bearer {after.admin}",
        )  # fmt: skip
        assert "old answer" not in contents(old_raw) and "old answer" in contents(decoded)

    # A ring that lost the first key: the SDK and the codec server both say which key.
    without_old = KeyRing(new_id, {new_id: rotated.keys[new_id]}, "the trimmed key file")
    lost = await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        data_converter=encrypting_converter(without_old),
    )
    with pytest.raises(PayloadDecryptError) as caught:
        await lost.get_workflow_handle(old_run, result_type=RunResult).result()
    assert caught.value.key_id == first.current
    assert f"key {first.current!r}, which is not in the trimmed key file" in str(caught.value)

    write_key_ring(before.settings.payload_keys_path, without_old)
    async with deployment(temporal_env, tmp_path) as trimmed:
        raw = json.loads(await show(client, old_run))
        sealed = next(p for p in payloads_in(raw) if encoding(p) == ENCRYPTED_ENCODING)
        async with httpx.AsyncClient(base_url=trimmed.url, headers=bearer(trimmed.admin)) as http:
            resp = await http.post("/codec/decode", json={"payloads": [sealed]})
        assert resp.status_code == 422, resp.text
        problem = resp.json()
        assert problem["type"].endswith("undecryptable-payload")
        assert first.current in problem["detail"] and "add that key back" in problem["detail"]


# ------------------------------------------------------------------ the codec server


@pytest.fixture(scope="module")
async def codec_api(
    temporal_env: WorkflowEnvironment, codec_state: Path
) -> AsyncIterator[Deployment]:
    async with deployment(temporal_env, codec_state) as dep:
        yield dep


def as_json(payload: Payload) -> dict[str, Any]:
    return {
        "metadata": {k: base64.b64encode(v).decode() for k, v in payload.metadata.items()},
        "data": base64.b64encode(payload.data).decode(),
    }


async def test_the_codec_server_encodes_and_decodes_by_the_remote_codec_protocol(
    codec_api: Deployment,
) -> None:
    headers = {**bearer(codec_api.admin), "X-Namespace": "default"}
    body = {"payloads": [as_json(plain("secret plan")), as_json(plain("second"))]}
    async with httpx.AsyncClient(base_url=codec_api.url, headers=headers) as http:
        encoded = await http.post("/codec/encode", json=body)
        assert encoded.status_code == 200, encoded.text
        sealed = encoded.json()["payloads"]
        assert len(sealed) == 2
        assert {encoding(p) for p in sealed} == {ENCRYPTED_ENCODING}
        assert b"secret plan" not in base64.b64decode(sealed[0]["data"])
        decoded = await http.post("/codec/decode", json={"payloads": sealed})
        assert decoded.status_code == 200, decoded.text
        assert decoded.json() == body
        # Plain payloads pass through; so does an empty list.
        same = await http.post("/codec/decode", json=body)
        assert same.json() == body
        empty = await http.post("/codec/decode", json={"payloads": []})
        assert empty.status_code == 200 and empty.json() == {"payloads": []}
        bad = await http.post("/codec/decode", json={"payloads": [{"data": "%%%"}]})
        assert bad.status_code == 422, bad.text


async def test_only_an_admin_of_the_system_tenant_may_use_the_codec_server(
    codec_api: Deployment,
) -> None:
    body = {"payloads": [as_json(plain("x"))]}
    async with httpx.AsyncClient(base_url=codec_api.url) as http:
        admin = bearer(codec_api.admin)
        assert (await http.post("/codec/decode", json=body)).status_code == 401
        tenant = unique("acme")
        resp = await http.post("/v1/admin/tenants", json={"tenant_id": tenant}, headers=admin)
        assert resp.status_code == 201, resp.text
        keys = {}
        for who, role, of in [
            ("op", Role.OPERATOR, codec_api.settings.dev_tenant),
            ("other-admin", Role.ADMIN, tenant),
        ]:
            resp = await http.post(
                f"/v1/admin/tenants/{of}/keys",
                json={"role": role.value, "subject": who},
                headers=admin,
            )
            keys[who] = resp.json()["api_key"]
        for who in keys:
            for route in ("/codec/decode", "/codec/encode"):
                refused = await http.post(route, json=body, headers=bearer(keys[who]))
                assert refused.status_code == 403, (who, route, refused.text)
        assert "system tenant" in refused.json()["detail"]
        assert (await http.post("/codec/decode", json=body, headers=admin)).status_code == 200


WEB_UI = "http://localhost:8233"


async def test_the_web_ui_origin_gets_cors_on_the_codec_routes_and_nowhere_else(
    codec_api: Deployment,
) -> None:
    preflight = {
        "Origin": WEB_UI,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    body = {"payloads": [as_json(plain("x"))]}
    async with httpx.AsyncClient(base_url=codec_api.url) as http:
        resp = await http.options("/codec/decode", headers=preflight)
        assert resp.status_code == 200, resp.text
        assert resp.headers["access-control-allow-origin"] == WEB_UI
        allowed = resp.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "x-namespace"} <= set(allowed.split(", "))
        assert "POST" in resp.headers["access-control-allow-methods"]

        call = {"Origin": WEB_UI, **bearer(codec_api.admin)}
        resp = await http.post("/codec/decode", json=body, headers=call)
        assert resp.status_code == 200, resp.text
        assert resp.headers["access-control-allow-origin"] == WEB_UI

        # Any other origin: no CORS answer, and its state changes are refused.
        evil = {**preflight, "Origin": "http://evil.example"}
        resp = await http.options("/codec/decode", headers=evil)
        assert "access-control-allow-origin" not in resp.headers
        resp = await http.post(
            "/codec/decode", json=body, headers={**call, "Origin": "http://evil.example"}
        )
        assert resp.status_code == 403 and resp.json()["type"].endswith("origin-not-allowed")

        # The Web UI's origin reaches the codec routes only.
        resp = await http.options("/v1/runs", headers={**preflight, "Origin": WEB_UI})
        assert "access-control-allow-origin" not in resp.headers
        resp = await http.post("/v1/runs", json=scripted(finish_turn()), headers=call)
        assert resp.status_code == 403 and resp.json()["type"].endswith("origin-not-allowed")


async def test_with_encryption_off_the_codec_server_answers_404(
    tmp_path: Path, refused_port: int
) -> None:
    unreachable = f"127.0.0.1:{refused_port}"  # the codec server needs no Temporal
    settings = api_settings(
        tmp_path, "unused", payload_encryption=False, temporal_address=unreachable
    )
    async with (
        serve_api(settings, None) as url,
        httpx.AsyncClient(base_url=url, headers=admin_headers(settings)) as http,
    ):
        resp = await http.post("/codec/decode", json={"payloads": []})
    assert resp.status_code == 404
    assert "AGENTRUN_PAYLOAD_ENCRYPTION=off" in resp.json()["detail"]


async def test_the_codec_routes_are_not_counted_against_the_key_rate_limit(
    tmp_path: Path, refused_port: int
) -> None:
    # `temporal workflow show` calls the codec about five times per run step.
    settings = api_settings(
        tmp_path,
        "unused",
        temporal_address=f"127.0.0.1:{refused_port}",
        api_rate_limit_per_minute=1,
        api_rate_limit_burst=2,
    )
    body = {"payloads": [as_json(plain("x"))]}
    async with (
        serve_api(settings, None) as url,
        httpx.AsyncClient(base_url=url, headers=admin_headers(settings)) as http,
    ):
        for _ in range(10):
            resp = await http.post("/codec/decode", json=body)
            assert resp.status_code == 200, resp.text
            assert "ratelimit-remaining" not in resp.headers
        statuses = [(await http.get("/v1/admin/tenants")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # the same key, elsewhere: limited


def test_the_dev_stack_points_its_web_ui_at_the_codec_only_when_the_ui_can_call_it(
    tmp_path: Path,
) -> None:
    def temporal_command(**overrides: Any) -> list[str]:
        stack = DevStack(api_settings(tmp_path, "unused", **overrides))
        return next(s.command for s in stack.services() if s.name == "temporal")

    # With keys on the UI cannot authenticate (it sends no agentrun key).
    assert "--ui-codec-endpoint" not in temporal_command()
    keyless = temporal_command(auth="off")
    flag = keyless.index("--ui-codec-endpoint")
    assert keyless[flag + 1] == "http://127.0.0.1:8080/codec"
    assert "--ui-codec-endpoint" not in temporal_command(auth="off", payload_encryption=False)


async def test_a_failed_run_keeps_its_failure_encrypted_and_the_api_still_reads_it(
    temporal_env: WorkflowEnvironment, client: Client, tmp_path: Path
) -> None:
    marker = unique("failing-goal")
    spec = scripted(NOOP_TURN, NOOP_TURN, goal=f"never done {marker}", limits={"max_steps": 1})
    async with (
        deployment(temporal_env, tmp_path) as dep,
        httpx.AsyncClient(base_url=dep.url, headers=bearer(dep.admin)) as http,
    ):
        resp = await http.post("/v1/runs", json=spec)
        assert resp.status_code == 201, resp.text
        run_id, workflow_id = resp.json()["run_id"], resp.json()["workflow_id"]
        with pytest.raises(WorkflowFailureError):
            await dep.client.get_workflow_handle(workflow_id, result_type=RunResult).result()
        view = (await http.get(f"/v1/runs/{run_id}")).json()
        raw = json.loads(await show(client, workflow_id))
    # The API, on production's client, reads the outcome from the encrypted failure.
    assert view["status"] == "failed" and view["reason"] == "max_steps", view
    failed = next(e for e in raw["events"] if "workflowExecutionFailedEventAttributes" in e)
    failure = failed["workflowExecutionFailedEventAttributes"]["failure"]
    assert failure["message"] == "Encoded failure"
    assert "encodedAttributes" in failure
    assert marker not in contents(json.dumps(raw))


async def test_an_encrypted_api_stack_serves_runs_whose_history_is_ciphertext(
    client: Client, tmp_path: Path
) -> None:
    # `api_stack(encrypted=True)`: the fixture other suites (exfiltration) build on.
    answer = unique("stack-answer")
    async with api_stack(client, tmp_path, encrypted=True) as stack:
        assert stack.client is not client
        resp = await stack.http.post("/v1/runs", json=scripted(finish_turn(answer)))
        assert resp.status_code == 201, resp.text
        run_id, workflow_id = resp.json()["run_id"], resp.json()["workflow_id"]
        await stack.client.get_workflow_handle(workflow_id).result()
        view = (await stack.http.get(f"/v1/runs/{run_id}")).json()
        raw = await show(client, workflow_id)
    assert view["final_answer"] == answer
    assert answer not in raw and answer not in contents(raw)
