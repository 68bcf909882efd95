"""Property-based fuzzing of the REST API from its own OpenAPI document (Schemathesis).

Every operation gets a bounded number of generated requests (valid and invalid)
against a real uvicorn server and the real Temporal dev server, validated by every
check Schemathesis has (none excluded): never a 5xx; every status code, content
type, header and body the one the document declares; every request the document
calls valid accepted, and every invalid one refused with a 4xx; `Allow` headers
that list exactly the documented methods.

The document is the deployment's own, the one the server serves: its limits
(sandbox maxima and images, no network, no webhook secret so `webhook` must be
null, token ceilings) are what the valid requests keep to.

No worker polls the fuzz task queue: runs the fuzzer launches stay queued (reads
fall back to visibility data quickly) and are terminated when the module ends.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import ChecksConfig, SchemathesisConfig
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from agentrun.config import Settings
from api.app import create_app
from api.server import uvicorn_config
from tests.api_fixtures import _Server, api_settings
from tests.model_fixtures import free_port

FUZZ_TENANT = "fuzz"
MAX_EXAMPLES = 50
BODY_LIMIT = 64 * 1024
BODY_TOO_LARGE = "413"
"""A body over `AGENTRUN_API_MAX_BODY_BYTES` is refused before it is parsed, valid or
not (a byte count JSON Schema cannot state; the document lists the 413 on every
operation with a body)."""


def fuzz_settings(state_dir: Path, task_queue: str, **overrides: Any) -> Settings:
    """The deployment under test: no webhook secret, the default sandbox limits."""
    return api_settings(
        state_dir,
        task_queue,
        dev_tenant=FUZZ_TENANT,
        webhook_secret=None,
        api_query_timeout_seconds=0.5,
        api_update_timeout_seconds=1.0,
        api_max_body_bytes=BODY_LIMIT,
        # One key makes every request: its rate limit must not be what is fuzzed.
        api_rate_limit_burst=1_000_000,
        **overrides,
    )


def _in_new_loop(coro: Any) -> Any:
    """Run a coroutine on a private loop in another thread (the test itself is sync)."""
    box: dict[str, Any] = {}

    def target() -> None:
        box["value"] = asyncio.run(coro)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    return box.get("value")


async def _terminate_fuzz_runs(target: str) -> int:
    client = await Client.connect(target, data_converter=pydantic_data_converter)
    count = 0
    async for wf in client.list_workflows(
        f"AgentRunTenant = '{FUZZ_TENANT}' AND ExecutionStatus = 'Running'"
    ):
        await client.get_workflow_handle(wf.id).terminate("fuzz test cleanup")
        count += 1
    return count


def _fuzz_key(url: str, settings: Settings) -> str:
    """An admin key of the fuzz tenant that may act for users (every route, every header)."""
    admin = settings.admin_key_path.read_text().strip()
    resp = httpx.post(
        f"{url}/v1/admin/tenants/{FUZZ_TENANT}/keys",
        json={"role": "admin", "subject": "fuzzer", "act_as": True},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=15,
    )
    assert resp.status_code == 201, resp.text
    key: str = resp.json()["api_key"]
    return key


@pytest.fixture(scope="module")
def fuzz_url(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The served API's URL (and the fuzzer's key in `FUZZ_KEY`)."""
    target = temporal_env.client.service_client.config.target_host
    app_settings = fuzz_settings(
        Path(tmp_path_factory.mktemp("fuzz-state")),
        f"tq-fuzz-{uuid.uuid4().hex[:8]}",
        temporal_address=target,
    )
    app = create_app(app_settings)
    assert app.openapi() == DOCUMENT, "the fuzzed document is not the one the server serves"
    port = free_port()
    # Its own thread and loop, so Schemathesis' synchronous requests can reach it.
    server = _Server(
        uvicorn_config(app, app_settings, host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    FUZZ_KEY["key"] = _fuzz_key(url, app_settings)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        _in_new_loop(_terminate_fuzz_runs(target))


DOCUMENT: dict[str, Any] = create_app(fuzz_settings(Path("/nonexistent"), "unused")).openapi()
"""The deployment's document (its settings' state directory and queue do not show in it)."""

DEFAULTS = ChecksConfig()
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=SchemathesisConfig.from_dict(
        {
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": [
                        *DEFAULTS.positive_data_acceptance.expected_statuses,
                        BODY_TOO_LARGE,
                    ]
                },
                "negative_data_rejection": {
                    "expected-statuses": [
                        *DEFAULTS.negative_data_rejection.expected_statuses,
                        BODY_TOO_LARGE,
                    ]
                },
            },
            "operations": [
                {
                    # `expires_at` must be in the future, which JSON Schema cannot state.
                    "include-path": "/v1/admin/tenants/{tenant}/keys",
                    "include-method": "POST",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": [
                                *DEFAULTS.positive_data_acceptance.expected_statuses,
                                BODY_TOO_LARGE,
                                "422",
                            ]
                        }
                    },
                }
            ],
        }
    ),
)


FUZZ_KEY: dict[str, str] = {}
"""The fuzzer's API key, created when the server starts."""
KEY_PLACEHOLDER = "fuzzer-key"


@schema.auth()
class FuzzerKey:
    """Schemathesis' auth provider: it knows the key is the auth, so it does not also
    generate (and then see overridden) `Authorization` headers of its own."""

    def get(self, case: schemathesis.Case[Any], context: Any) -> str:
        # Cases are built at collection, before the server (and its key) exists: a
        # placeholder, swapped for the key when the case is sent.
        return KEY_PLACEHOLDER

    def set(self, case: schemathesis.Case[Any], data: str, context: Any) -> None:
        case.headers["Authorization"] = f"Bearer {data}"


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_never_answers_5xx_and_matches_its_openapi(
    case: schemathesis.Case[Any], fuzz_url: str
) -> None:
    if case.headers.get("Authorization") == f"Bearer {KEY_PLACEHOLDER}":
        case.headers["Authorization"] = f"Bearer {FUZZ_KEY['key']}"
    # No `checks=`: every check Schemathesis registers runs (`ignored_auth` sends each
    # request again without the key and expects a 401).
    response = case.call_and_validate(base_url=fuzz_url, timeout=15)
    assert response.status_code < 500, response.text
