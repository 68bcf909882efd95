"""Nobody gets in by default: keys, roles, tenant isolation, browser safety, audit.

Real uvicorn, real Temporal, a real worker (scripted model) and the accounts
database in the stack's state directory (SQLite). Every operation of the served
OpenAPI document goes through the role matrix and the cross-tenant matrix, so a
route added without a rule fails here.
"""

from __future__ import annotations

import asyncio
import io
import re
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from accounts.roles import Role, allows
from agentrun.config import ConfigError, load_settings
from agentrun.contracts import StatusChangedPayload
from api.accounts_conn import AccountsConnection
from api.app import create_app
from api.auth import RULES, rule_for_route
from api.server import uvicorn_config
from tests.api_fixtures import (
    NOOP_TURN,
    Stack,
    api_settings,
    api_stack,
    bearer,
    events_in,
    finish_turn,
    scripted,
    serve_api,
    unique,
    wait_until,
)

FAKE_DIGEST = "0" * 64
MATRIX_SECRET = "MATRIX_SECRET"
"""The secret name the matrices put, list and delete (`/v1/secrets/{name}`)."""
MATRIX_VALUE = "matrix-secret-value-4b1d"
PROBLEM = "application/problem+json"


def operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_every_operation_has_an_access_rule_and_every_rule_an_operation(tmp_path: Path) -> None:
    document = create_app(api_settings(tmp_path, "tq-unused")).openapi()
    ops = set(operations(document))
    assert {op for op in ops if rule_for_route(*op) is None} == set(), "operations without a rule"
    assert set(RULES) - ops == set(), "rules for operations that do not exist"
    for method, path in ops:
        op = document["paths"][path][method.lower()]
        if RULES[(method, path)].permission is None:
            assert "security" not in op
        else:
            assert op["security"] == [{"apiKey": []}]
            assert {"401", "403", "429"} <= op["responses"].keys()


def test_auth_off_refuses_to_serve_on_a_non_loopback_address(tmp_path: Path) -> None:
    settings = api_settings(tmp_path, "tq-unused", auth="off")
    app = create_app(settings)
    with pytest.raises(ConfigError, match="loopback"):
        uvicorn_config(app, settings, host="0.0.0.0", port=1)
    assert uvicorn_config(app, settings, host="127.0.0.1", port=1).host == "127.0.0.1"
    keys_on = api_settings(tmp_path, "tq-unused")
    assert uvicorn_config(create_app(keys_on), keys_on, host="0.0.0.0", port=1).host == "0.0.0.0"


@pytest.fixture(scope="module")
async def stack(client: Client, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # A generous rate limit: the matrices make hundreds of calls with a few keys.
    async with api_stack(
        client, tmp_path_factory.mktemp("auth-state"), api_rate_limit_burst=100_000
    ) as running:
        yield running


async def launch(stack: Stack, spec: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    resp = await stack.http.post("/v1/runs", json=spec, headers=headers)
    assert resp.status_code == 201, resp.text
    run_id: str = resp.json()["run_id"]
    return run_id


async def wait_status(
    stack: Stack, run_id: str, status: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        body: dict[str, Any] = (await stack.http.get(f"/v1/runs/{run_id}", headers=headers)).json()
        return body if body.get("status") == status else None

    view: dict[str, Any] = await wait_until(reached, timeout=60)
    return view


def key_id(plaintext: str) -> str:
    return plaintext.split("_")[1]


class Fixture:
    """The ids a matrix fills the paths with, and a body per operation."""

    def __init__(self, run_id: str, tenant: str, key: str) -> None:
        self.params = {
            "run_id": run_id,
            "approval_id": "ap-1",
            "digest": FAKE_DIGEST,
            "tenant": tenant,
            "key_id": key,
            "name": MATRIX_SECRET,
        }

    def url(self, path: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: self.params[m.group(1)], path)

    @staticmethod
    def body(method: str, path: str) -> Any:
        if method == "POST" and path == "/v1/runs":
            return scripted(finish_turn())
        if path.endswith("/approvals/{approval_id}"):
            return {"decision": "deny", "arguments_digest": FAKE_DIGEST}
        if path.endswith("/messages"):
            return {"text": "hello"}
        if path == "/v1/admin/tenants" and method == "POST":
            return {"tenant_id": unique("m")}
        if path.endswith("/quota"):
            return {}
        if path.endswith("/keys") and method == "POST":
            return {"role": "viewer", "subject": "matrix"}
        if path == "/v1/secrets/{name}" and method == "PUT":
            return {"value": MATRIX_VALUE}
        return {} if method in ("POST", "PUT") else None


async def call(
    http: httpx.AsyncClient, method: str, url: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    if body is None:
        return await http.request(method, url, headers=headers)
    return await http.request(method, url, json=body, headers=headers)


async def test_every_operation_answers_each_role_as_its_rule_says(stack: Stack) -> None:
    run_id = await launch(stack, scripted(finish_turn()))
    await wait_status(stack, run_id, "completed")
    document = (await stack.http.get("/openapi.json")).json()
    for method, path in operations(document):
        rule = RULES[(method, path)]
        for role in Role:
            throwaway = await stack.new_key(unique("gone"), Role.VIEWER)
            ids = Fixture(run_id, stack.tenant, key_id(throwaway))
            resp = await call(
                stack.http, method, ids.url(path), ids.body(method, path), stack.auth(role)
            )
            where = f"{method} {path} as {role.value}: {resp.status_code} {resp.text[:200]}"
            assert resp.status_code not in (401, 500), where
            if rule.permission is None or allows(role, rule.permission):
                assert resp.status_code != 403, where
            else:
                assert resp.status_code == 403, where
                assert resp.json()["type"].endswith("/forbidden"), where
        if rule.permission is None:
            anonymous = await stack.http.request(method, path, headers={"Authorization": ""})
            assert anonymous.status_code == 200, f"{method} {path}"


async def test_another_tenants_key_never_reaches_this_tenants_data(stack: Stack) -> None:
    run_id = await launch(stack, scripted(finish_turn("secret answer")))
    await wait_status(stack, run_id, "completed")
    stored = await stack.http.put(f"/v1/secrets/{MATRIX_SECRET}", json={"value": MATRIX_VALUE})
    assert stored.status_code in (200, 201), stored.text
    version = stored.json()["version"]
    other = unique("other")
    other_admin = await stack.new_tenant(other)
    own_keys = [key_id(k) for k in stack.keys.values()]
    document = (await stack.http.get("/openapi.json")).json()
    for method, path in operations(document):
        victim = await stack.new_key(unique("victim"), Role.VIEWER)
        ids = Fixture(run_id, stack.tenant, key_id(victim))
        resp = await call(
            stack.http, method, ids.url(path), ids.body(method, path), bearer(other_admin)
        )
        where = f"{method} {path}: {resp.status_code} {resp.text[:300]}"
        assert resp.status_code < 500, where
        if (method, path) == ("PUT", "/v1/secrets/{name}"):
            # Secrets are named within the caller's tenant: this stores the other
            # tenant's own secret of that name (ours is checked below); drop it so
            # the DELETE that follows has nothing of its own to delete.
            assert resp.status_code == 201 and resp.json()["version"] == 1, where
            gone = await stack.http.delete(ids.url(path), headers=bearer(other_admin))
            assert gone.status_code == 204, gone.text
        elif "{" in path:
            assert resp.status_code in (403, 404), where
        if path == "/v1/audit":
            # Its own entries only (they name what it tried: this tenant's ids, refused).
            assert {e["tenant_id"] for e in resp.json()["entries"]} == {other}, where
            continue
        url = ids.url(path)
        secrets = (run_id, "secret answer", key_id(victim), MATRIX_VALUE, *own_keys)
        # An id the caller sent may come back in the problem (as for a missing one).
        for secret in (s for s in secrets if s not in url):
            assert secret not in resp.text, where
        # The victim key was not revoked by the other tenant's admin.
        assert (await stack.http.get("/v1/runs", headers=bearer(victim))).status_code == 200
    # Nor was this tenant's secret touched.
    listed = (await stack.http.get("/v1/secrets")).json()["secrets"]
    assert [(s["name"], s["version"]) for s in listed if s["name"] == MATRIX_SECRET] == [
        (MATRIX_SECRET, version)
    ]


async def test_missing_bad_revoked_and_expired_keys_are_401(stack: Stack) -> None:
    revoked = await stack.new_key("revoked-soon", Role.VIEWER)
    gone = await stack.http.delete(
        f"/v1/admin/keys/{key_id(revoked)}", headers=stack.auth(Role.ADMIN)
    )
    assert gone.status_code == 200 and gone.json()["revoked_at"] is not None
    expires = datetime.now(UTC) + timedelta(seconds=2)
    expiring = await stack.new_key("expiring", Role.VIEWER, expires_at=expires.isoformat())
    assert (await stack.http.get("/v1/runs", headers=bearer(expiring))).status_code == 200
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)
    valid = stack.keys[Role.VIEWER]
    wrong_secret = valid[:-4] + ("AAAA" if not valid.endswith("AAAA") else "BBBB")
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Basic dXNlcjpwdw=="},
        bearer("ar_nonsense"),
        bearer(wrong_secret),
        bearer(revoked),
        bearer(expiring),
    ):
        resp = await stack.http.get("/v1/runs", headers=headers)
        assert resp.status_code == 401, (headers, resp.text)
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.json()["type"].endswith("/unauthenticated")


async def test_a_forged_actor_header_is_refused_and_the_actor_is_the_keys_subject(
    stack: Stack,
) -> None:
    forged = await stack.http.post(
        "/v1/runs", json=scripted(finish_turn()), headers={"X-Agentrun-Actor": "the-ceo"}
    )
    assert forged.status_code == 400
    assert forged.json()["type"].endswith("/actor-header-not-accepted")
    run_id = await launch(stack, scripted(finish_turn()))
    view = await wait_status(stack, run_id, "completed")
    assert view["created_by"] == "operator"


async def test_on_behalf_of_needs_act_as_and_both_identities_are_recorded(
    stack: Stack, client: Client
) -> None:
    slow = dict(NOOP_TURN, delay_seconds=0.5)
    run_id = await launch(stack, scripted(*[slow] * 40, finish_turn()))
    await wait_status(stack, run_id, "running")
    refused = await stack.http.post(
        f"/v1/runs/{run_id}/pause", json={}, headers={"X-Agentrun-On-Behalf-Of": "dana"}
    )
    assert refused.status_code == 403 and refused.json()["type"].endswith("/act-as-not-allowed")

    service = await stack.new_key("portal-service", Role.OPERATOR, act_as=True)
    paused = await stack.http.post(
        f"/v1/runs/{run_id}/pause",
        json={"reason": "asked by dana"},
        headers={**bearer(service), "X-Agentrun-On-Behalf-Of": "dana"},
    )
    assert paused.status_code == 200, paused.text
    await stack.http.post(f"/v1/runs/{run_id}/cancel", json={})

    entries = (
        await stack.http.get(
            "/v1/audit", params={"action": "run.pause"}, headers=stack.auth(Role.ADMIN)
        )
    ).json()["entries"]
    mine = [e for e in entries if e["target"] == run_id and e["outcome"] == "ok"]
    assert mine and mine[-1]["actor"] == "portal-service"
    assert mine[-1]["on_behalf_of"] == "dana" and mine[-1]["key_id"] == key_id(service)
    refused_entry = [e for e in entries if e["target"] == run_id and e["outcome"] == "403"]
    assert refused_entry and refused_entry[0]["actor"] == "operator"

    # Temporal history holds the update with both identities.
    history = await client.get_workflow_handle(f"agentrun/{stack.tenant}/{run_id}").fetch_history()
    updates = [
        str(e.workflow_execution_update_accepted_event_attributes)
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert any("portal-service" in u and "dana" in u and "on_behalf_of" in u for u in updates)
    # ...and so does the run's event.
    events = events_in((await stack.http.get(f"/v1/runs/{run_id}/events")).json())
    pauses = [
        e.payload
        for e in events
        if isinstance(e.payload, StatusChangedPayload) and e.payload.action == "pause"
    ]
    assert [(p.actor, p.on_behalf_of) for p in pauses] == [("portal-service", "dana")]


async def test_a_cross_site_form_post_cannot_cancel_a_run(stack: Stack) -> None:
    slow = dict(NOOP_TURN, delay_seconds=0.5)
    run_id = await launch(stack, scripted(*[slow] * 40, finish_turn()))
    await wait_status(stack, run_id, "running")
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"}
    resp = await stack.http.post(f"/v1/runs/{run_id}/cancel", content=b"", headers=form)
    assert resp.status_code == 403 and resp.json()["type"].endswith("/origin-not-allowed")
    # Without an Origin (an old browser), the form's content type alone is refused.
    no_origin = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = await stack.http.post(f"/v1/runs/{run_id}/cancel", content=b"a=1", headers=no_origin)
    assert resp.status_code == 415
    text = {"Content-Type": "text/plain"}
    resp = await stack.http.post(f"/v1/runs/{run_id}/cancel", content=b"{}", headers=text)
    assert resp.status_code == 415
    assert (await stack.http.get(f"/v1/runs/{run_id}")).json()["status"] == "running"
    # The API's own origin (the docs page's "Try it out") may change state.
    own = {"Origin": stack.url}
    resp = await stack.http.post(f"/v1/runs/{run_id}/cancel", json={}, headers=own)
    assert resp.status_code == 200, resp.text


async def test_a_foreign_host_is_refused_and_cors_is_closed(stack: Stack) -> None:
    resp = await stack.http.get("/v1/runs", headers={"Host": "rebind.evil.example"})
    assert resp.status_code == 400 and resp.json()["type"].endswith("/host-not-allowed")
    assert (await stack.http.get("/v1/runs", headers={"Host": "localhost:8080"})).status_code == 200
    preflight = await stack.http.options(
        "/v1/runs",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert "access-control-allow-origin" not in preflight.headers
    read = await stack.http.get("/v1/runs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in read.headers


async def test_quota_refuses_concurrent_runs_with_429_and_steps_with_422(stack: Stack) -> None:
    tenant = unique("quota")
    admin = await stack.new_tenant(tenant, max_concurrent_runs=1, max_steps_per_run=5)
    over = scripted(finish_turn(), limits={"max_steps": 6})
    resp = await stack.http.post("/v1/runs", json=over, headers=bearer(admin))
    assert resp.status_code == 422 and "max_steps_per_run=5" in resp.json()["detail"]

    slow = dict(NOOP_TURN, delay_seconds=1.0)
    blocking = scripted(*[slow] * 4, finish_turn(), limits={"max_steps": 5})
    first = await launch(stack, blocking, bearer(admin))

    # Counted exactly (the tenant's slots workflow): the very next launch is refused.
    quick = scripted(finish_turn(), limits={"max_steps": 1})
    resp = await stack.http.post("/v1/runs", json=quick, headers=bearer(admin))
    assert resp.status_code == 429, resp.text
    assert resp.json()["type"].endswith("/quota-exceeded")
    assert int(resp.headers["retry-after"]) > 0
    await stack.http.post(f"/v1/runs/{first}/cancel", json={}, headers=bearer(admin))

    queueing = await stack.http.put(
        f"/v1/admin/tenants/{tenant}/quota",
        json={"max_concurrent_runs": 1, "queue_when_busy": True},
        headers=stack.auth(Role.ADMIN),
    )
    assert queueing.status_code == 200 and queueing.json()["quota"]["queue_when_busy"] is True
    not_a_bool = await stack.http.put(
        f"/v1/admin/tenants/{tenant}/quota",
        json={"max_concurrent_runs": 1, "queue_when_busy": 1},
        headers=stack.auth(Role.ADMIN),
    )
    assert not_a_bool.status_code == 422
    own_quota = await stack.http.put(
        f"/v1/admin/tenants/{tenant}/quota", json={}, headers=bearer(admin)
    )
    assert own_quota.status_code == 403  # a tenant may not raise its own limits


async def test_usage_adds_up_across_runs_and_a_spent_budget_refuses_launches(
    stack: Stack,
) -> None:
    tenant = unique("usage")
    admin = await stack.new_tenant(tenant, token_budget=60)
    specs = [
        scripted(finish_turn(input_tokens=7, output_tokens=3)),
        scripted(NOOP_TURN, finish_turn(input_tokens=20, output_tokens=11)),
        scripted(finish_turn(input_tokens=12, output_tokens=8)),
    ]
    run_ids = [await launch(stack, spec, bearer(admin)) for spec in specs]
    # Only the first is looked at; the others are found by the reconciliation.
    views = [await wait_status(stack, run_ids[0], "completed", bearer(admin))]

    async def all_ended() -> bool:
        runs = (await stack.http.get("/v1/runs", headers=bearer(admin))).json()["runs"]
        return len(runs) == 3 and all(r["status"] == "completed" for r in runs)

    await wait_until(all_ended, timeout=60)
    usage = (await stack.http.get("/v1/usage", headers=bearer(admin))).json()
    for run_id in run_ids[1:]:
        views.append((await stack.http.get(f"/v1/runs/{run_id}", headers=bearer(admin))).json())
    assert usage["runs"] == 3 and {r["run_id"] for r in usage["by_run"]} == set(run_ids)
    assert usage["input_tokens"] == sum(v["usage"]["input_tokens"] for v in views) == 49
    assert usage["output_tokens"] == sum(v["usage"]["output_tokens"] for v in views) == 32
    assert usage["input_tokens"] == sum(r["input_tokens"] for r in usage["by_run"])
    # No tool executed anything (finish only): measured, and nothing to count.
    assert usage["tool_seconds"] == usage["sandbox_seconds"] == 0.0
    # The other tenants' runs are not in it.
    stack_usage = (await stack.http.get("/v1/usage")).json()
    assert not set(run_ids) & {r["run_id"] for r in stack_usage["by_run"]}

    spent = await stack.http.post("/v1/runs", json=scripted(finish_turn()), headers=bearer(admin))
    assert spent.status_code == 429 and spent.json()["type"].endswith("/budget-exhausted")
    assert int(spent.headers["retry-after"]) > 0


async def test_every_state_change_is_audited_whatever_its_outcome(stack: Stack) -> None:
    run_id = await launch(stack, scripted(finish_turn()))
    await wait_status(stack, run_id, "completed")
    late = await stack.http.post(f"/v1/runs/{run_id}/pause", json={})
    assert late.status_code == 409
    denied = await stack.http.post(
        f"/v1/runs/{run_id}/cancel", json={}, headers=stack.auth(Role.VIEWER)
    )
    assert denied.status_code == 403
    decided = await stack.http.post(
        f"/v1/runs/{run_id}/approvals/ap-x",
        json={"decision": "approve", "arguments_digest": FAKE_DIGEST},
        headers=stack.auth(Role.APPROVER),
    )
    assert decided.status_code == 409
    entries = (
        await stack.http.get("/v1/audit", params={"limit": 1000}, headers=stack.auth(Role.ADMIN))
    ).json()["entries"]
    about = {
        (e["action"], e["outcome"], e["actor"]) for e in entries if e["target"].startswith(run_id)
    }
    assert ("run.create", "ok", "operator") in about
    assert ("run.pause", "409", "operator") in about
    assert ("run.cancel", "403", "viewer") in about
    assert ("approval.approve", "409", "approver") in about
    created = next(e for e in entries if e["target"] == run_id and e["action"] == "run.create")
    assert created["tenant_id"] == stack.tenant and created["request_id"]
    assert all(e["action"] != "run.read" for e in entries)  # reads are not audited
    viewer = await stack.http.get("/v1/audit", headers=stack.auth(Role.VIEWER))
    assert viewer.status_code == 403
    verify = await stack.http.get("/v1/audit/verify", headers=stack.auth(Role.ADMIN))
    assert verify.json() == {"ok": True, "first_broken_seq": None}


async def test_refused_state_changes_are_audited_as_attempts_and_refused_reads_are_not(
    stack: Stack,
) -> None:
    target = f"/v1/runs/{unique('gone')}/cancel"
    operator = stack.keys[Role.OPERATOR]
    wrong_secret = operator[: operator.rindex("_") + 1] + "x" * 43
    tries = [
        ({}, 401),  # no key
        (bearer(wrong_secret), 401),  # a real key id, not its secret
        ({"X-Agentrun-Actor": "admin", **stack.auth(Role.OPERATOR)}, 400),
        ({"Origin": "https://evil.example"}, 403),
    ]
    for headers, status in tries:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as bare:
            resp = await bare.post(target, json={}, headers=headers)
        assert resp.status_code == status, resp.text
        assert resp.headers["x-request-id"]
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as bare:
        assert (await bare.get(target.removesuffix("/cancel"))).status_code == 401
    entries = (
        await stack.http.get(
            "/v1/audit",
            params={"actor": "anonymous", "limit": 1000},
            headers=stack.auth(Role.ADMIN),
        )
    ).json()["entries"]
    attempts = [e for e in entries if target.removesuffix("/cancel") in e["target"]]
    assert all(e["actor"] == "anonymous" and e["tenant_id"] == stack.tenant for e in attempts)
    got = sorted((e["action"], e["outcome"], e["key_id"] or "") for e in attempts)
    assert got == sorted(
        [
            ("run.cancel", "401 unauthenticated", ""),
            ("run.cancel", "401 unauthenticated", key_id(operator)),
            ("run.cancel", "400 actor-header-not-accepted", key_id(operator)),
            ("request.refused", "403 origin-not-allowed", ""),
        ]
    ), got
    assert all(e["target"] == f"POST {target}" for e in attempts)


async def test_the_api_documentation_needs_a_key_unless_made_public(
    stack: Stack, client: Client, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as bare:
        for page in ("/openapi.json", "/docs", "/redoc"):
            assert (await bare.get(page)).status_code == 401, page
        assets = await bare.get("/docs/assets/swagger-ui.css")
        assert assets.status_code == 200  # the bundled library files hold no data
    viewer = await stack.http.get("/openapi.json", headers=stack.auth(Role.VIEWER))
    assert viewer.status_code == 200 and "/v1/runs" in viewer.json()["paths"]
    settings = api_settings(tmp_path, "tq-public-docs", api_public_docs=True)
    async with serve_api(settings, client) as url, httpx.AsyncClient(base_url=url) as bare:
        for page in ("/openapi.json", "/docs", "/redoc"):
            assert (await bare.get(page)).status_code == 200, page
        assert (await bare.get("/v1/runs")).status_code == 401


async def test_an_altered_audit_entry_fails_verification_naming_it(
    client: Client, tmp_path: Path
) -> None:
    async with api_stack(client, tmp_path) as stack:
        for _ in range(3):
            await stack.new_key(unique("k"), Role.VIEWER)
        admin = stack.auth(Role.ADMIN)
        entries = (await stack.http.get("/v1/audit", headers=admin)).json()["entries"]
        assert len(entries) >= 4
        assert (await stack.http.get("/v1/audit/verify", headers=admin)).json()["ok"] is True
        victim = entries[1]["seq"]
        with sqlite3.connect(tmp_path / "agentrun.db") as db:
            db.execute("UPDATE audit_log SET actor = 'nobody' WHERE seq = ?", (victim,))
        verify = (await stack.http.get("/v1/audit/verify", headers=admin)).json()
        assert verify == {"ok": False, "first_broken_seq": victim}


async def test_rate_limit_answers_429_with_retry_after_and_ratelimit_headers(
    client: Client, tmp_path: Path
) -> None:
    async with api_stack(
        client, tmp_path, api_rate_limit_per_minute=1, api_rate_limit_burst=5
    ) as stack:
        key = await stack.new_key("chatty", Role.VIEWER)
        answers = [await stack.http.get("/v1/runs", headers=bearer(key)) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 5 + [429]
        assert answers[0].headers["ratelimit-limit"] == "5"
        assert [a.headers["ratelimit-remaining"] for a in answers[:5]] == ["4", "3", "2", "1", "0"]
        assert int(answers[5].headers["retry-after"]) >= 1
        assert answers[5].json()["type"].endswith("/rate-limited")
        # Another key has its own bucket.
        assert (await stack.http.get("/v1/runs")).status_code == 200


class _Terminal(io.StringIO):
    """stderr as a person's terminal (what `isatty` says is all that differs)."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_the_first_admin_key_is_shown_on_a_terminal_and_never_written_to_a_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    stderr = _Terminal() if terminal else io.StringIO()  # a service's log file
    monkeypatch.setattr(sys, "stderr", stderr)
    conn = AccountsConnection(load_settings(state_dir=tmp_path))
    try:
        key = conn.open()
    finally:
        conn.close()
    assert key is not None
    stored = (tmp_path / "admin.key").read_text().strip()
    assert stored == key
    said = stderr.getvalue()
    assert str(tmp_path / "admin.key") in said
    assert (key in said) is terminal
