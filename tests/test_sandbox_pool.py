"""The warm pool and the janitor under concurrency: claims, sweeps and removals racing.

Real Docker and real executors, nothing mocked. Each test repeats a bounded number of
rounds so that a race a single pass may miss shows up, and asserts outcomes (errors
raised, containers removed, workspaces seen), never timings.

What they guard (issue 9, defect 3): under load, runs failed with `list pool: Docker
refused (404)` because docker-py's `containers.list` inspects each listed container
and one removed in between failed the whole listing; and a janitor that listed a pool
container could remove it after a run had claimed it. (Issue 10:) two workers with
different pool sizes on one Docker host removed each other's pool containers.
"""

from __future__ import annotations

import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import docker
import docker.errors
import pytest

from sandbox import _names
from sandbox._connections import Connections
from sandbox._containers import LABEL_MANAGED, LABEL_NAMESPACE, LABEL_POOL
from sandbox._docker_errors import docker_errors
from sandbox._janitor import JANITOR_OWNER
from sandbox._pool import claim_owner, list_pool
from sandbox.base import RunRef, SandboxPolicyError, SandboxUnavailable
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from tests.sandbox_fixtures import Trimmer, leftovers, new_run, sh

pytestmark = pytest.mark.docker

ROUNDS = 3
"""Rounds per test: each is one burst of concurrent claims (or removals)."""
CLAIMERS = 8
"""Runs claiming at once per round, against a pool of `POOL_SIZE`."""
POOL_SIZE = 3
JOIN_S = 300.0
"""Upper bound on a round's threads, so a hang fails the test instead of the suite."""


@pytest.fixture
def pool_config(sandbox_config: SandboxConfig) -> Iterator[SandboxConfig]:
    """A namespace of this test's own, so its pool and janitor touch nothing else."""
    config = replace(
        sandbox_config, namespace=f"agentrun-test-{uuid.uuid4().hex[:8]}", pool_size=POOL_SIZE
    )
    try:
        yield config
    finally:
        leftovers(config.namespace, remove=True)


def race(
    targets: list[Callable[[], object]], meanwhile: Sequence[Callable[[], object]] = ()
) -> list[BaseException]:
    """Run `targets` in threads started together, repeating each step of `meanwhile`
    (at least once) until the targets are done; returns the exceptions raised."""
    errors: list[BaseException] = []
    done = threading.Event()
    start = threading.Barrier(len(targets) + len(meanwhile))

    def guarded(step: Callable[[], object], repeat: bool) -> None:
        try:
            start.wait(timeout=JOIN_S)
            step()
            while repeat and not done.is_set():
                step()
        except BaseException as exc:
            errors.append(exc)

    main = [threading.Thread(target=guarded, args=(t, False), daemon=True) for t in targets]
    background = [threading.Thread(target=guarded, args=(s, True), daemon=True) for s in meanwhile]
    for thread in [*main, *background]:
        thread.start()
    for thread in main:
        thread.join(timeout=JOIN_S)
    done.set()
    for thread in background:
        thread.join(timeout=JOIN_S)
    assert not any(t.is_alive() for t in [*main, *background]), "a thread hung"
    return errors


def described(errors: list[BaseException]) -> str:
    """The errors with their tracebacks: a race that fails once must say where."""
    return "\n".join("".join(traceback.format_exception(e)) for e in errors)


def remove_quietly(client: Any, name: str) -> None:
    """`docker rm -f` by name; the container may be gone (or renamed) already."""
    try:
        client.api.remove_container(name, force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # removal already in progress
            raise


class RenamesAndRemovals:
    """Docker's own record of the namespace's renames and removals, read as they happen."""

    def __init__(self, client: Any, config: SandboxConfig) -> None:
        self.renamed_to: dict[str, str] = {}
        self.destroyed: set[str] = set()
        self._client = client
        self._config = config
        self._seen = threading.Condition()
        self._stream = client.events(
            decode=True,
            filters={
                "type": "container",
                "event": ["rename", "destroy"],
                "label": f"{LABEL_NAMESPACE}={config.namespace}",
            },
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for event in self._stream:
            cid = event.get("id", "")
            with self._seen:
                if event.get("Action") == "rename":
                    self.renamed_to[cid] = event["Actor"]["Attributes"]["name"].lstrip("/")
                elif event.get("Action") == "destroy":
                    self.destroyed.add(cid)
                self._seen.notify_all()

    def catch_up(self) -> None:
        """Wait until every event that happened before this call has been read.

        Docker delivers events in order, so the removal of a marker container made
        now is read after everything before it.
        """
        marker = self._client.containers.create(  # not `managed`: no janitor looks at it
            self._config.image,
            ["true"],
            labels={LABEL_NAMESPACE: self._config.namespace},
            network_mode="none",
        )
        marker.remove(force=True)
        with self._seen:
            assert self._seen.wait_for(lambda: marker.id in self.destroyed, timeout=JOIN_S)

    def close(self) -> None:
        self._stream.close()
        self._thread.join(timeout=30)


def write_own_file(worker: DockerSandbox, run: RunRef) -> None:
    """A run's first call (so it claims or creates its container) leaves a file of its own."""
    out = sh(worker, run, f"echo {run.run_id} > mine-{run.run_id}")
    assert out.exit_code == 0, out


def own_files(worker: DockerSandbox, run: RunRef) -> list[str]:
    """The `mine-*` files in the run's workspace: exactly its own unless it shares one."""
    listed = sh(worker, run, "ls /workspace").stdout.decode().split()
    return [name for name in listed if name.startswith("mine-")]


def end_runs(worker: DockerSandbox, runs: list[RunRef]) -> None:
    for run in runs:
        worker.destroy(run, keep_workspace=False)


def sweep_all_live(janitor: DockerSandbox | Trimmer) -> None:
    janitor.janitor(lambda _run: True)


def test_concurrent_claims_on_a_small_pool_all_succeed_with_own_workspaces_while_containers_vanish(
    pool_config: SandboxConfig,
) -> None:
    # Two worker processes, in effect, claim from one pool of 3 while the runs of the
    # round before end (their containers still carry the pool label) and a third
    # worker's janitor sweeps (removing every unclaimed pool container).
    workers = [DockerSandbox(pool_config), DockerSandbox(pool_config)]
    trimmer = Trimmer(pool_config)
    ended: list[RunRef] = []
    try:
        for _ in range(ROUNDS):
            workers[0].warm_pool()
            runs = [new_run() for _ in range(CLAIMERS)]
            claims = [partial(write_own_file, workers[i % 2], run) for i, run in enumerate(runs)]
            errors = race(
                [*claims, partial(end_runs, workers[1], ended)],
                meanwhile=[partial(sweep_all_live, trimmer)],
            )
            assert not errors, f"claims failed:\n{described(errors)}"
            # Each run has a workspace of its own: no two runs were handed one container.
            for run in runs:
                assert own_files(workers[0], run) == [f"mine-{run.run_id}"]
            ended = runs
    finally:
        for worker in workers:
            worker.close()
        trimmer.close()
        end_runs(workers[0], ended)


def test_a_janitor_sweeping_during_claims_never_removes_a_claimed_container(
    pool_config: SandboxConfig,
) -> None:
    pooled = DockerSandbox(pool_config)
    trimmer = Trimmer(pool_config)
    events = RenamesAndRemovals(docker.from_env(), pool_config)
    claimed: list[RunRef] = []
    try:
        for _ in range(ROUNDS):
            pooled.warm_pool()
            runs = [new_run() for _ in range(CLAIMERS)]
            claimed += runs
            errors = race(
                [partial(write_own_file, pooled, run) for run in runs],
                meanwhile=[partial(sweep_all_live, trimmer)],
            )
            events.catch_up()
            run_names = {_names.container_name(pool_config.namespace, r) for r in claimed}
            removed = [
                name
                for cid, name in events.renamed_to.items()
                if name in run_names and cid in events.destroyed
            ]
            assert not removed, f"the janitor removed claimed containers: {removed}"
            assert not errors, f"claims failed:\n{described(errors)}"
            for run in runs:  # and their workspaces are the ones they wrote to
                assert own_files(pooled, run) == [f"mine-{run.run_id}"]
    finally:
        events.close()
        pooled.close()
        trimmer.close()
        end_runs(pooled, claimed)


def start_pool_labelled_container(client: Any, config: SandboxConfig) -> str:
    """A running container named and labelled like a run's claimed from the pool."""
    name = _names.container_name(config.namespace, new_run())
    labels = {LABEL_MANAGED: "true", LABEL_NAMESPACE: config.namespace, LABEL_POOL: "true"}
    client.containers.run(
        config.image, ["sleep", "600"], name=name, labels=labels, detach=True, network_mode="none"
    )
    return name


def remove_all(client: Any, names: list[str]) -> None:
    for name in names:
        remove_quietly(client, name)


def test_listing_the_pool_and_sweeping_never_fail_while_containers_are_removed(
    pool_config: SandboxConfig,
) -> None:
    # Containers of ended runs (claimed from the pool, so still pool-labelled) are
    # removed one by one while the pool lists itself and the janitor sweeps.
    config = replace(pool_config, pool_size=1)
    sandbox = DockerSandbox(config)
    client = docker.from_env()
    try:
        sandbox.warm_pool()
        for _ in range(ROUNDS):
            doomed = [start_pool_labelled_container(client, config) for _ in range(10)]
            errors = race(
                [partial(remove_all, client, doomed)],
                meanwhile=[sandbox.warm_pool, partial(sweep_all_live, sandbox)],
            )
            assert not errors, f"listing failed while containers were removed:\n{described(errors)}"
    finally:
        sandbox.close()


def test_a_vanished_container_is_retryable_and_a_missing_image_is_a_policy_error(
    pool_config: SandboxConfig,
) -> None:
    client = docker.from_env()
    name = start_pool_labelled_container(client, pool_config)
    client.api.remove_container(name, force=True)
    for step in (client.containers.get, client.api.inspect_container, client.api.attach):
        with (
            pytest.raises(SandboxUnavailable, match="gone from Docker") as gone,
            docker_errors("inspect container"),
        ):
            step(name)
        assert gone.value.retryable
    with (
        pytest.raises(SandboxPolicyError, match="image not found") as missing,
        docker_errors("create container"),
    ):
        client.containers.create(f"agentrun-missing-{uuid.uuid4().hex[:8]}:never", ["true"])
    assert not missing.value.retryable


def test_the_janitor_removes_abandoned_pool_claims_and_keeps_one_being_finished(
    pool_config: SandboxConfig,
) -> None:
    # A claim is the executor's yes followed by the rename; a claimer that died in
    # between leaves a pool-named container no run can claim. It goes when its run
    # ended or already has another container, or when a janitor claimed it; one whose
    # run is live and has no container yet may be renamed any moment, so it stays.
    client = docker.from_env()
    config = replace(pool_config, pool_size=4)
    pooled, plain = DockerSandbox(config), DockerSandbox(replace(config, pool_size=0))
    connections = Connections(client)  # a claimer in another process, in effect
    live, ended, elsewhere = new_run(), new_run(), new_run()
    try:
        assert pooled.warm_pool() == 4
        sh(plain, elsewhere, "true")  # `elsewhere` got a container of its own
        containers = list_pool(client, config.namespace, config.pool_id)
        owners = [
            claim_owner(config.namespace, live),
            claim_owner(config.namespace, ended),
            claim_owner(config.namespace, elsewhere),
            JANITOR_OWNER,
        ]
        for container, owner in zip(containers, owners, strict=True):
            answer = connections.channel(container.id).request(
                {"op": "claim", "owner": owner}, timeout_s=15
            )
            assert answer["ok"], answer
        report = pooled.janitor(lambda run: run != ended)
        assert sorted(report.removed_containers) == sorted(c.name for c in containers[1:])
        left = list_pool(client, config.namespace, config.pool_id)
        assert [c.name for c in left] == [containers[0].name]
    finally:
        connections.close()
        pooled.close()
        plain.close()
        for run in (live, ended, elsewhere):
            plain.destroy(run, keep_workspace=False)


def pool_names(client: Any, config: SandboxConfig) -> set[str]:
    return {c.name for c in list_pool(client, config.namespace, config.pool_id)}


def test_two_workers_with_different_pool_sizes_in_one_namespace_each_keep_their_pool(
    pool_config: SandboxConfig,
) -> None:
    # One deployment's worker keeps 1 container warm, another's 3, on one Docker host
    # and in one namespace. Each janitor used to trim the whole namespace to its own
    # size: the small one removed the big one's spares, which its worker refilled.
    client = docker.from_env()
    small, big = replace(pool_config, pool_size=1), replace(pool_config, pool_size=3)
    workers = [DockerSandbox(small), DockerSandbox(big), DockerSandbox(big)]
    ran = new_run()
    try:
        assert workers[0].warm_pool() == 1
        assert workers[1].warm_pool() == 3
        assert workers[2].warm_pool() == 0  # same settings, same pool: already full
        kept = {small: pool_names(client, small), big: pool_names(client, big)}
        for _ in range(2):
            for worker in workers:
                report = worker.janitor(lambda _run: True)
                assert report.removed_containers == [], report
        assert pool_names(client, small) == kept[small]
        assert pool_names(client, big) == kept[big]
        # A run on the small worker claims from its own pool, not the big one's.
        small_ids = {c.id for c in list_pool(client, small.namespace, small.pool_id)}
        big_ids = {c.id for c in list_pool(client, big.namespace, big.pool_id)}
        write_own_file(workers[0], ran)
        got = client.api.inspect_container(_names.container_name(small.namespace, ran))["Id"]
        assert got in small_ids
        assert big_ids <= {c.id for c in list_pool(client, big.namespace, big.pool_id)}
    finally:
        for worker in workers:
            worker.close()
        workers[0].destroy(ran, keep_workspace=False)


def test_a_janitor_trims_its_own_pool_to_size_and_only_retired_pools_of_other_settings(
    pool_config: SandboxConfig,
) -> None:
    # Surplus in one's own pool (several processes' refills racing) goes; a pool of
    # other settings stays while it is young; a pool nobody refills any more (its
    # settings changed) goes once it is old (for the trimmer: at once).
    client = docker.from_env()
    mine, other = replace(pool_config, pool_size=1), replace(pool_config, pool_size=2)
    racers = [DockerSandbox(mine) for _ in range(4)]
    theirs = DockerSandbox(other)
    retired = Trimmer(other, pool_size=other.pool_size)  # a janitor of `other`'s pool
    try:
        theirs.warm_pool()
        errors = race([racer.warm_pool for racer in racers])
        assert not errors, described(errors)
        filled = len(pool_names(client, mine))
        assert filled >= 1
        report = racers[0].janitor(lambda _run: True)
        assert len(report.removed_containers) == filled - 1, report
        assert len(pool_names(client, mine)) == 1
        assert len(pool_names(client, other)) == 2
        retired.janitor(lambda _run: True)
        assert len(pool_names(client, mine)) == 0  # every other pool counts as retired
        assert len(pool_names(client, other)) == 2  # its own: within its size
    finally:
        for sandbox in (*racers, theirs):
            sandbox.close()
        retired.close()
