"""Property-based fuzzing of the REST API from its own OpenAPI document (Schemathesis).

Every operation gets a bounded number of generated requests (valid and invalid)
against a real uvicorn server and the real Temporal dev server. The properties:
never a 5xx, every status code and content type is the one the document
declares, every JSON body matches its declared schema, and invalid input is
refused with a 4xx.

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

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from tests.api_fixtures import _Server, api_settings
from tests.model_fixtures import free_port

FUZZ_TENANT = "fuzz"
MAX_EXAMPLES = 50


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


@pytest.fixture(scope="module")
def fuzz_url(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    target = temporal_env.client.service_client.config.target_host
    app_settings = api_settings(
        Path(tmp_path_factory.mktemp("fuzz-state")),
        f"tq-fuzz-{uuid.uuid4().hex[:8]}",
        temporal_address=target,
        dev_tenant=FUZZ_TENANT,
        api_query_timeout_seconds=0.5,
        api_update_timeout_seconds=1.0,
        api_max_body_bytes=64 * 1024,
    )
    port = free_port()
    # Its own thread and loop, so Schemathesis' synchronous requests can reach it.
    server = _Server(
        uvicorn.Config(create_app(app_settings), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        _in_new_loop(_terminate_fuzz_runs(target))


def _document() -> dict[str, Any]:
    """The exact document the server serves (it does not depend on settings values)."""
    doc: dict[str, Any] = create_app(api_settings(Path("/nonexistent"), "unused")).openapi()
    return doc


schema = schemathesis.openapi.from_dict(_document())


@schemathesis.check
def rejects_invalid_input(ctx: Any, response: Any, case: schemathesis.Case[Any]) -> bool | None:
    """Schemathesis' negative-data check, accepting 413 as a rejection too (an
    oversized invalid body is refused before it is parsed)."""
    if response.status_code == 413:
        return None
    result: bool | None = negative_data_rejection(ctx, response, case)
    return result


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
    response = case.call_and_validate(
        base_url=fuzz_url,
        timeout=15,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            rejects_invalid_input,
        ],
    )
    assert response.status_code < 500, response.text
