"""A spec over the deployment's limits is refused at launch (422), not at its first tool call.

The deployment here allows at most 2048 MB, 1.5 CPUs, 512 pids and a 4096 MB
workspace, two images and no network. Nothing polls the task queue: the runs
this module starts stay queued and are terminated when it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from agentrun.config import Settings
from agentrun.contracts import RunSpec
from api.admission import MAX_TOKEN_BUDGET, MAX_TURN_TOKENS, refusals
from tests.api_fixtures import admin_headers, api_settings, finish_turn, scripted, serve_api

EXTRA_IMAGE = "python:3.12-slim"
MAXIMA: dict[str, Any] = {
    "sandbox_max_memory_mb": 2048,
    "sandbox_max_cpus": 1.5,
    "sandbox_max_pids": 512,
    "sandbox_max_workspace_mb": 4096,
}
AT_MAX = {"memory_mb": 2048, "cpus": 1.5, "pids": 512, "workspace_mb": 4096}
OVER_MAX: list[tuple[str, Any, str, str]] = [
    # (field, value asked for, the maximum as the message writes it, its setting)
    ("memory_mb", 1048576, "2048", "AGENTRUN_SANDBOX_MAX_MEMORY_MB"),
    ("cpus", 1.75, "1.5", "AGENTRUN_SANDBOX_MAX_CPUS"),
    ("pids", 513, "512", "AGENTRUN_SANDBOX_MAX_PIDS"),
    ("workspace_mb", 4097, "4096", "AGENTRUN_SANDBOX_MAX_WORKSPACE_MB"),
]


def _settings(state_dir: Path, **overrides: Any) -> Settings:
    return api_settings(
        state_dir,
        f"tq-admission-{uuid.uuid4().hex[:8]}",
        sandbox_image_allowlist=[EXTRA_IMAGE],
        **MAXIMA,
        **overrides,
    )


@pytest.fixture(scope="module")
async def api(
    client: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    settings = _settings(tmp_path_factory.mktemp("admission"))
    async with (
        serve_api(settings, client) as url,
        httpx.AsyncClient(base_url=url, headers=admin_headers(settings)) as http,
    ):
        yield http, settings
    async for wf in client.list_workflows(
        f"TaskQueue = '{settings.task_queue}' AND ExecutionStatus = 'Running'"
    ):
        await client.get_workflow_handle(wf.id).terminate("admission test cleanup")


def _spec(**sandbox: Any) -> dict[str, Any]:
    return scripted(finish_turn(), sandbox=sandbox)


@pytest.mark.parametrize(("field", "value", "maximum", "variable"), OVER_MAX)
async def test_a_sandbox_value_over_the_maximum_is_422_naming_the_maximum(
    api: tuple[httpx.AsyncClient, Settings], field: str, value: Any, maximum: str, variable: str
) -> None:
    http, _ = api
    resp = await http.post("/v1/runs", json=_spec(**{field: value}))
    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert f"maximum of {maximum} ({variable})" in problem["detail"]
    assert f"ask for at most {maximum}" in problem["detail"]
    assert f"sandbox.{field}={value}" in problem["detail"]  # as the client wrote it
    assert problem["errors"] == [
        {"loc": ["body", "sandbox", field], "msg": problem["detail"], "type": "less_than_equal"}
    ]


async def test_an_image_outside_the_allow_list_is_422_listing_the_allowed_ones(
    api: tuple[httpx.AsyncClient, Settings],
) -> None:
    http, settings = api
    resp = await http.post("/v1/runs", json=_spec(image="alpine:latest"))
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert "'alpine:latest' is not in this deployment's allow-list" in detail
    assert settings.sandbox_image in detail and EXTRA_IMAGE in detail
    assert "AGENTRUN_SANDBOX_IMAGE_ALLOWLIST" in detail


async def test_network_where_the_deployment_forbids_it_is_422(
    api: tuple[httpx.AsyncClient, Settings],
) -> None:
    http, _ = api
    resp = await http.post("/v1/runs", json=_spec(network=True))
    assert resp.status_code == 422, resp.text
    assert "AGENTRUN_SANDBOX_ALLOW_NETWORK" in resp.json()["detail"]


async def test_every_refusal_of_one_spec_is_listed(api: tuple[httpx.AsyncClient, Settings]) -> None:
    http, _ = api
    resp = await http.post("/v1/runs", json=_spec(image="alpine:latest", memory_mb=4096, pids=9999))
    assert resp.status_code == 422, resp.text
    assert [e["loc"][-1] for e in resp.json()["errors"]] == ["image", "memory_mb", "pids"]


async def test_a_spec_at_every_maximum_with_an_allowed_image_is_launched(
    api: tuple[httpx.AsyncClient, Settings],
) -> None:
    http, _ = api
    resp = await http.post("/v1/runs", json=_spec(image=EXTRA_IMAGE, **AT_MAX))
    assert resp.status_code == 201, resp.text


async def test_the_openapi_document_states_the_deployments_limits(
    api: tuple[httpx.AsyncClient, Settings],
) -> None:
    http, settings = api
    schemas = (await http.get("/openapi.json")).json()["components"]["schemas"]
    policy = schemas["SandboxPolicy"]["properties"]

    def maximum(name: str) -> float:
        return float(next(b["maximum"] for b in policy[name]["anyOf"] if "maximum" in b))

    assert maximum("memory_mb") == 2048 and maximum("cpus") == 1.5
    assert maximum("pids") == 512 and maximum("workspace_mb") == 4096
    image = next(b for b in policy["image"]["anyOf"] if b.get("type") == "string")
    assert image["enum"] == [settings.sandbox_image, EXTRA_IMAGE]
    assert policy["network"]["const"] is False
    assert "refused, never clamped" in schemas["SandboxPolicy"]["description"]
    assert "AGENTRUN_WEBHOOK_SECRET" in schemas["RunSpec"]["properties"]["webhook"]["description"]
    budget = schemas["Limits"]["properties"]["max_tokens"]["anyOf"]
    assert {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN_BUDGET} in budget


def test_token_ceilings_are_checked_at_launch_but_not_by_the_durable_model(
    tmp_path: Path,
) -> None:
    # The model still reads a spec over the ceilings: a run launched before they
    # existed must replay.
    spec = RunSpec.model_validate(
        scripted(
            {"content": "x", "input_tokens": MAX_TURN_TOKENS + 1},
            limits={"max_tokens": MAX_TOKEN_BUDGET + 1},
        )
    )
    found = refusals(_settings(tmp_path), spec)
    assert [r.loc for r in found] == [
        ("limits", "max_tokens"),
        ("model", "script", 0, "input_tokens"),
    ]
    assert all(r.type == "less_than_equal" for r in found)


def test_a_deployment_default_over_its_maximum_is_a_configuration_error(tmp_path: Path) -> None:
    from agentrun.config import ConfigError

    with pytest.raises(ConfigError, match="AGENTRUN_SANDBOX_MAX_MEMORY_MB"):
        _settings(tmp_path, sandbox_memory_mb=4096)


async def test_an_egress_rule_to_loopback_the_operator_did_not_allow_is_422(
    api: tuple[httpx.AsyncClient, Settings],
) -> None:
    http, _ = api
    spec = scripted(finish_turn(), egress=[{"host": "127.0.0.1", "scheme": "http"}])
    resp = await http.post("/v1/runs", json=spec)
    assert resp.status_code == 422, resp.text
    (error,) = resp.json()["errors"]
    assert error["loc"] == ["body", "egress", "0", "host"]
    assert error["type"] == "egress_destination_refused"
    assert "AGENTRUN_EGRESS_ALLOW_NETWORKS" in error["msg"]


async def test_an_egress_credential_from_a_secret_not_granted_is_422_naming_it(
    api: tuple[httpx.AsyncClient, Settings],
) -> None:
    http, _ = api
    rule = {"host": "api.example.com", "inject": {"secret": "GH", "header": "Authorization"}}
    resp = await http.post("/v1/runs", json=scripted(finish_turn(), egress=[rule]))
    assert resp.status_code == 422, resp.text
    assert "must be listed in secrets: GH" in resp.text
