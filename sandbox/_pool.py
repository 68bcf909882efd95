"""The warm pool: started, unassigned containers, so a run's first call skips the cold start.

Design (why it looks like this):

* `pool_size` containers are kept started and unassigned, each with its own fresh
  workspace volume.
* **A namespace holds one pool per configuration** (`SandboxConfig.pool_id`, in each
  pool container's name): workers of one deployment share a pool, and two workers
  with different pool sizes (or sandbox defaults) on one Docker host fill, claim
  from and trim their own pools only. One pool shared by both was trimmed to the
  smaller size by one janitor and refilled by the other worker, over and over.
* Only runs that ask for what a pool container runs (the defaults,
  `sandbox/_resources.py: is_default`) use the pool; others get a container created
  for them, with a volume named after the run.
* **A claim is two steps, and only the first decides.** (1) The container's executor
  is asked to `claim` it for the run: it grants the first claim only (the same owner
  asking again gets yes too), which settles races between threads, worker processes
  and the janitor, who claims a container before removing it. (2) The winner renames
  the container to the run's name: from then on the run's container is found by name
  and no longer matches the pool listing. Docker's rename is not the arbiter: it looks
  the container up before it locks it, so two renames of one container can both
  succeed. A claimer that loses, or whose container vanished, tries the next one; with
  none left, the run gets a container of its own.
* **The claim's owner is the run's container name**, so the janitor can tell an
  unfinished claim (its claimer died between the two steps) from one under way, by
  asking whether that run is live and whether it has a container of its own.
* **The pool is listed in one call** (`api.containers`, summaries only) and filtered
  by label *and* by the pool name pattern, so claimed containers (renamed, but still
  carrying the pool label) are not listed. docker-py's `containers.list` inspects
  each container it lists, and one removed in between failed the whole listing.
* Refills run in one background thread per process; a refill asked for while one runs
  makes that one look again instead of starting a second.

This module must not: hand one container to two runs (only the executor's answer to
`claim` makes a container a run's), let a container that vanished fail a claim (it
is skipped), or let a failed refill fail a run (refills are best effort; a run
without a pool container gets a container of its own).
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import docker.errors

from agentrun.contracts import SandboxPolicy
from sandbox import _names
from sandbox._channel import ChannelClosed, ExecutorError
from sandbox._connections import Connections
from sandbox._containers import (
    EXECUTOR_CMD,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_POOL,
    LABEL_VOLUME,
    Containers,
)
from sandbox._docker_errors import docker_errors
from sandbox._resources import Resources, is_default
from sandbox.base import RunRef, SandboxError
from telemetry.metrics import instruments

log = logging.getLogger(__name__)

CLAIM_TIMEOUT_S = 5.0
"""How long a claimer waits for an executor's answer before trying the next container."""


@dataclass(frozen=True)
class PoolContainer:
    """One unclaimed pool container, as a listing summary shows it (no inspect)."""

    id: str
    name: str
    state: str
    """Docker's `State`: `created`, `running`, `exited`, `removing`, …"""
    created: float
    """Seconds since the epoch."""
    volume: str
    pool: str
    """The pool it belongs to (`SandboxConfig.pool_id`; "" when made before pool ids)."""


def pool_name_pattern(namespace: str, pool: str) -> str:
    """The Docker `name` filter (a regular expression) of a pool's unclaimed containers."""
    return f"^/?{re.escape(_names.pool_container_name(namespace, pool, ''))}[0-9a-f]+$"


def as_pool_container(namespace: str, summary: dict[str, Any]) -> PoolContainer | None:
    """A listing summary as an unclaimed pool container, or None when it is not one."""
    names = [n.lstrip("/") for n in summary.get("Names") or []]
    name = next((n for n in names if _names.is_pool_container(namespace, n)), None)
    if name is None:
        return None
    labels = summary.get("Labels") or {}
    return PoolContainer(
        id=summary["Id"],
        name=name,
        state=str(summary.get("State", "")),
        created=float(summary.get("Created") or 0),
        volume=labels.get(LABEL_VOLUME, ""),
        pool=_names.pool_of_container(namespace, name),
    )


def list_pool(docker_client: Any, namespace: str, pool: str) -> list[PoolContainer]:
    """A pool's running, unclaimed containers, in one call that cannot 404.

    Claimed containers carry the pool label forever (labels are fixed at creation) but
    have the run's name, so the name filter leaves them out; the name check of
    `as_pool_container` is the exact one, the server-side filter only narrows the answer.
    """
    filters: dict[str, Any] = {
        "label": [f"{LABEL_NAMESPACE}={namespace}", f"{LABEL_MANAGED}=true", f"{LABEL_POOL}=true"],
        "name": [pool_name_pattern(namespace, pool)],
        "status": ["running"],
    }
    with docker_errors("list pool"):
        found = docker_client.api.containers(filters=filters)
    listed = (as_pool_container(namespace, s) for s in found)
    return [c for c in listed if c is not None and c.pool == pool]


def claim_owner(namespace: str, run: RunRef) -> str:
    """What a run's claim records in the executor: its container name (maps back exactly)."""
    return _names.container_name(namespace, run)


class WarmPool:
    """This worker's pool (its namespace and `pool_id`), as seen from one process. Thread-safe."""

    def __init__(self, containers: Containers, connections: Connections) -> None:
        self._containers = containers
        self._connections = connections
        self._config = containers.config
        self._ns = containers.ns
        self._pool = containers.config.pool_id
        self._docker = containers.docker
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False
        self._closed = False

    def close(self) -> None:
        """Stop refilling (waits for a refill under way; its containers stay)."""
        self._closed = True
        thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def eligible(self, res: Resources) -> bool:
        return self._config.pool_size > 0 and is_default(
            self._config, res, self._containers.host_cpus()
        )

    # ================================================================== claim

    def claim(self, run: RunRef, res: Resources) -> Any | None:
        """A pool container renamed to the run's, or None when none could be claimed."""
        try:
            candidates = list_pool(self._docker, self._ns, self._pool)
            random.shuffle(candidates)  # claimers spread out instead of queueing on one
            for tried, candidate in enumerate(candidates, start=1):
                if not self._win(candidate, run, res):
                    continue
                taken, container = self._take(candidate, run)
                if taken:
                    instruments().sandbox_pool_size.set(len(candidates) - tried)
                    return container
            instruments().sandbox_pool_size.set(0)
            return None
        finally:
            self.refill_async()

    def _win(self, candidate: PoolContainer, run: RunRef, res: Resources) -> bool:
        """Ask the executor for the container; True only when this run got it."""
        request = {
            "op": "claim",
            "owner": claim_owner(self._ns, run),
            "workspace_bytes": res.workspace_mb << 20,
        }
        try:
            answer = self._connections.channel(candidate.id).request(
                request, timeout_s=CLAIM_TIMEOUT_S
            )
        except (ChannelClosed, ExecutorError, TimeoutError, SandboxError):
            return False  # gone, broken or busy: the next one
        return bool(answer.get("ok"))

    def _take(self, candidate: PoolContainer, run: RunRef) -> tuple[bool, Any | None]:
        """Rename a container this run won to the run's name: (settled, the run's container).

        Not settled means the container vanished under us: try the next one.
        """
        name = _names.container_name(self._ns, run)
        with docker_errors("claim pool container"):
            try:
                self._docker.api.rename(candidate.id, name)
                renamed = True
            except docker.errors.NotFound:
                return False, None  # removed under us
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                renamed = False
        if not renamed:
            # The name is taken: another worker got the run a container meanwhile.
            # Ours was claimed for the run, so it is no one else's: remove it.
            self._discard(candidate)
            return True, self._containers.of_run(run)
        container = self._containers.get(name)  # None: removed since the rename
        return container is not None, container

    def _discard(self, candidate: PoolContainer) -> None:
        """Remove a container this run claimed but cannot use, with its workspace."""
        self._connections.forget_container(candidate.id)
        with contextlib.suppress(SandboxError):  # best effort: the janitor removes it later
            container = self._containers.get(candidate.id)
            if container is not None:
                self._containers.discard(container)

    # ================================================================== refill

    def _create_one(self) -> None:
        slot = secrets.token_hex(6)
        volume = _names.pool_volume_name(self._ns, slot)
        self._containers.ensure_volume(volume, {LABEL_POOL: "true"})
        res = self._containers.resources(SandboxPolicy())
        command = [*EXECUTOR_CMD, f"--workspace-bytes={res.workspace_mb << 20}"]
        kwargs = self._containers.kwargs(
            res, volume, {LABEL_POOL: "true", LABEL_VOLUME: volume}, command
        )
        with docker_errors("create pool container"):
            container = self._docker.containers.create(
                name=_names.pool_container_name(self._ns, self._pool, slot), **kwargs
            )
            container.start()
        # Attach now, so a claim from this process costs no connection set-up.
        with contextlib.suppress(ChannelClosed, ExecutorError, TimeoutError, SandboxError):
            self._connections.channel(container.id)

    def warm(self) -> int:
        """Fill the pool up to `pool_size` now; returns how many were created."""
        created = 0
        while not self._closed:
            ready = len(list_pool(self._docker, self._ns, self._pool))
            instruments().sandbox_pool_size.set(ready)
            if ready >= self._config.pool_size:
                break
            self._create_one()
            created += 1
        return created

    def refill_async(self) -> None:
        """Top the pool up in a background thread (at most one per process)."""
        if self._closed or self._config.pool_size == 0:
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True  # the running filler looks once more
                return
            self._again = False
            self._thread = threading.Thread(
                target=self._refill_quietly, name="sandbox-pool", daemon=True
            )
            self._thread.start()

    def _refill_quietly(self) -> None:
        while True:
            try:
                self.warm()
            except SandboxError as exc:
                log.warning("sandbox pool refill failed: %s", exc)
            with self._lock:
                if not self._again or self._closed:
                    return
                self._again = False
