"""`DockerSandbox`: the `Sandbox` protocol on hardened, per-run Docker containers.

Design (why it looks like this):

* **Identity lives in Docker, not in memory.** A run's container is found by its
  deterministic name (`sandbox/_names.py`), so any worker process, including one that
  starts after a crash, finds it; the in-process caches (handles, attach channels) are
  optimisations that are dropped and rebuilt whenever Docker disagrees.
* **The executor is the container's main process** (`sandbox/image/executor.py`). The
  worker talks to it over the container's attached stdin/stdout (`sandbox/_channel.py`),
  which makes a warm call one round trip instead of a `docker exec`.
* **Pool.** `sandbox_pool_size` containers are kept started and unassigned, each with
  its own fresh workspace volume. A run claims one by asking its executor (first claim
  wins, which arbitrates between worker processes racing for the same container), then
  renames it to the run's name; its volume becomes the run's workspace. Only runs with
  the default image, no network and the default cpu/memory/pids limits use the pool
  (the workspace size is handed to the executor at claim time); others get a container
  created for them, with a volume named after the run.
* **Docker cannot rename or relabel a volume**, so a pool-born workspace is found only
  through its container. That is why `destroy(keep_workspace=True)` stops the container
  and keeps it (no processes, no memory) instead of removing it: the stopped container
  is the index to the kept workspace, and `exec` on the run starts it again.
* **Exactly-once**: see the executor's docstring. Call ids are tokenised with an HMAC
  key stored as a label of the workspace volume, which the container cannot read, so
  a command cannot pre-create the record of a future call. Trade-off: commands run as
  the same uid as the executor, so a command *can* delete or edit records of calls that
  already finished (`rm -rf /workspace/.agentrun`); a retried call whose record was
  deleted by the run itself would run again. Only the run's own data is at stake.
* **Workspace size** (cgroup v1, ext4 here: no volume quotas): RLIMIT_FSIZE stops a
  single file at the remaining budget, and the executor's watchdog kills calls that
  push the workspace over the limit (see the executor). Reported as `limit="disk"`.

This module must not: touch host paths (no bind mounts, no `docker cp` of host files),
send traffic to a container's network (everything goes through the Docker API), keep
state required for correctness in memory, or raise for a command's own failure
(limits and exit codes are data in `ExecOutcome`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions

from agentrun.config import Settings
from agentrun.contracts import SandboxPolicy
from sandbox import _names
from sandbox._channel import Channel, ChannelClosed, ExecutorError
from sandbox.base import (
    CollectedFile,
    ExecOutcome,
    FileEntry,
    JanitorReport,
    RunRef,
    SandboxError,
    SandboxPathError,
    SandboxPolicyError,
    SandboxUnavailable,
)

log = logging.getLogger(__name__)

EXECUTOR_VERSION = 1
"""Must equal `VERSION` in sandbox/image/executor.py; a mismatch means a stale image."""
EXECUTOR_CMD = ["python3", "-I", "-S", "/opt/agentrun/executor.py"]
WORKSPACE = "/workspace"

LABEL_MANAGED = "agentrun.managed"
LABEL_NAMESPACE = "agentrun.namespace"
LABEL_TENANT = "agentrun.tenant"
LABEL_RUN = "agentrun.run"
LABEL_POOL = "agentrun.pool"
LABEL_VOLUME = "agentrun.volume"
LABEL_CALL_KEY = "agentrun.callkey"

CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
READ_CHUNK = 1 << 20
WRITE_CHUNK = 192 << 10
ATTEMPTS = 3
ORPHAN_GRACE_S = 60.0
"""The janitor leaves pool objects younger than this alone (a pool fill may be under way)."""


@dataclass(frozen=True)
class Resources:
    """A run's effective sandbox settings after the operator's allow-list and maxima."""

    image: str
    network: bool
    memory_mb: int
    cpus: float
    pids: int
    workspace_mb: int


@dataclass(frozen=True)
class _Handle:
    container_id: str
    key: bytes


@contextlib.contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Translate Docker failures into the sandbox's retry postures, in one place.

    Callers catch `docker.errors.NotFound` / 409 conflicts they expect *inside* this
    block; everything else Docker raises ends here.
    """
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise SandboxPolicyError(
            f"{what}: image not found ({exc.explanation}); build it with "
            "scripts/build-sandbox-image.sh or fix AGENTRUN_SANDBOX_IMAGE"
        ) from exc
    except docker.errors.APIError as exc:
        status = exc.status_code or 500
        if status >= 500 or status in (408, 409, 429):
            raise SandboxUnavailable(f"{what}: Docker error {status}: {exc.explanation}") from exc
        raise SandboxPolicyError(f"{what}: Docker refused ({status}): {exc.explanation}") from exc
    except (requests.exceptions.RequestException, docker.errors.DockerException, OSError) as exc:
        raise SandboxUnavailable(f"{what}: Docker engine unreachable: {exc}") from exc


def _const(payload: dict[str, Any]) -> Callable[[_Handle], dict[str, Any]]:
    """A request that does not depend on the container (most but `exec`/`output`)."""
    return lambda _handle: payload


def _check_rel(path: str) -> None:
    """Cheap worker-side refusal; the executor re-checks after resolving symlinks."""
    if path.startswith("/") or "\x00" in path:
        raise SandboxPathError(f"path must be relative to the workspace: {path!r}")
    if ".." in path.split("/"):
        raise SandboxPathError(f"path must not contain '..': {path!r}")


def _created_age_s(created: str) -> float:
    """Seconds since a Docker `Created`/`CreatedAt` timestamp (0 when unparsable)."""
    try:
        stamp = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (datetime.now(UTC) - stamp).total_seconds()


class DockerSandbox:
    """The `Sandbox` protocol on Docker. Thread-safe; one instance per worker process.

    >>> sandbox = DockerSandbox(load_settings())
    >>> sandbox.warm_pool()          # optional, at worker start
    >>> out = sandbox.exec(RunRef("acme", "r1"), "s0-c0", "echo hi",
    ...                    policy=SandboxPolicy(), timeout_s=30, max_output_bytes=16384)
    """

    def __init__(self, settings: Settings, docker_client: Any = None) -> None:
        self._settings = settings
        self._ns = settings.sandbox_namespace
        with docker_errors("connect"):
            self._docker = docker_client or docker.from_env(timeout=60)
        self._lock = threading.Lock()
        self._channels: dict[str, Channel] = {}
        self._handles: dict[RunRef, _Handle] = {}
        self._run_locks: dict[RunRef, threading.Lock] = {}
        self._pool_thread: threading.Thread | None = None
        self._pool_again = False
        self._closed = False
        self._ncpu: float | None = None

    # ================================================================== lifecycle

    def close(self) -> None:
        """Stop the pool filler and drop attach channels (containers keep running)."""
        self._closed = True
        thread = self._pool_thread
        if thread is not None:
            thread.join(timeout=30)
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
            self._handles.clear()
        for channel in channels:
            channel.close()

    def resources(self, policy: SandboxPolicy) -> Resources:
        """Apply the operator's allow-list and maxima; refuse what exceeds them."""
        s = self._settings
        image = policy.image or s.sandbox_image
        if image not in s.allowed_images():
            raise SandboxPolicyError(
                f"image {image!r} is not allowed; allowed: {s.allowed_images()} "
                "(operators extend AGENTRUN_SANDBOX_IMAGE_ALLOWLIST)"
            )
        if policy.network and not s.sandbox_allow_network:
            raise SandboxPolicyError(
                "this deployment does not allow sandbox network access "
                "(operators enable it with AGENTRUN_SANDBOX_ALLOW_NETWORK=true)"
            )

        def bounded(name: str, asked: float | None, default: float, maximum: float) -> float:
            value = default if asked is None else asked
            if value > maximum:
                raise SandboxPolicyError(
                    f"sandbox {name}={value} exceeds the operator maximum {maximum} "
                    f"(AGENTRUN_SANDBOX_MAX_{name.upper()}); ask for at most {maximum}"
                )
            return value

        cpus = bounded("cpus", policy.cpus, s.sandbox_cpus, s.sandbox_max_cpus)
        return Resources(
            image=image,
            network=policy.network,
            memory_mb=int(
                bounded("memory_mb", policy.memory_mb, s.sandbox_memory_mb, s.sandbox_max_memory_mb)
            ),
            # Docker refuses more CPUs than the host has: clamp silently, it is a ceiling.
            cpus=min(cpus, self._host_cpus()),
            pids=int(bounded("pids", policy.pids, s.sandbox_pids, s.sandbox_max_pids)),
            workspace_mb=int(
                bounded(
                    "workspace_mb",
                    policy.workspace_mb,
                    s.sandbox_workspace_mb,
                    s.sandbox_max_workspace_mb,
                )
            ),
        )

    def _host_cpus(self) -> float:
        if self._ncpu is None:
            with docker_errors("info"):
                self._ncpu = float(self._docker.info().get("NCPU") or 1)
        return self._ncpu

    def _run_lock(self, run: RunRef) -> threading.Lock:
        with self._lock:
            return self._run_locks.setdefault(run, threading.Lock())

    def _handle(self, run: RunRef, policy: SandboxPolicy | None) -> _Handle:
        """The run's running container, created or claimed on first use (idempotent)."""
        handle = self._handles.get(run)
        if handle is not None:
            return handle
        with self._run_lock(run):
            handle = self._handles.get(run)
            if handle is None:
                handle = self._find_or_create(run, policy or SandboxPolicy())
                self._handles[run] = handle
            return handle

    def _forget(self, run: RunRef) -> None:
        with self._lock:
            handle = self._handles.pop(run, None)
            channel = self._channels.pop(handle.container_id, None) if handle else None
        if channel is not None:
            channel.close()

    def _get_container(self, name: str) -> Any | None:
        with docker_errors("inspect container"):
            try:
                return self._docker.containers.get(name)
            except docker.errors.NotFound:
                return None

    def _find_or_create(self, run: RunRef, policy: SandboxPolicy) -> _Handle:
        name = _names.container_name(self._ns, run)
        container = self._get_container(name)
        if container is None:
            res = self.resources(policy)
            if self._pool_eligible(res):
                container = self._claim_from_pool(run, res)
            if container is None:
                container = self._create_run_container(run, res)
        self._make_running(container)
        return _Handle(container.id, self._call_key(container))

    def _make_running(self, container: Any) -> None:
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
                    container.start()
        raise SandboxUnavailable(f"container {container.name} does not reach the running state")

    def _call_key(self, container: Any) -> bytes:
        volume = container.labels.get(LABEL_VOLUME)
        with docker_errors("inspect volume"):
            labels = self._docker.volumes.get(volume).attrs.get("Labels") or {}
        key = labels.get(LABEL_CALL_KEY)
        if not key:
            raise SandboxUnavailable(f"workspace volume {volume} has no call key label")
        return bytes.fromhex(key)

    def _container_kwargs(
        self, res: Resources, volume: str, labels: dict[str, str], command: list[str]
    ) -> dict[str, Any]:
        s = self._settings
        kwargs: dict[str, Any] = {
            "image": res.image,
            "command": command,
            "labels": {LABEL_MANAGED: "true", LABEL_NAMESPACE: self._ns, **labels},
            "user": "10001:10001",
            "working_dir": WORKSPACE,
            "hostname": "sandbox",
            # Only what the image sets (PATH, LANG, HOME): nothing of the worker's.
            "environment": {},
            "network_mode": "bridge" if res.network else "none",
            "read_only": True,
            "mounts": [docker.types.Mount(WORKSPACE, volume, type="volume")],
            "tmpfs": {  # the container's own /tmp, not the worker's
                "/tmp": f"rw,nosuid,nodev,size={s.sandbox_tmp_mb}m,mode=1777",  # noqa: S108
                "/home/agent": "rw,nosuid,nodev,size=16m,uid=10001,gid=10001,mode=0700",
            },
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": res.pids,
            "mem_limit": f"{res.memory_mb}m",
            "memswap_limit": f"{res.memory_mb}m",
            "nano_cpus": int(res.cpus * 1e9),
            "ulimits": [docker.types.Ulimit(name="nofile", soft=4096, hard=4096)],
            "ipc_mode": "private",
            "init": True,
            "stdin_open": True,
            "tty": False,
            # The executor's stdout is the protocol: never write it to a log on the host.
            "log_config": docker.types.LogConfig(type="none"),
            "detach": True,
        }
        if s.sandbox_runtime:
            kwargs["runtime"] = s.sandbox_runtime
        return kwargs

    def _ensure_volume(self, name: str, labels: dict[str, str]) -> None:
        with docker_errors("create volume"):
            try:
                self._docker.volumes.get(name)
                return
            except docker.errors.NotFound:
                pass
            self._docker.volumes.create(
                name=name,
                labels={
                    LABEL_MANAGED: "true",
                    LABEL_NAMESPACE: self._ns,
                    LABEL_CALL_KEY: secrets.token_hex(32),
                    **labels,
                },
            )

    def _create_run_container(self, run: RunRef, res: Resources) -> Any:
        name = _names.container_name(self._ns, run)
        volume = _names.volume_name(self._ns, run)
        run_labels = {LABEL_TENANT: run.tenant_id, LABEL_RUN: run.run_id}
        self._ensure_volume(volume, run_labels)
        command = [
            *EXECUTOR_CMD,
            f"--workspace-bytes={res.workspace_mb << 20}",
            f"--owner={run.tenant_id}/{run.run_id}",
        ]
        kwargs = self._container_kwargs(res, volume, {**run_labels, LABEL_VOLUME: volume}, command)
        with docker_errors("create container"):
            try:
                return self._docker.containers.create(name=name, **kwargs)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
        # Another worker is creating it: use theirs (Docker reserves the name before the
        # container becomes visible, so look a few times).
        for _ in range(50):
            existing = self._get_container(name)
            if existing is not None:
                return existing
            time.sleep(0.05)
        raise SandboxUnavailable(f"container {name} is being created by another worker")

    # ================================================================== pool

    def _pool_eligible(self, res: Resources) -> bool:
        s = self._settings
        return (
            s.sandbox_pool_size > 0
            and res.image == s.sandbox_image
            and not res.network
            and res.memory_mb == s.sandbox_memory_mb
            and res.cpus == min(s.sandbox_cpus, self._host_cpus())
            and res.pids == s.sandbox_pids
        )

    def _pool_containers(self, status: str | None = "running") -> list[Any]:
        filters: dict[str, Any] = {"label": [f"{LABEL_NAMESPACE}={self._ns}", f"{LABEL_POOL}=true"]}
        if status:
            filters["status"] = status
        with docker_errors("list pool"):
            found = self._docker.containers.list(all=status is None, filters=filters)
        return [c for c in found if _names.is_pool_container(self._ns, c.name)]

    def _claim_from_pool(self, run: RunRef, res: Resources) -> Any | None:
        owner = f"{run.tenant_id}/{run.run_id}"
        candidates = self._pool_containers()
        random.shuffle(candidates)
        claimed = None
        for container in candidates:
            try:
                answer = self._channel(container.id).request(
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
                    self._discard(container)
                    claimed = self._get_container(_names.container_name(self._ns, run))
                    break
            claimed = container
            break
        self.refill_pool_async()
        return claimed

    def _discard(self, container: Any) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            volume = container.labels.get(LABEL_VOLUME)
            container.remove(force=True)
            if volume:
                self._docker.volumes.get(volume).remove(force=True)

    def _create_pool_container(self) -> None:
        slot = secrets.token_hex(6)
        volume = _names.pool_volume_name(self._ns, slot)
        self._ensure_volume(volume, {LABEL_POOL: "true"})
        res = self.resources(SandboxPolicy())
        command = [*EXECUTOR_CMD, f"--workspace-bytes={res.workspace_mb << 20}"]
        kwargs = self._container_kwargs(
            res, volume, {LABEL_POOL: "true", LABEL_VOLUME: volume}, command
        )
        with docker_errors("create pool container"):
            container = self._docker.containers.create(
                name=_names.pool_container_name(self._ns, slot), **kwargs
            )
            container.start()
        # Attach now, so a claim from this process costs no connection set-up.
        with contextlib.suppress(ChannelClosed, ExecutorError, TimeoutError, SandboxError):
            self._channel(container.id)

    def warm_pool(self) -> int:
        """Fill the pool up to `sandbox_pool_size` now; returns how many were created."""
        created = 0
        while not self._closed and len(self._pool_containers()) < self._settings.sandbox_pool_size:
            self._create_pool_container()
            created += 1
        return created

    def refill_pool_async(self) -> None:
        """Top the pool up in a background thread (at most one per process)."""
        if self._closed or self._settings.sandbox_pool_size == 0:
            return
        with self._lock:
            if self._pool_thread is not None and self._pool_thread.is_alive():
                self._pool_again = True  # the running filler looks once more
                return
            self._pool_again = False
            self._pool_thread = threading.Thread(
                target=self._refill_quietly, name="sandbox-pool", daemon=True
            )
            self._pool_thread.start()

    def _refill_quietly(self) -> None:
        while True:
            try:
                self.warm_pool()
            except SandboxError as exc:
                log.warning("sandbox pool refill failed: %s", exc)
            with self._lock:
                if not self._pool_again or self._closed:
                    return
                self._pool_again = False

    # ================================================================== channel

    def _channel(self, container_id: str) -> Channel:
        with self._lock:
            channel = self._channels.get(container_id)
            if channel is not None and channel.alive:
                return channel
            with docker_errors("attach"):
                channel = Channel(self._docker.api, container_id)
            self._channels[container_id] = channel
        hello = channel.request({"op": "hello"}, timeout_s=15)
        if hello.get("version") != EXECUTOR_VERSION:
            raise SandboxPolicyError(
                f"the sandbox image's executor speaks version {hello.get('version')}, this "
                f"worker needs {EXECUTOR_VERSION}: rebuild it with "
                "scripts/build-sandbox-image.sh --force"
            )
        return channel

    def _call(
        self,
        run: RunRef,
        policy: SandboxPolicy | None,
        payload: Callable[[_Handle], dict[str, Any]],
        *,
        timeout_s: float,
        heartbeat: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """One executor request with reconnects; every request is idempotent."""
        last: Exception | None = None
        for _ in range(ATTEMPTS):
            handle = self._handle(run, policy)
            try:
                channel = self._channel(handle.container_id)
                return channel.request(payload(handle), timeout_s=timeout_s, heartbeat=heartbeat)
            except (ChannelClosed, SandboxUnavailable) as exc:
                # The container stopped, restarted or was removed: look it up again.
                last = exc
                self._forget(run)
            except TimeoutError as exc:
                self._forget(run)
                raise SandboxUnavailable(f"sandbox of {run} did not answer: {exc}") from exc
            except ExecutorError as exc:
                if exc.kind == "path" or exc.kind == "os":
                    raise SandboxPathError(str(exc)) from exc
                if exc.kind == "value":
                    raise SandboxPolicyError(str(exc)) from exc
                if exc.kind == "disk":
                    raise SandboxPolicyError(f"workspace limit reached: {exc}") from exc
                last = exc
                time.sleep(0.2)
        raise SandboxUnavailable(f"sandbox of {run} unavailable: {last}")

    # ================================================================== exec

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
    ) -> ExecOutcome:
        """Run `command` once per `call_id`; a repeated id re-attaches to the first run."""
        if not CALL_ID.match(call_id):
            raise SandboxPolicyError(f"call id {call_id!r} must match {CALL_ID.pattern}")
        for name in env or {}:
            if not ENV_NAME.match(name):
                raise SandboxPolicyError(f"environment variable name {name!r} is invalid")
        max_output = max(0, min(max_output_bytes, self._settings.sandbox_output_store_bytes))

        def payload(handle: _Handle) -> dict[str, Any]:
            return {
                "op": "exec",
                "call": call_id,
                "token": self._token(handle, call_id),
                "cmd": command,
                "timeout": timeout_s,
                "max_output": max_output,
                "store_cap": self._settings.sandbox_output_store_bytes,
                "env": dict(env or {}),
            }

        result = self._call(run, policy, payload, timeout_s=timeout_s + 60, heartbeat=heartbeat)
        return ExecOutcome(
            exit_code=result.get("exit_code"),
            stdout=base64.b64decode(result.get("stdout", "")),
            stderr=base64.b64decode(result.get("stderr", "")),
            stdout_total=int(result.get("stdout_total", 0)),
            stderr_total=int(result.get("stderr_total", 0)),
            duration_ms=int(result.get("duration_ms", 0)),
            limit=result.get("limit"),
            reattached=bool(result.get("reattached")),
        )

    @staticmethod
    def _token(handle: _Handle, call_id: str) -> str:
        return hmac.new(handle.key, call_id.encode(), hashlib.sha256).hexdigest()[:32]

    def read_call_output(self, run: RunRef, call_id: str, stream: str, max_bytes: int) -> bytes:
        """The recorded stdout/stderr of a call (at most `sandbox_output_store_bytes`)."""
        if stream not in ("stdout", "stderr"):
            raise SandboxPolicyError("stream must be 'stdout' or 'stderr'")
        if not CALL_ID.match(call_id):
            raise SandboxPathError(f"no such call: {call_id!r}")
        out = bytearray()
        while len(out) < max_bytes:
            want = min(READ_CHUNK, max_bytes - len(out))
            offset = len(out)

            def payload(handle: _Handle, offset: int = offset, want: int = want) -> dict[str, Any]:
                return {
                    "op": "output",
                    "call": call_id,
                    "token": self._token(handle, call_id),
                    "stream": stream,
                    "offset": offset,
                    "length": want,
                }

            data = base64.b64decode(self._call(run, None, payload, timeout_s=60)["data"])
            out += data
            if len(data) < want:
                break
        return bytes(out)

    # ================================================================== files

    def read_file(self, run: RunRef, path: str, *, policy: SandboxPolicy, max_bytes: int) -> bytes:
        _check_rel(path)
        out = bytearray()
        while True:
            want = min(READ_CHUNK, max_bytes - len(out))
            request = {"op": "read", "path": path, "offset": len(out), "length": want}
            answer = self._call(run, policy, _const(request), timeout_s=60)
            data = base64.b64decode(answer["data"])
            out += data
            if len(data) < want or len(out) >= max_bytes:
                return bytes(out)

    def write_file(self, run: RunRef, path: str, data: bytes, *, policy: SandboxPolicy) -> None:
        _check_rel(path)
        if not path.strip("/."):
            raise SandboxPathError("write_file needs a file path, not the workspace root")
        tmp = secrets.token_hex(12)
        for offset in range(0, len(data), WRITE_CHUNK):
            request = {
                "op": "write",
                "tmp": tmp,
                "offset": offset,
                "size": len(data),
                "data": base64.b64encode(data[offset : offset + WRITE_CHUNK]).decode(),
            }
            self._call(run, policy, _const(request), timeout_s=60)
        commit = {"op": "commit", "tmp": tmp, "path": path, "size": len(data)}
        self._call(run, policy, _const(commit), timeout_s=60)

    def list_files(
        self, run: RunRef, path: str, *, policy: SandboxPolicy, max_entries: int = 1000
    ) -> list[FileEntry]:
        _check_rel(path)
        request = {"op": "list", "path": path, "max": max_entries}
        answer = self._call(run, policy, _const(request), timeout_s=60)
        return [FileEntry(e["path"], int(e["size"]), bool(e["is_dir"])) for e in answer["entries"]]

    def collect(
        self, run: RunRef, paths: list[str], *, max_files: int = 100, max_bytes: int = 64 << 20
    ) -> list[CollectedFile]:
        for path in paths:
            _check_rel(path)
        request = {"op": "walk", "paths": paths, "max": max_files}
        listing = self._call(run, None, _const(request), timeout_s=120)["files"]
        collected: list[CollectedFile] = []
        budget = max_bytes
        for entry in listing:
            if entry["size"] > budget:
                continue
            data = self.read_file(run, entry["path"], policy=SandboxPolicy(), max_bytes=budget)
            budget -= len(data)
            collected.append(CollectedFile(entry["path"], data))
        return collected

    # ================================================================== pause, destroy

    def pause(self, run: RunRef) -> None:
        """Freeze every process of the run (cgroup freezer); memory and workspace stay."""
        container = self._get_container(_names.container_name(self._ns, run))
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
        container = self._get_container(_names.container_name(self._ns, run))
        if container is None:
            return
        self._make_running(container)

    def destroy(self, run: RunRef, *, keep_workspace: bool) -> None:
        """Remove the run's container and volume; with `keep_workspace`, stop and keep both.

        The stopped container is kept because it is the only way to find a pool-born
        workspace again (see the module docstring); `janitor` removes both later.
        """
        self._forget(run)
        container = self._get_container(_names.container_name(self._ns, run))
        volumes = {_names.volume_name(self._ns, run)}
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
                with contextlib.suppress(docker.errors.NotFound):
                    self._docker.volumes.get(volume).remove(force=True)

    def janitor(self, is_live: Callable[[RunRef], bool]) -> JanitorReport:
        """Remove this namespace's containers and volumes whose run is not live.

        Also removes pool containers that are not running or were claimed but never
        renamed (their claimer died between the two steps), pool volumes without a
        container, and pool containers beyond `sandbox_pool_size`.
        """
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
            for container in spare[self._settings.sandbox_pool_size :]:
                self._remove_container(container, report)
                in_use.discard(container.labels.get(LABEL_VOLUME, ""))
            for volume in self._docker.volumes.list(filters=ns_filter):
                if volume.name in in_use:
                    continue
                run = _names.run_of_volume(self._ns, volume.name)
                if run is not None:
                    doomed = not is_live(run)
                else:
                    doomed = _created_age_s(volume.attrs.get("CreatedAt", "")) > ORPHAN_GRACE_S
                if doomed:
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        volume.remove(force=True)
                        report.removed_volumes.append(volume.name)
        return report

    def _stuck_claim(self, container: Any) -> bool:
        if _created_age_s(container.attrs.get("Created", "")) < ORPHAN_GRACE_S:
            return False
        try:
            hello = self._channel(container.id).request({"op": "hello"}, timeout_s=5)
        except (ChannelClosed, ExecutorError, TimeoutError, SandboxError):
            return True
        return hello.get("owner") is not None

    def _remove_container(self, container: Any, report: JanitorReport) -> None:
        with self._lock:
            channel = self._channels.pop(container.id, None)
            for run, handle in list(self._handles.items()):
                if handle.container_id == container.id:
                    del self._handles[run]
        if channel is not None:
            channel.close()
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
            report.removed_containers.append(container.name)
        volume = container.labels.get(LABEL_VOLUME)
        if volume:
            with contextlib.suppress(docker.errors.NotFound):
                self._docker.volumes.get(volume).remove(force=True)
                report.removed_volumes.append(volume)
