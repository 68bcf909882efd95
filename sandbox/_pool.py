"""The warm pool: started, unassigned containers, so a run's first call skips the cold start.

Design (why it looks like this):

* `pool_size` containers are kept started and unassigned, each with its own fresh
  workspace volume. A run claims one by asking its executor (first claim wins, which
  arbitrates between worker processes racing for the same container), then renames it
  to the run's name; its volume becomes the run's workspace.
* Only runs with the default image, no network and the default cpu/memory/pids limits
  use the pool (the workspace size is handed to the executor at claim time); others
  get a container created for them, with a volume named after the run.
* Refills run in one background thread per process; a refill asked for while one runs
  makes that one look again instead of starting a second.

This module must not: hand one container to two runs (only the executor's answer to
`claim` makes a container a run's), or let a failed refill fail a run (refills are
best effort; a run without a pool container gets a container of its own).
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import threading
from typing import Any

import docker.errors

from agentrun.contracts import SandboxPolicy
from sandbox import _names
from sandbox._channel import ChannelClosed, ExecutorError
from sandbox._connections import Connections
from sandbox._containers import EXECUTOR_CMD, LABEL_NAMESPACE, LABEL_POOL, LABEL_VOLUME, Containers
from sandbox._docker_errors import docker_errors
from sandbox._resources import Resources, is_default
from sandbox.base import RunRef, SandboxError

log = logging.getLogger(__name__)


class WarmPool:
    """The pool of one namespace, as seen from one worker process. Thread-safe."""

    def __init__(self, containers: Containers, connections: Connections) -> None:
        self._containers = containers
        self._connections = connections
        self._config = containers.config
        self._ns = containers.ns
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

    def _list(self, status: str | None = "running") -> list[Any]:
        filters: dict[str, Any] = {"label": [f"{LABEL_NAMESPACE}={self._ns}", f"{LABEL_POOL}=true"]}
        if status:
            filters["status"] = status
        with docker_errors("list pool"):
            found = self._containers.docker.containers.list(all=status is None, filters=filters)
        return [c for c in found if _names.is_pool_container(self._ns, c.name)]

    def claim(self, run: RunRef, res: Resources) -> Any | None:
        """A pool container renamed to the run's, or None when none could be claimed."""
        owner = f"{run.tenant_id}/{run.run_id}"
        candidates = self._list()
        random.shuffle(candidates)
        claimed = None
        for container in candidates:
            try:
                answer = self._connections.channel(container.id).request(
                    {"op": "claim", "owner": owner, "workspace_bytes": res.workspace_mb << 20},
                    timeout_s=5,
                )
            except (ChannelClosed, ExecutorError, TimeoutError, SandboxError):
                continue
            if not answer.get("ok"):
                continue
            with docker_errors("claim pool container"):
                try:
                    container.rename(_names.container_name(self._ns, run))
                except docker.errors.NotFound:
                    continue  # removed under us (janitor): try the next one
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise
                    # The run got a container from another worker meanwhile.
                    self._containers.discard(container)
                    claimed = self._containers.of_run(run)
                    break
            claimed = container
            break
        self.refill_async()
        return claimed

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
            container = self._containers.docker.containers.create(
                name=_names.pool_container_name(self._ns, slot), **kwargs
            )
            container.start()
        # Attach now, so a claim from this process costs no connection set-up.
        with contextlib.suppress(ChannelClosed, ExecutorError, TimeoutError, SandboxError):
            self._connections.channel(container.id)

    def warm(self) -> int:
        """Fill the pool up to `pool_size` now; returns how many were created."""
        created = 0
        while not self._closed and len(self._list()) < self._config.pool_size:
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
