"""The janitor: removes this namespace's containers and volumes that nothing needs any more.

Design (why it looks like this):

* **Liveness is the caller's answer** (`is_live`, which the worker asks Temporal), so
  this module decides nothing about runs itself: a run's container and volume go when
  `is_live` says False, kept workspaces included.
* **Pool objects are judged by their state**: pool containers that are not running,
  or were claimed but never renamed (their claimer died between the two steps), go;
  so do pool volumes without a container and pool containers beyond `pool_size`.
  Pool objects younger than `ORPHAN_GRACE_S` are left alone, since a pool fill or a
  claim may be under way in another process.
* Everything is found through Docker (labels and names), so a janitor in a freshly
  started worker cleans up after one that crashed.

This module must not: touch objects outside its namespace (every listing filters on
the namespace label), or remove anything of a run it cannot see (`is_live` is
expected to answer True when in doubt).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import docker.errors

from sandbox import _names
from sandbox._channel import ChannelClosed, ExecutorError
from sandbox._connections import Connections
from sandbox._containers import LABEL_MANAGED, LABEL_NAMESPACE, LABEL_VOLUME, Containers
from sandbox._docker_errors import docker_errors
from sandbox.base import JanitorReport, RunRef, SandboxError

ORPHAN_GRACE_S = 60.0
"""The janitor leaves pool objects younger than this alone (a pool fill may be under way)."""


def created_age_s(created: str) -> float:
    """Seconds since a Docker `Created`/`CreatedAt` timestamp (0 when unparsable)."""
    try:
        stamp = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (datetime.now(UTC) - stamp).total_seconds()


class Janitor:
    """One sweep at a time per call of `sweep`; safe to run in several processes at once."""

    def __init__(self, containers: Containers, connections: Connections) -> None:
        self._containers = containers
        self._connections = connections
        self._docker = containers.docker
        self._ns = containers.ns
        self._pool_size = containers.config.pool_size

    def sweep(self, is_live: Callable[[RunRef], bool]) -> JanitorReport:
        """Remove this namespace's containers and volumes whose run is not live."""
        report = JanitorReport()
        ns_filter = {"label": [f"{LABEL_NAMESPACE}={self._ns}", f"{LABEL_MANAGED}=true"]}
        with docker_errors("janitor"):
            containers = self._docker.containers.list(all=True, filters=ns_filter)
            in_use: set[str] = set()
            spare: list[Any] = []
            for container in containers:
                name = container.name
                volume = container.labels.get(LABEL_VOLUME)
                if _names.is_pool_container(self._ns, name):
                    doomed = container.status != "running" or self._stuck_claim(container)
                    if not doomed:
                        spare.append(container)
                else:
                    run = _names.run_of_container(self._ns, name)
                    doomed = run is None or not is_live(run)
                if doomed:
                    self._remove_container(container, report)
                elif volume:
                    in_use.add(volume)
            spare.sort(key=lambda c: c.attrs.get("Created", ""))
            for container in spare[self._pool_size :]:
                self._remove_container(container, report)
                in_use.discard(container.labels.get(LABEL_VOLUME, ""))
            for volume in self._docker.volumes.list(filters=ns_filter):
                if volume.name in in_use:
                    continue
                run = _names.run_of_volume(self._ns, volume.name)
                if run is not None:
                    doomed = not is_live(run)
                else:
                    doomed = created_age_s(volume.attrs.get("CreatedAt", "")) > ORPHAN_GRACE_S
                if doomed:
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        volume.remove(force=True)
                        report.removed_volumes.append(volume.name)
        return report

    def _stuck_claim(self, container: Any) -> bool:
        """A pool container whose executor was claimed long ago but that was never renamed."""
        if created_age_s(container.attrs.get("Created", "")) < ORPHAN_GRACE_S:
            return False
        try:
            hello = self._connections.channel(container.id).request({"op": "hello"}, timeout_s=5)
        except (ChannelClosed, ExecutorError, TimeoutError, SandboxError):
            return True
        return hello.get("owner") is not None

    def _remove_container(self, container: Any, report: JanitorReport) -> None:
        self._connections.forget_container(container.id)
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
            report.removed_containers.append(container.name)
        volume = container.labels.get(LABEL_VOLUME)
        if volume:
            with contextlib.suppress(docker.errors.NotFound):
                self._docker.volumes.get(volume).remove(force=True)
                report.removed_volumes.append(volume)
