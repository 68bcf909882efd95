"""Each worker's janitor cleans the sandboxes it created, and adopts a gone worker's.

Two sandboxes with different owners (as two workers on one Docker engine) share a
namespace. On real Docker with the caller's answers given directly: B's janitor
leaves A's container and volume of an ended run while A lives, A's own janitor
removes them, B removes them once A is gone, a live run's are kept even then,
unlabelled objects keep the old rule, and a pool both fill is trimmed back to its
size by each janitor removing only its own surplus. On real Docker and a real
Temporal dev server, through the worker's own wiring (`liveness_checker`,
`owner_checker`): the owners that are alive are those whose polls Temporal lists,
one that stops polling is adopted after the (here shortened) grace, and with
Temporal unreachable nothing is removed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import docker
import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from agentrun.config import load_settings
from sandbox._containers import LABEL_OWNER
from sandbox._pool import list_pool
from sandbox.base import JanitorReport, RunRef
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from sandbox.owners import OwnerGone
from tests.conftest import dev_server
from tests.sandbox_fixtures import leftovers, new_run, sh
from worker import liveness_checker, owner_checker, poller_stamps

A, B = "101@host-a", "202@host-b"

GRACE_S = 4.0
"""The shortened `OWNER_SILENT_S`: several of the test server's one-second long polls."""

SHORT_POLL = '"1s"'
"""Temporal's idle long poll returns after this (a minute by default), so a polling
worker's stamp moves every second and a grace of seconds tells it from a stopped one."""


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
    """The namespace's container and volume names, sorted (Docker lists in any order)."""
    containers, volumes = leftovers(sandbox.config.namespace)
    return sorted(containers), sorted(volumes)


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


def test_two_live_workers_trim_the_pool_they_share_to_its_size_each_removing_only_its_own(
    pair: tuple[DockerSandbox, DockerSandbox],
) -> None:
    # Both workers have the same settings, so one pool. A filled it; B's refill raced
    # A's (here: B creates one anyway), so the pool holds one too many. Had each
    # janitor counted only its own, each would see one, within the size, and the
    # surplus would stay for good.
    a, b = (dataclasses.replace(s.config, pool_size=1) for s in pair)
    a_pool, b_pool = DockerSandbox(a), DockerSandbox(b)
    client = docker.from_env()
    try:
        assert a_pool.warm_pool() == 1
        b_pool._pool._create_one()  # a refill that raced A's
        pool = list_pool(client, a.namespace, a.pool_id)
        assert len(pool) == 2
        owner = {
            c.name: client.api.inspect_container(c.id)["Config"]["Labels"][LABEL_OWNER]
            for c in pool
        }
        removed: dict[str, list[str]] = {}
        for sandbox in (a_pool, b_pool):
            report = sandbox.janitor(lambda run: True, lambda owner: False)
            removed[sandbox.config.owner] = report.removed_containers
        assert len(list_pool(client, a.namespace, a.pool_id)) == 1
        assert sum(len(names) for names in removed.values()) == 1
        for who, names in removed.items():
            assert all(owner[name] == who for name in names), removed
    finally:
        a_pool.close()
        b_pool.close()


# ====================================================================== with Temporal


@pytest.fixture(scope="module")
async def short_poll_client() -> AsyncIterator[Client]:
    async with dev_server(
        "--dynamic-config-value", f"matching.longPollExpirationInterval={SHORT_POLL}"
    ) as env:
        yield env.client


async def _worker_client(server: Client, identity: str) -> Client:
    """A client of its own, named `identity` (every client of this test process would
    otherwise be `pid@host`, one owner)."""
    return await Client.connect(
        server.service_client.config.target_host, namespace=server.namespace, identity=identity
    )


@activity.defn(name="ownership_noop")
async def noop() -> None:
    return None


async def _until_polling(client: Client, task_queue: str, identity: str) -> None:
    for _ in range(200):
        stamps = await poller_stamps(client, task_queue)
        if stamps and identity in stamps:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{identity} never listed as polling {task_queue}")


async def _sweep(
    sandbox: DockerSandbox, is_live: Callable[[RunRef], bool], owners: Callable[[], OwnerGone]
) -> JanitorReport:
    """One sweep as `worker.janitor_loop` runs it: in a thread, asking for owners first."""
    return await asyncio.to_thread(lambda: sandbox.janitor(is_live, owners()))


async def test_a_polling_workers_sandboxes_are_left_to_it_and_adopted_once_it_stops_polling(
    short_poll_client: Client, sandbox_config: SandboxConfig
) -> None:
    task_queue = f"tq-own-{uuid.uuid4().hex[:8]}"
    settings = load_settings(task_queue=task_queue, sandbox_retention_hours=0)
    ids = {who: f"{who}-{uuid.uuid4().hex[:6]}@test" for who in ("a", "b")}
    clients = {who: await _worker_client(short_poll_client, ids[who]) for who in ids}
    workers = {who: Worker(clients[who], task_queue=task_queue, activities=[noop]) for who in ids}
    namespace = f"own-{uuid.uuid4().hex[:8]}"
    shared = dataclasses.replace(sandbox_config, namespace=namespace)
    a = DockerSandbox(dataclasses.replace(shared, owner=ids["a"]))
    b = DockerSandbox(dataclasses.replace(shared, owner=ids["b"]))
    loop = asyncio.get_running_loop()
    # The runs have no workflow at all: Temporal says they are not live.
    is_live = liveness_checker(short_poll_client, settings, loop)
    a_owners = owner_checker(clients["a"], settings, loop, silent_s=GRACE_S)
    b_owners = owner_checker(clients["b"], settings, loop, silent_s=GRACE_S)
    running = [asyncio.create_task(worker.run()) for worker in workers.values()]
    try:
        for identity in ids.values():
            await _until_polling(short_poll_client, task_queue, identity)
        assert (await asyncio.to_thread(sh, a, new_run(), "echo a > f.txt")).exit_code == 0
        first = _objects(a)
        assert first[0] and first[1]
        # While A polls, B's janitor leaves its sandbox alone, for several graces.
        watched = time.monotonic()
        while time.monotonic() - watched < 3 * GRACE_S:
            report = await _sweep(b, is_live, b_owners)
            assert report.removed_containers == [] and report.removed_volumes == [], report
            await asyncio.sleep(0.5)
        assert _objects(a) == first
        # A's own janitor removes it.
        report = await _sweep(a, is_live, a_owners)
        assert (report.removed_containers, report.removed_volumes) == first
        # A's next sandbox outlives A: its worker stops polling, and after the grace
        # B's janitor adopts the sandbox of the ended run.
        assert (await asyncio.to_thread(sh, a, new_run(), "true")).exit_code == 0
        second = _objects(a)
        await workers["a"].shutdown()
        for _ in range(120):
            report = await _sweep(b, is_live, b_owners)
            if report.removed_containers:
                break
            await asyncio.sleep(0.5)
        assert (report.removed_containers, report.removed_volumes) == second
        assert _objects(a) == ([], [])
    finally:
        for worker in workers.values():
            if not worker.is_shutdown:
                await worker.shutdown()
        await asyncio.gather(*running, return_exceptions=True)
        a.close()
        b.close()
        leftovers(namespace, remove=True)


async def test_with_temporal_unreachable_a_janitor_removes_nothing(
    pair: tuple[DockerSandbox, DockerSandbox],
) -> None:
    a, b = pair
    legacy = DockerSandbox(dataclasses.replace(a.config, owner=""))
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = await Client.connect(f"127.0.0.1:{port}", identity=B, lazy=True)
    settings = load_settings(task_queue=f"tq-own-{uuid.uuid4().hex[:8]}")
    loop = asyncio.get_running_loop()
    runs = {A: new_run(), B: new_run(), "": new_run()}
    try:
        for sandbox, run in ((a, runs[A]), (b, runs[B]), (legacy, runs[""])):
            assert (await asyncio.to_thread(sh, sandbox, run, "true")).exit_code == 0
        before = _objects(a)
        assert len(before[0]) == 3  # another worker's, B's own, and an unlabelled one
        owners = owner_checker(unreachable, settings, loop, silent_s=GRACE_S)
        is_live = liveness_checker(unreachable, settings, loop)
        report = await _sweep(b, is_live, owners)
        assert report.removed_containers == [] and report.removed_volumes == []
        assert _objects(a) == before
        # Even told that every run has ended, B counts nobody as gone: A's stay.
        gone = await asyncio.to_thread(owners)
        await asyncio.to_thread(b.janitor, _ended, gone)
        assert _objects(a)[0] == [c for c in before[0] if runs[A].run_id in c]
    finally:
        legacy.close()
