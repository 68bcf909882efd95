"""The search attributes are named once (`agentrun.search_attributes`) and read by all.

The server the suite runs on registered exactly these (conftest), and the dev
stack registers them with the types the Temporal CLI expects.
"""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client

from agentrun import search_attributes
from agentrun.config import load_settings
from agentrun.temporal import ensure_search_attributes
from cli.devstack import DevStack


def test_every_search_attribute_is_an_agentrun_attribute_with_a_cli_type() -> None:
    names = [key.name for key in search_attributes.ALL]
    assert len(set(names)) == len(names)
    assert all(name.startswith("AgentRun") for name in names)
    kinds = {key.name: search_attributes.index_kind(key) for key in search_attributes.ALL}
    assert kinds["AgentRunLabels"] == "KeywordList"
    assert kinds["AgentRunSteps"] == "Int"
    assert set(kinds.values()) <= {"Keyword", "KeywordList", "Int"}


async def test_the_server_has_every_search_attribute_registered(client: Client) -> None:
    # Registration is idempotent: the session's server already has them all.
    assert await ensure_search_attributes(client, client.namespace) == []


def test_the_dev_stack_registers_every_search_attribute_with_its_type(tmp_path: Path) -> None:
    stack = DevStack(load_settings(state_dir=tmp_path))
    temporal = next(s for s in stack.services() if s.name == "temporal")
    flags = {a for a in temporal.command if a.startswith("--search-attribute=")}
    assert flags == {
        f"--search-attribute={key.name}={search_attributes.index_kind(key)}"
        for key in search_attributes.ALL
    }
