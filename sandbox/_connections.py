"""This worker process's caches: a run's container handle, a container's attach channel.

Design (why it looks like this):

* **Identity lives in Docker, not in memory.** A run's container is found by its
  deterministic name (`sandbox/_names.py`), so any worker process, including one that
  starts after a crash, finds it; the caches here (handles, attach channels) are
  optimisations that are dropped and rebuilt whenever Docker disagrees.
* **The executor is the container's main process** (`sandbox/image/executor.py`). The
  worker talks to it over the container's attached stdin/stdout (`sandbox/_channel.py`),
  which makes a warm call one round trip instead of a `docker exec`. A new channel
  first asks the executor its protocol version, so a stale image fails with a message
  that says how to rebuild it instead of misreading answers.
* **One lock per run** for finding or creating its container, so two threads of one
  process never race for it (races between processes are settled by Docker: names are
  unique, and a pool container's executor grants the first claim only); **one lock per
  container** for attaching to it, so a slow attach holds up no other container's.

This module must not: hold anything required for correctness (losing every cache only
costs reconnects), or decide how a container is found or created (it is handed a
function that does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox._channel import Channel
from sandbox._docker_errors import docker_errors
from sandbox.base import RunRef, SandboxPolicyError

EXECUTOR_VERSION = 1
"""Must equal `VERSION` in sandbox/image/executor.py; a mismatch means a stale image."""


@dataclass(frozen=True)
class Handle:
    """A run's running container and the HMAC key that tokenises its call ids."""

    container_id: str
    key: bytes


class Connections:
    """The handle and channel caches of one worker process. Thread-safe."""

    def __init__(self, docker_client: Any) -> None:
        self._docker = docker_client
        self._lock = threading.Lock()
        self._channels: dict[str, Channel] = {}
        self._handles: dict[RunRef, Handle] = {}
        self._run_locks: dict[RunRef, threading.Lock] = {}
        self._attach_locks: dict[str, threading.Lock] = {}

    def handle(self, run: RunRef, find_or_create: Callable[[], Handle]) -> Handle:
        """The run's cached handle, or `find_or_create()`'s, made once per process."""
        handle = self._handles.get(run)
        if handle is not None:
            return handle
        with self._run_lock(run):
            handle = self._handles.get(run)
            if handle is None:
                handle = find_or_create()
                self._handles[run] = handle
            return handle

    def _run_lock(self, run: RunRef) -> threading.Lock:
        with self._lock:
            return self._run_locks.setdefault(run, threading.Lock())

    def channel(self, container_id: str) -> Channel:
        """A live attach channel to the container's executor, opened on first use.

        Attaching is a Docker round trip, slow when the engine is busy, so it is made
        under the container's own lock: lookups of other containers' channels (every
        call of every run) do not queue behind it. A container removed meanwhile raises
        `SandboxUnavailable` (look it up again), not a policy error.
        """
        with self._lock:
            channel = self._channels.get(container_id)
            if channel is not None and channel.alive:
                return channel
            attaching = self._attach_locks.setdefault(container_id, threading.Lock())
        with attaching:
            with self._lock:
                channel = self._channels.get(container_id)
            if channel is not None and channel.alive:
                return channel  # attached by the thread we waited for
            with docker_errors("attach"):
                channel = Channel(self._docker.api, container_id)
            with self._lock:
                self._channels[container_id] = channel
        hello = channel.request({"op": "hello"}, timeout_s=15)
        if hello.get("version") != EXECUTOR_VERSION:
            raise SandboxPolicyError(
                f"the sandbox image's executor speaks version {hello.get('version')}, this "
                f"worker needs {EXECUTOR_VERSION}: rebuild it with "
                "scripts/build-sandbox-image.sh --force"
            )
        channel.features = frozenset(str(f) for f in hello.get("features") or ())
        return channel

    def forget(self, run: RunRef) -> None:
        """Drop the run's handle and its channel (its container changed or went away)."""
        with self._lock:
            handle = self._handles.pop(run, None)
            channel = self._channels.pop(handle.container_id, None) if handle else None
        if channel is not None:
            channel.close()

    def forget_container(self, container_id: str) -> None:
        """Drop the container's channel and every handle that points at it."""
        with self._lock:
            channel = self._channels.pop(container_id, None)
            self._attach_locks.pop(container_id, None)
            for run, handle in list(self._handles.items()):
                if handle.container_id == container_id:
                    del self._handles[run]
        if channel is not None:
            channel.close()

    def close(self) -> None:
        """Close every channel (the containers keep running)."""
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
            self._attach_locks.clear()
            self._handles.clear()
        for channel in channels:
            channel.close()
