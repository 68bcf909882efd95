"""`DockerSandbox`: the `Sandbox` protocol on hardened, per-run Docker containers.

A thin facade: it wires the parts below and finds (or makes) a run's container on
its first use; each part says in its own docstring why it looks the way it does.

* `sandbox/config.py`: `SandboxConfig`, what the operator allows (built by the worker).
* `sandbox/_resources.py`: a run's policy clamped to the operator's limits, and the
  Docker arguments that enforce them.
* `sandbox/_containers.py`: a run's container and volume (created hardened, started,
  paused, stopped, removed).
* `sandbox/_workspace_images.py`: the workspace as an ext4 image of its size on a
  loop device, so the kernel enforces the workspace quota.
* `sandbox/engine.py`, `sandbox/_quota_probe.py`: which engine (`DOCKER_HOST`), and
  whether it can mount this worker's workspace images (checked at worker start).
* `sandbox/_pool.py`: the warm pool of started, unassigned containers.
* `sandbox/_janitor.py`: removes what no live run needs.
* `sandbox/_calls.py`: the requests to a run's executor (exec, output, files).
* `sandbox/_connections.py`: this process's caches (handles, attach channels).
* `sandbox/_channel.py`, `sandbox/_names.py`, `sandbox/_docker_errors.py`: the attach
  protocol, the names that map to runs, Docker errors as retry postures.

Design (why it looks like this): identity lives in Docker, not in memory, so every
worker process finds a run's container by name; a run's first call finds it, or
claims one from the pool, or creates one, in that order.

This module must not: touch host paths (no bind mounts, no `docker cp` of host files;
the workspace images are `sandbox/_workspace_images.py`'s alone), send traffic to a
container's network (everything goes through the Docker API), keep state required for
correctness in memory, or raise for a command's own failure (limits and exit codes are
data in `ExecOutcome`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import docker.errors

from agentrun.contracts import SandboxPolicy
from sandbox._calls import Calls
from sandbox._connections import Connections, Handle
from sandbox._containers import Containers
from sandbox._docker_errors import docker_errors
from sandbox._janitor import Janitor
from sandbox._pool import WarmPool
from sandbox._quota_probe import check_workspace_mounts
from sandbox._resources import Resources
from sandbox.base import (
    CollectedFile,
    EgressHandler,
    ExecOutcome,
    FileEntry,
    JanitorReport,
    RunRef,
    SandboxPolicyError,
)
from sandbox.config import SandboxConfig
from sandbox.engine import engine_client
from telemetry.metrics import instruments


class DockerSandbox:
    """The `Sandbox` protocol on Docker. Thread-safe; one instance per worker process.

    >>> sandbox = DockerSandbox(sandbox_config(load_settings()))   # worker.sandbox_config
    >>> sandbox.warm_pool()          # optional, at worker start
    >>> out = sandbox.exec(RunRef("acme", "r1"), "s0-c0", "echo hi",
    ...                    policy=SandboxPolicy(), timeout_s=30, max_output_bytes=16384)
    """

    def __init__(self, config: SandboxConfig, docker_client: Any = None) -> None:
        self.config = config
        with docker_errors("connect"):
            client = docker_client or engine_client()
        self._client = client
        self._connections = Connections(client)
        self._containers = Containers(config, client, self._connections)
        self._pool = WarmPool(self._containers, self._connections)
        self._janitor = Janitor(self._containers, self._connections)
        self._calls = Calls(config, self._connections, self._handle)

    def describe_engine(self) -> str:
        """What the engine says it is (version, host name, CPUs), for the start-up log."""
        with docker_errors("engine info"):
            version = self._client.version()
            info = self._client.info()
        return (
            f"Docker {version.get('Version', '?')} on host {info.get('Name', '?')!r} "
            f"({info.get('NCPU', '?')} CPUs, {info.get('OperatingSystem', '?')})"
        )

    def check_image(self) -> None:
        """The default image must be on this engine (another host's engine has its own
        images, and the sandbox never pulls); raises `SandboxPolicyError` saying how."""
        image = self.config.image
        with docker_errors("inspect image"):
            try:
                self._client.api.inspect_image(image)
            except docker.errors.ImageNotFound:
                raise SandboxPolicyError(
                    f"the sandbox image {image} is not on this Docker engine: build it there "
                    f"(scripts/build-sandbox-image.sh), copy it (docker save {image} | "
                    "docker -H <engine> load), or fix AGENTRUN_SANDBOX_IMAGE"
                ) from None

    def check_workspace_quota(self) -> None:
        """With the workspace quota on, prove the engine mounts this worker's workspace
        images (`sandbox/_quota_probe.py`); raises `SandboxPolicyError` naming the
        setting to change when it cannot. For the worker's start, not per run."""
        check_workspace_mounts(self._containers)

    def close(self) -> None:
        """Stop the pool filler and drop attach channels (containers keep running)."""
        self._pool.close()
        self._connections.close()

    def resources(self, policy: SandboxPolicy) -> Resources:
        """Apply the operator's allow-list and maxima; refuse what exceeds them."""
        return self._containers.resources(policy)

    # ================================================================== a run's container

    def _handle(self, run: RunRef, policy: SandboxPolicy | None) -> Handle:
        """The run's running container, created or claimed on first use (idempotent)."""
        return self._connections.handle(
            run, lambda: self._find_or_create(run, policy or SandboxPolicy())
        )

    def _find_or_create(self, run: RunRef, policy: SandboxPolicy) -> Handle:
        container = self._containers.of_run(run)
        if container is None:
            res = self.resources(policy)
            if self._pool.eligible(res):
                container = self._pool.claim(run, res)
            source = "pool" if container is not None else "cold"
            if container is None:
                container = self._containers.create_for_run(run, res)
                instruments().sandbox_cold_starts.add(1)
            instruments().sandbox_claims.add(1, {"source": source})
        self._containers.make_running(container)
        return Handle(container.id, self._containers.call_key(container))

    # ================================================================== pool, janitor

    def warm_pool(self) -> int:
        """Fill the pool up to `pool_size` now; returns how many were created."""
        return self._pool.warm()

    def refill_pool_async(self) -> None:
        """Top the pool up in a background thread (at most one per process)."""
        self._pool.refill_async()

    def janitor(
        self,
        is_live: Callable[[RunRef], bool],
        owner_gone: Callable[[str], bool] | None = None,
    ) -> JanitorReport:
        """Remove this namespace's containers and volumes whose run is not live, of
        those this worker created or whose creator is gone (`owner_gone`; unset:
        another worker's objects are kept). See `sandbox/_janitor.py`.

        Then release the workspace filesystems of the volumes that are gone (those
        it removed, and those another process removed or a crash left behind).
        """
        report = (
            self._janitor.sweep(is_live, owner_gone)
            if owner_gone is not None
            else self._janitor.sweep(is_live)
        )
        report.released_workspaces = self._containers.sweep_workspace_images(report.removed_volumes)
        return report

    # ================================================================== the protocol

    def exec(
        self,
        run: RunRef,
        call_id: str,
        command: str,
        *,
        policy: SandboxPolicy,
        timeout_s: float,
        max_output_bytes: int,
        env: Mapping[str, str] | None = None,
        heartbeat: Callable[[], None] = lambda: None,
        egress: EgressHandler | None = None,
    ) -> ExecOutcome:
        """Run `command` once per `call_id`; a repeated id re-attaches to the first run."""
        return self._calls.exec(
            run,
            call_id,
            command,
            policy=policy,
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            env=env,
            heartbeat=heartbeat,
            egress=egress,
        )

    def read_call_output(self, run: RunRef, call_id: str, stream: str, max_bytes: int) -> bytes:
        return self._calls.read_call_output(run, call_id, stream, max_bytes)

    def read_file(self, run: RunRef, path: str, *, policy: SandboxPolicy, max_bytes: int) -> bytes:
        return self._calls.read_file(run, path, policy=policy, max_bytes=max_bytes)

    def write_file(self, run: RunRef, path: str, data: bytes, *, policy: SandboxPolicy) -> None:
        self._calls.write_file(run, path, data, policy=policy)

    def list_files(
        self, run: RunRef, path: str, *, policy: SandboxPolicy, max_entries: int = 1000
    ) -> list[FileEntry]:
        return self._calls.list_files(run, path, policy=policy, max_entries=max_entries)

    def collect(
        self, run: RunRef, paths: list[str], *, max_files: int = 100, max_bytes: int = 64 << 20
    ) -> list[CollectedFile]:
        return self._calls.collect(run, paths, max_files=max_files, max_bytes=max_bytes)

    def pause(self, run: RunRef) -> None:
        self._containers.pause(run)

    def resume(self, run: RunRef) -> None:
        self._containers.resume(run)

    def stop(self, run: RunRef) -> None:
        # This process's attach channel dies with the executor: the next call reconnects.
        self._connections.forget(run)
        self._containers.stop(run)

    def destroy(self, run: RunRef, *, keep_workspace: bool) -> None:
        self._containers.destroy(run, keep_workspace=keep_workspace)
