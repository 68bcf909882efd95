"""Each worker's janitor cleans the sandboxes it created, and adopts a gone worker's.

Two sandboxes with different owners (as two workers on one Docker engine) share a
namespace. On real Docker: B's janitor leaves A's container and volume of an ended
run while A lives, A's own janitor removes them, B removes them once A is gone, and
objects without an owner label keep the old rule. On the real Temporal dev server:
the owners that count as alive are the workers polling the task queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from agentrun.config import load_settings
from sandbox.base import RunRef
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from tests.sandbox_fixtures import leftovers, new_run, sh
from worker import owner_checker, polling_identities

A, B = "101@host-a", "202@host-b"


@pytest.fixture
def pair(sandbox_config: SandboxConfig) -> Iterator[tuple[DockerSandbox, DockerSandbox]]:
    namespace = f"own-{uuid.uuid4().hex[:8]}"
    shared = dataclasses.replace(sandbox_config, namespace=namespace)
    a = DockerSandbox(dataclasses.replace(shared, owner=A))
    b = DockerSandbox(dataclasses.replace(shared, owner=B))
    try:
        yield a, b
    finally:
        a.close()
        b.close()
        leftovers(namespace, remove=True)


def _objects(sandbox: DockerSandbox) -> tuple[list[str], list[str]]:
    return leftovers(sandbox.config.namespace)


def _ended(_run: RunRef) -> bool:
    return False  # every run has ended


def test_another_workers_sandbox_is_left_to_it_while_it_lives(
    pair: tuple[DockerSandbox, DockerSandbox],
) -> None:
    a, b = pair
    run = new_run()
    assert sh(a, run, "echo mine > file.txt").exit_code == 0
    containers, volumes = _objects(a)
    assert containers and volumes
    report = b.janitor(_ended, lambda owner: False)
    assert not report.removed_containers and not report.removed_volumes
    assert _objects(a) == (containers, volumes)
    # Its creator's janitor removes them.
    report = a.janitor(_ended, lambda owner: False)
    assert report.removed_containers == containers and report.removed_volumes == volumes
    assert _objects(a) == ([], [])


def test_a_gone_workers_sandbox_is_adopted(pair: tuple[DockerSandbox, DockerSandbox]) -> None:
    a, b = pair
    assert sh(a, new_run(), "true").exit_code == 0
    containers, volumes = _objects(a)
    report = b.janitor(_ended, lambda owner: owner == A)
    assert report.removed_containers == containers and report.removed_volumes == volumes


def test_a_live_runs_sandbox_of_a_gone_worker_is_kept(
    pair: tuple[DockerSandbox, DockerSandbox],
) -> None:
    a, b = pair
    assert sh(a, new_run(), "true").exit_code == 0
    before = _objects(a)
    report = b.janitor(lambda run: True, lambda owner: True)
    assert not report.removed_containers and _objects(a) == before


def test_unlabelled_objects_keep_the_rule_that_any_janitor_judges_them(
    pair: tuple[DockerSandbox, DockerSandbox],
) -> None:
    a, b = pair
    legacy = DockerSandbox(dataclasses.replace(a.config, owner=""))
    try:
        assert sh(legacy, new_run(), "true").exit_code == 0
        containers, _ = _objects(a)
        report = b.janitor(_ended, lambda owner: False)
        assert report.removed_containers == containers
    finally:
        legacy.close()


@activity.defn(name="ownership_noop")
async def noop() -> None:
    return None


async def test_the_owners_alive_are_the_workers_polling_the_task_queue(client: Client) -> None:
    task_queue = f"tq-own-{uuid.uuid4().hex[:8]}"
    settings = load_settings(task_queue=task_queue)
    async with Worker(client, task_queue=task_queue, activities=[noop]):
        alive: set[str] | None = set()
        for _ in range(100):  # until the worker's first poll is listed
            alive = await polling_identities(client, task_queue)
            if alive and client.identity in alive:
                break
            await asyncio.sleep(0.1)
        assert alive is not None and client.identity in alive
        loop = asyncio.get_running_loop()
        owner_gone = await asyncio.to_thread(owner_checker(client, settings, loop))
        assert owner_gone(client.identity) is False
        assert owner_gone("999@a-worker-that-stopped") is True


async def test_when_this_worker_is_not_listed_nobody_counts_as_gone(client: Client) -> None:
    # A queue nobody polls: Temporal's listing cannot be trusted about anyone.
    settings = load_settings(task_queue=f"tq-own-{uuid.uuid4().hex[:8]}")
    loop = asyncio.get_running_loop()
    owner_gone = await asyncio.to_thread(owner_checker(client, settings, loop))
    assert owner_gone("999@a-worker-that-stopped") is False
