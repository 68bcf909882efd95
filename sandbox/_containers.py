"""A run's container and workspace volume: created hardened, started, paused, removed.

Design (why it looks like this):

* **Hardened by construction.** Every container runs as uid 10001 with every
  capability dropped, `no-new-privileges`, a read-only root, its own tmpfs `/tmp`,
  no environment of the worker's, no network unless the policy allows it, and no log
  driver (the executor's stdout is the protocol). The limits come from
  `sandbox/_resources.py`.
* **Labels say whose an object is** (`agentrun.namespace`, tenant, run, pool) so the
  janitor can find everything of this namespace; a container's `agentrun.volume`
  label names its workspace volume, which is how a pool-born workspace (whose volume
  name says nothing about the run) is found.
* **Docker cannot rename or relabel a volume**, so a pool-born workspace is found only
  through its container. That is why `destroy(keep_workspace=True)` stops the container
  and keeps it (no processes, no memory) instead of removing it: the stopped container
  is the index to the kept workspace, and `exec` on the run starts it again.
* **The call key** (an HMAC key for call ids, see `sandbox/_calls.py`) is a label of
  the workspace volume: the container cannot read it, and it lives exactly as long as
  the workspace whose call records it protects.
* **The workspace is a filesystem of its own size** (`sandbox/_workspace_images.py`):
  with the quota on, a workspace volume mounts an ext4 image on a loop device that
  the worker attaches before the volume's first container starts, re-attaches before
  a stopped one starts again, and releases once the volume is removed. Its size is
  the volume's `agentrun.quota_mb` label.

This module must not: bind-mount host paths or `docker cp` host files into a
container, or send traffic to a container's network (everything goes through the
Docker API; the only host paths it touches are its workspace images).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from pathlib import Path
from typing import Any

import docker.errors
import docker.types

from agentrun.contracts import SandboxPolicy
from sandbox import _names
from sandbox._connections import Connections
from sandbox._docker_errors import docker_errors
from sandbox._resources import Resources, limit_kwargs, resolve_resources
from sandbox._workspace_images import WorkspaceImages, attach, release
from sandbox.base import RunRef, SandboxError, SandboxUnavailable
from sandbox.config import SandboxConfig

EXECUTOR_CMD = ["python3", "-I", "-S", "/opt/agentrun/executor.py"]
WORKSPACE = "/workspace"
SANDBOX_USER = "10001:10001"
"""uid:gid of everything in the sandbox (the image's `agent` user); owns the workspace."""

LABEL_MANAGED = "agentrun.managed"
LABEL_NAMESPACE = "agentrun.namespace"
LABEL_TENANT = "agentrun.tenant"
LABEL_RUN = "agentrun.run"
LABEL_POOL = "agentrun.pool"
LABEL_VOLUME = "agentrun.volume"
LABEL_CALL_KEY = "agentrun.callkey"
LABEL_QUOTA_MB = "agentrun.quota_mb"
LABEL_OWNER = "agentrun.owner"
"""The worker that created the object (`SandboxConfig.owner`); Docker cannot relabel."""
"""On a workspace volume that is an image of this many MiB (absent: no quota)."""
ORPHAN_IMAGE_GRACE_S = 60.0
"""Images without a volume younger than this are left alone (a volume may be on its way)."""


class Containers:
    """Docker objects of one namespace. Thread-safe (the Docker client is)."""

    def __init__(self, config: SandboxConfig, docker_client: Any, connections: Connections) -> None:
        self.config = config
        self.ns = config.namespace
        self.docker = docker_client
        self._connections = connections
        self._ncpu: float | None = None
        self.images = WorkspaceImages(config.workspace_images, self.ns, SANDBOX_USER)

    # ================================================================== resources

    def host_cpus(self) -> float:
        if self._ncpu is None:
            with docker_errors("info"):
                self._ncpu = float(self.docker.info().get("NCPU") or 1)
        return self._ncpu

    def resources(self, policy: SandboxPolicy) -> Resources:
        return resolve_resources(self.config, policy, self.host_cpus)

    # ================================================================== lookup

    def get(self, name: str) -> Any | None:
        with docker_errors("inspect container"):
            try:
                return self.docker.containers.get(name)
            except docker.errors.NotFound:
                return None

    def of_run(self, run: RunRef) -> Any | None:
        return self.get(_names.container_name(self.ns, run))

    def call_key(self, container: Any) -> bytes:
        volume = container.labels.get(LABEL_VOLUME)
        with docker_errors("inspect volume"):
            labels = self.docker.volumes.get(volume).attrs.get("Labels") or {}
        key = labels.get(LABEL_CALL_KEY)
        if not key:
            raise SandboxUnavailable(f"workspace volume {volume} has no call key label")
        return bytes.fromhex(key)

    # ================================================================== creation

    def owner_label(self) -> dict[str, str]:
        return {LABEL_OWNER: self.config.owner} if self.config.owner else {}

    def kwargs(
        self, res: Resources, volume: str, labels: dict[str, str], command: list[str]
    ) -> dict[str, Any]:
        """The `containers.create` arguments of a hardened sandbox container."""
        kwargs: dict[str, Any] = {
            "image": res.image,
            "command": command,
            "labels": {
                LABEL_MANAGED: "true",
                LABEL_NAMESPACE: self.ns,
                **self.owner_label(),
                **labels,
            },
            "user": SANDBOX_USER,
            "working_dir": WORKSPACE,
            "hostname": "sandbox",
            # Only what the image sets (PATH, LANG, HOME): nothing of the worker's.
            "environment": {},
            "read_only": True,
            "mounts": [docker.types.Mount(WORKSPACE, volume, type="volume")],
            "tmpfs": {  # the container's own /tmp, not the worker's
                "/tmp": f"rw,nosuid,nodev,size={self.config.tmp_mb}m,mode=1777",  # noqa: S108
                "/home/agent": "rw,nosuid,nodev,size=16m,uid=10001,gid=10001,mode=0700",
            },
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            **limit_kwargs(res),
            "ipc_mode": "private",
            "init": True,
            "stdin_open": True,
            "tty": False,
            # The executor's stdout is the protocol: never write it to a log on the host.
            "log_config": docker.types.LogConfig(type="none"),
            "detach": True,
        }
        if self.config.runtime:
            kwargs["runtime"] = self.config.runtime
        return kwargs

    def ensure_volume(
        self, name: str, labels: dict[str, str], workspace_mb: int | None = None
    ) -> None:
        """Create the workspace volume with a fresh call key, unless it exists.

        With the quota on, the volume is an image of `workspace_mb` (default: the
        operator's default size), made and attached here, so the volume can be
        mounted as soon as this returns. Idempotent across workers: a volume created
        by a worker that died before its image was made gets the image now.
        """
        size = self.config.workspace_mb if workspace_mb is None else workspace_mb
        with docker_errors("create volume"):
            try:
                volume = self.docker.volumes.get(name)
            except docker.errors.NotFound:
                quota = self.images.enabled
                volume = self.docker.volumes.create(
                    name=name,
                    driver="local",
                    driver_opts=self.images.volume_options(name) if quota else None,
                    labels={
                        LABEL_MANAGED: "true",
                        LABEL_NAMESPACE: self.ns,
                        LABEL_CALL_KEY: secrets.token_hex(32),
                        **({LABEL_QUOTA_MB: str(size)} if quota else {}),
                        **self.owner_label(),
                        **labels,
                    },
                )
        quota_mb = (volume.attrs.get("Labels") or {}).get(LABEL_QUOTA_MB)
        if quota_mb is not None:
            self.images.provision(name, int(quota_mb))

    def _quota_link(self, volume: str) -> Path | None:
        """The image link a quota volume mounts (None: no such volume, or no quota)."""
        with docker_errors("inspect volume"):
            try:
                attrs = self.docker.volumes.get(volume).attrs
            except docker.errors.NotFound:
                return None
        if LABEL_QUOTA_MB not in (attrs.get("Labels") or {}):
            return None
        return Path((attrs.get("Options") or {})["device"])

    def _default_link(self, volume: str) -> Path | None:
        """Where this worker keeps the volume's image (a retried destroy finds it there)."""
        return self.images.link_for(volume) if self.images.enabled else None

    def attach_workspace(self, container: Any) -> None:
        """Make sure the container's workspace image is attached before it starts."""
        volume = container.labels.get(LABEL_VOLUME)
        link = self._quota_link(volume) if volume else None
        if link is not None:
            attach(link)

    def sweep_workspace_images(self, removed_volumes: list[str]) -> list[str]:
        """Release the images of volumes removed by someone else (the janitor).

        Those just removed go at once; the rest of this namespace's images without a
        volume after a grace period (see `WorkspaceImages.sweep`).
        """
        if not self.images.enabled:
            return []
        released = [v for v in removed_volumes if release(self.images.link_for(v))]
        with docker_errors("list volumes"):
            volumes = self.docker.volumes.list(filters={"label": f"{LABEL_NAMESPACE}={self.ns}"})
        live = {v.name for v in volumes}
        return released + self.images.sweep(live, grace_s=ORPHAN_IMAGE_GRACE_S)

    def create_for_run(self, run: RunRef, res: Resources) -> Any:
        """The run's own container and volume (not from the pool); idempotent across workers."""
        name = _names.container_name(self.ns, run)
        volume = _names.volume_name(self.ns, run)
        run_labels = {LABEL_TENANT: run.tenant_id, LABEL_RUN: run.run_id}
        self.ensure_volume(volume, run_labels, res.workspace_mb)
        command = [
            *EXECUTOR_CMD,
            f"--workspace-bytes={res.workspace_mb << 20}",
            f"--owner={run.tenant_id}/{run.run_id}",
        ]
        kwargs = self.kwargs(res, volume, {**run_labels, LABEL_VOLUME: volume}, command)
        with docker_errors("create container"):
            try:
                return self.docker.containers.create(name=name, **kwargs)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
        # Another worker is creating it: use theirs (Docker reserves the name before the
        # container becomes visible, so look a few times).
        for _ in range(50):
            existing = self.get(name)
            if existing is not None:
                return existing
            time.sleep(0.05)
        raise SandboxUnavailable(f"container {name} is being created by another worker")

    def discard(self, container: Any) -> None:
        """Remove a container and its volume (and image), quietly (best effort)."""
        with contextlib.suppress(docker.errors.DockerException, SandboxError):
            volume = container.labels.get(LABEL_VOLUME)
            container.remove(force=True)
            if volume:
                link = self._quota_link(volume) or self._default_link(volume)
                self.docker.volumes.get(volume).remove(force=True)
                if link is not None:
                    release(link)

    # ================================================================== lifecycle

    def make_running(self, container: Any) -> None:
        """Start, unpause or wait for the container until it runs."""
        with docker_errors("start container"):
            for _ in range(50):
                container.reload()
                state = container.attrs["State"]
                if state.get("Paused"):
                    # exec on a paused run implies it is running again.
                    container.unpause()
                elif state.get("Running"):
                    return
                elif state.get("Restarting") or state.get("Status") == "removing":
                    time.sleep(0.1)
                else:
                    # Its workspace's loop device may be gone (host reboot).
                    self.attach_workspace(container)
                    container.start()
        raise SandboxUnavailable(f"container {container.name} does not reach the running state")

    def pause(self, run: RunRef) -> None:
        """Freeze every process of the run (cgroup freezer); memory and workspace stay."""
        container = self.of_run(run)
        if container is None:
            return
        with docker_errors("pause"):
            if container.attrs["State"].get("Running") and not container.attrs["State"].get(
                "Paused"
            ):
                try:
                    container.pause()
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # already paused
                        raise

    def resume(self, run: RunRef) -> None:
        container = self.of_run(run)
        if container is None:
            return
        self.make_running(container)

    def stop(self, run: RunRef) -> None:
        """Stop an idle run's container (a paused one too); the container and its
        workspace volume stay for `make_running` to start again."""
        container = self.of_run(run)
        if container is None:
            return
        with docker_errors("stop"):
            try:
                if container.attrs["State"].get("Paused"):
                    container.unpause()
                if container.attrs["State"].get("Running"):
                    container.stop(timeout=1)
            except docker.errors.NotFound:
                pass

    def destroy(self, run: RunRef, *, keep_workspace: bool) -> None:
        """Remove the run's container and volume; with `keep_workspace`, stop and keep both.

        The stopped container is kept because it is the only way to find a pool-born
        workspace again (see the module docstring); the janitor removes both later.
        """
        self._connections.forget(run)
        container = self.of_run(run)
        volumes = {_names.volume_name(self.ns, run)}
        with docker_errors("destroy"):
            if container is not None:
                if container.labels.get(LABEL_VOLUME):
                    volumes.add(container.labels[LABEL_VOLUME])
                try:
                    if keep_workspace:
                        if container.attrs["State"].get("Paused"):
                            container.unpause()
                        container.stop(timeout=1)
                        return
                    container.remove(force=True)
                except docker.errors.NotFound:
                    pass
            if keep_workspace:
                return
            for volume in volumes:
                link = self._quota_link(volume) or self._default_link(volume)
                with contextlib.suppress(docker.errors.NotFound):
                    self.docker.volumes.get(volume).remove(force=True)
                if link is not None:
                    release(link)
