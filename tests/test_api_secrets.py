"""`/v1/secrets` and launch grants, over real HTTP (uvicorn, Temporal, a worker).

The store behind the API is the embedded one (the stack's SQLite database) for
most tests, and a real OpenBao server for one, which reads back what the API
wrote straight from OpenBao. The value never comes back: not in answers, not in
the audit trail, not in a refusal.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from accounts.roles import Role
from tests.api_fixtures import Stack, api_stack, bearer, finish_turn, scripted, unique
from tests.vault_fixtures import OpenBao

VALUE = "sk-live-api-test-7c41e0d9a2"


@pytest.fixture(scope="module")
async def stack(client: Client, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with api_stack(client, tmp_path_factory.mktemp("secrets-state")) as running:
        yield running


def name() -> str:
    return f"S_{unique('n').replace('-', '_')}"


async def test_put_list_delete_and_the_value_never_comes_back(stack: Stack) -> None:
    secret = name()
    created = await stack.http.put(f"/v1/secrets/{secret}", json={"value": VALUE})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == secret and created.json()["version"] == 1
    updated = await stack.http.put(f"/v1/secrets/{secret}", json={"value": VALUE + "-2"})
    assert updated.status_code == 200 and updated.json()["version"] == 2
    listed = await stack.http.get("/v1/secrets", headers=stack.auth(Role.VIEWER))
    assert listed.status_code == 200
    [meta] = [m for m in listed.json()["secrets"] if m["name"] == secret]
    assert meta["version"] == 2 and set(meta) == {"name", "version", "created_at", "updated_at"}
    for resp in (created, updated, listed):
        assert VALUE not in resp.text
    deleted = await stack.http.delete(f"/v1/secrets/{secret}")
    assert deleted.status_code == 204 and deleted.content == b""
    again = await stack.http.delete(f"/v1/secrets/{secret}")
    assert again.status_code == 404 and secret in again.json()["detail"]
    listed = await stack.http.get("/v1/secrets")
    assert secret not in [m["name"] for m in listed.json()["secrets"]]


async def test_viewers_and_approvers_list_but_may_not_store_or_delete(stack: Stack) -> None:
    secret = name()
    for role in (Role.VIEWER, Role.APPROVER):
        put = await stack.http.put(
            f"/v1/secrets/{secret}", json={"value": VALUE}, headers=stack.auth(role)
        )
        assert put.status_code == 403 and "'secrets' permission" in put.json()["detail"]
        gone = await stack.http.delete(f"/v1/secrets/{secret}", headers=stack.auth(role))
        assert gone.status_code == 403
        assert (await stack.http.get("/v1/secrets", headers=stack.auth(role))).status_code == 200
    admin = await stack.http.put(
        f"/v1/secrets/{secret}", json={"value": VALUE}, headers=stack.auth(Role.ADMIN)
    )
    assert admin.status_code == 201


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/v1/secrets/SHORT", {"value": "seven77"}, "at least 8 characters"),
        ("/v1/secrets/NOT_A_STRING", {"value": 123456789}, "value"),
        ("/v1/secrets/EXTRA", {"value": VALUE, "name": "x"}, "name"),
        ("/v1/secrets/1bad", {"value": VALUE}, "name"),
        ("/v1/secrets/has%2Fslash", {"value": VALUE}, ""),
    ],
)
async def test_bad_puts_are_422_or_404_and_never_echo_the_value(
    stack: Stack, path: str, body: dict[str, object], says: str
) -> None:
    resp = await stack.http.put(path, json=body)
    assert resp.status_code in (404, 422), resp.text
    if resp.status_code == 422:
        assert says in resp.text
    assert str(body["value"]) not in resp.text


async def test_another_tenant_never_sees_or_touches_this_tenants_secrets(stack: Stack) -> None:
    secret = name()
    assert (await stack.http.put(f"/v1/secrets/{secret}", json={"value": VALUE})).is_success
    other = bearer(await stack.new_tenant(unique("sx")))
    listed = await stack.http.get("/v1/secrets", headers=other)
    assert listed.json() == {"secrets": []}
    assert (await stack.http.delete(f"/v1/secrets/{secret}", headers=other)).status_code == 404
    # Its launch naming our secret is refused: a run gets its own tenant's secrets only.
    spec = scripted(finish_turn(), secrets=[secret])
    refused = await stack.http.post("/v1/runs", json=spec, headers=other)
    assert refused.status_code == 422 and secret in refused.json()["detail"]
    mine = (await stack.http.get("/v1/secrets")).json()["secrets"]
    assert [m["version"] for m in mine if m["name"] == secret] == [1]


async def test_a_launch_naming_missing_secrets_is_422_naming_each(stack: Stack) -> None:
    present, missing_a, missing_b = name(), name(), name()
    await stack.http.put(f"/v1/secrets/{present}", json={"value": VALUE})
    spec = scripted(finish_turn(), secrets=[missing_a, present, missing_b])
    refused = await stack.http.post("/v1/runs", json=spec)
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert missing_a in problem["detail"] and missing_b in problem["detail"]
    assert present not in problem["detail"]
    assert [e["loc"] for e in problem["errors"]] == [
        ["body", "secrets", "0"],
        ["body", "secrets", "2"],
    ]
    for secret in (missing_a, missing_b):
        await stack.http.put(f"/v1/secrets/{secret}", json={"value": VALUE})
    started = await stack.http.post("/v1/runs", json=spec)
    assert started.status_code == 201, started.text


async def test_an_idempotent_retry_finds_its_run_after_the_secret_is_deleted(
    stack: Stack,
) -> None:
    granted = name()
    await stack.http.put(f"/v1/secrets/{granted}", json={"value": VALUE})
    spec = scripted(finish_turn(), secrets=[granted])
    key = {"Idempotency-Key": unique("retry")}
    first = await stack.http.post("/v1/runs", json=spec, headers=key)
    assert first.status_code == 201, first.text
    assert (await stack.http.delete(f"/v1/secrets/{granted}")).status_code == 204
    retry = await stack.http.post("/v1/runs", json=spec, headers=key)
    assert retry.status_code == 200, retry.text  # the same run, not a 422
    assert retry.json()["run_id"] == first.json()["run_id"]
    fresh = await stack.http.post("/v1/runs", json=spec, headers={"Idempotency-Key": unique("n")})
    assert fresh.status_code == 422, fresh.text  # a new launch still needs the secret


async def test_the_audit_trail_names_the_secret_and_never_its_value(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    secret = name()
    caplog.set_level(logging.DEBUG)
    await stack.http.put(f"/v1/secrets/{secret}", json={"value": VALUE})
    await stack.http.delete(f"/v1/secrets/{secret}")
    await stack.http.put(
        f"/v1/secrets/{secret}", json={"value": VALUE}, headers=stack.auth(Role.VIEWER)
    )
    audit = await stack.http.get(
        "/v1/audit", params={"limit": 1000}, headers=stack.auth(Role.ADMIN)
    )
    entries = [e for e in audit.json()["entries"] if secret in e["target"]]
    assert [(e["action"], e["target"], e["actor"]) for e in entries] == [
        ("secret.put", f"secret/{secret}", "operator"),
        ("secret.delete", f"secret/{secret}", "operator"),
        ("secret.put", f"secret/{secret}", "viewer"),
    ]
    assert entries[-1]["outcome"].startswith("403") or "403" in entries[-1]["outcome"]
    assert VALUE not in audit.text
    assert VALUE not in caplog.text


async def test_the_api_on_openbao_stores_where_an_operator_finds_it(
    client: Client, openbao: OpenBao, tmp_path: Path
) -> None:
    async with api_stack(
        client,
        tmp_path / "state",
        secret_backend="vault",
        vault_addr=openbao.addr,
        vault_mount=openbao.mount,
        vault_role_id=openbao.role_id,
        vault_secret_id=openbao.secret_id,
    ) as bao_stack:
        secret = name()
        resp = await bao_stack.http.put(f"/v1/secrets/{secret}", json={"value": VALUE})
        assert resp.status_code == 201, resp.text
        stored = openbao.root().secrets.kv.v2.read_secret_version(
            path=f"agentrun/{bao_stack.tenant}/{secret}",
            mount_point=openbao.mount,
            raise_on_deleted_version=True,
        )
        assert stored["data"]["data"] == {"value": VALUE}
        listed = await bao_stack.http.get("/v1/secrets")
        assert [m["name"] for m in listed.json()["secrets"]] == [secret]
        launch = scripted(finish_turn(), secrets=[secret, "NOT_IN_BAO"])
        refused = await bao_stack.http.post("/v1/runs", json=launch)
        assert refused.status_code == 422 and "NOT_IN_BAO" in refused.json()["detail"]
        assert not (tmp_path / "state" / "secrets.key").exists()  # no embedded key made


async def test_an_unreachable_vault_is_503_not_500(
    client: Client, tmp_path: Path, refused_port: int
) -> None:
    async with api_stack(
        client,
        tmp_path / "state",
        secret_backend="vault",
        vault_addr=f"http://127.0.0.1:{refused_port}",
        vault_token="unused-token-value",
        vault_timeout_seconds=1,
    ) as down:
        resp = await down.http.get("/v1/secrets")
        assert resp.status_code == 503 and "unreachable" in resp.json()["detail"]
        launch = await down.http.post("/v1/runs", json=scripted(finish_turn(), secrets=["A1"]))
        assert launch.status_code == 503
        assert "unused-token-value" not in resp.text + launch.text
        # A launch granting no secret does not need the store.
        plain = await down.http.post("/v1/runs", json=scripted(finish_turn()))
        assert plain.status_code == 201, plain.text
