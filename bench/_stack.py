"""A throwaway agentrun stack on 127.0.0.1 for benchmarks that need real processes.

    with LocalStack(workdir, StackOptions(...)) as stack:
        stack.api_url, stack.pids()["worker"], stack.namespace

Starts, each a subprocess in its own session with its log under `<workdir>/logs/`:
a Temporal dev server (the venv's `temporal` CLI, persisting to a file as the dev
stack does), `worker.py`, and the API (uvicorn). It then owns everything it made:
`close()` stops the three process groups, removes the Docker containers and
volumes of its sandbox namespace and detaches the loop devices of their workspace
images.

Design (why it looks like this):

* **Processes, not an in-process worker**: a benchmark that reports the worker's
  memory must measure a worker like the deployed one (its own interpreter, its own
  thread pool), and a worker sharing the benchmark's event loop would slow the
  client that measures it.
* **Configured only through `AGENTRUN_*` variables**, as an operator would; the
  caller's own `AGENTRUN_*` variables are dropped, so a developer's shell cannot
  point the benchmark at a real deployment.
* **A sandbox namespace of its own** (`agentrun-load-<hex>`), so counting and
  removing containers never touches the dev stack's or the tests' sandboxes.
* **Docker is read with the `docker` CLI**, not docker-py: `docker ps` lists
  without inspecting each container, so the measurement cannot race the worker's
  removals (which is what docker-py's `containers.list` does).

This module must not: listen on or send traffic to anything but 127.0.0.1, touch
Docker objects outside its own namespace, or detach a loop device whose file is not
under its own workdir.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from agentrun import search_attributes
from sandbox._containers import LABEL_NAMESPACE

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

TRANSFER_POLL_RPS = 1000
"""`history.transferProcessorMaxPollRPS` of the dev server. Its default (20 polls of
the transfer queue per second and shard, and the dev server has one shard) caps how
fast hundreds of concurrent runs get their workflow and activity tasks dispatched:
the benchmark would measure that cap instead of agentrun. (30 runs of 6 steps took
24 s with it raised and 62 s without, on the 2-core development machine.)"""

STOP_GRACE_S = 15.0
"""How long a service gets to stop on SIGTERM before its process group is killed."""


class StackError(Exception):
    """The stack could not start; the message says which service and shows its log."""


@dataclass(frozen=True)
class StackOptions:
    """What the worker is tuned to; everything else is the deployment default."""

    max_concurrent_activities: int
    max_concurrent_workflow_tasks: int
    sandbox_pool_size: int
    sandbox_image: str = "agentrun-sandbox:latest"
    extra_env: tuple[tuple[str, str], ...] = ()
    """More `AGENTRUN_*` settings for the worker and the API (a benchmark's own)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def docker_lines(*args: str) -> list[str]:
    """The non-empty output lines of a `docker` CLI command (raises on failure)."""
    out = subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


class LocalStack:
    """Temporal dev server, worker and API on 127.0.0.1; see the module docstring."""

    def __init__(self, workdir: Path, options: StackOptions) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.options = options
        tag = secrets.token_hex(3)
        self.namespace = f"agentrun-load-{tag}"
        self.task_queue = f"load-{tag}"
        self.temporal_port = free_port()
        self.api_port = free_port()
        self.api_url = f"http://{HOST}:{self.api_port}"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, timeout: float = 120.0) -> None:
        try:
            docker_lines("image", "inspect", "--format", "{{.Id}}", self.options.sandbox_image)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            raise StackError(
                f"the sandbox image {self.options.sandbox_image} is missing or Docker is not "
                "running; build it with scripts/build-sandbox-image.sh"
            ) from exc
        self.logs.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        self._spawn("temporal", self._temporal_command())
        self._wait(deadline, "temporal", lambda: _port_open(self.temporal_port))
        self._spawn("worker", [sys.executable, str(ROOT / "worker.py")])
        self._wait(deadline, "worker", lambda: "worker polling task queue" in self.tail("worker"))
        self._spawn("api", self._api_command())
        self._wait(deadline, "api", self._api_ready)

    def close(self) -> tuple[int, int, int]:
        """Stop the services (worker first, so nothing recreates containers), then
        remove the namespace's containers and volumes and detach the loop devices of
        their workspace images; returns how many of each."""
        extras = [name for name in self._procs if name not in ("api", "worker", "temporal")]
        for name in (*extras, "api", "worker", "temporal"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                _stop_group(proc)
        containers, volumes = self.remove_docker_objects()
        return containers, volumes, release_loop_devices(self.workdir)

    def add_service(
        self,
        name: str,
        command: list[str],
        ready_line: str,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> int:
        """Start one more process (say, a benchmark's own worker) like the others: in
        its own session, with the stack's environment (plus `env`) and its log under
        `logs/`, and stopped first by `close()`. Ready once `ready_line` is in its log;
        returns its pid."""
        self._spawn(name, command, env)
        self._wait(time.monotonic() + timeout, name, lambda: ready_line in self.tail(name))
        return self._procs[name].pid

    def stop_service(self, name: str) -> None:
        """Stop one service as `close()` would (SIGTERM, then SIGKILL after the grace)."""
        proc = self._procs.pop(name, None)
        if proc is not None:
            _stop_group(proc)

    def remove_docker_objects(self) -> tuple[int, int]:
        label = f"label={LABEL_NAMESPACE}={self.namespace}"
        containers = docker_lines("ps", "-aq", "--filter", label)
        if containers:
            subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, check=False)
        volumes = docker_lines("volume", "ls", "-q", "--filter", label)
        if volumes:
            subprocess.run(["docker", "volume", "rm", "-f", *volumes], capture_output=True)
        return len(containers), len(volumes)

    # ------------------------------------------------------------ readings

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items() if proc.poll() is None}

    def exited(self) -> dict[str, int]:
        """Services that died, with their exit codes (a healthy stack has none)."""
        return {
            name: code for name, proc in self._procs.items() if (code := proc.poll()) is not None
        }

    def cpu(self) -> dict[str, float]:
        """CPU seconds each running service has used so far."""
        return {name: cpu_seconds(pid) for name, pid in self.pids().items()}

    def container_states(self) -> list[str]:
        """The state (`running`, `created`, `exited` …) of each container of the namespace."""
        return docker_lines(
            "ps",
            "-a",
            "--filter",
            f"label={LABEL_NAMESPACE}={self.namespace}",
            "--format",
            "{{.State}}",
        )

    def tail(self, name: str, chars: int = 3000) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    # ------------------------------------------------------------ internals

    def env(self) -> dict[str, str]:
        o = self.options
        own = {
            "AGENTRUN_TEMPORAL_ADDRESS": f"{HOST}:{self.temporal_port}",
            "AGENTRUN_TASK_QUEUE": self.task_queue,
            "AGENTRUN_STATE_DIR": str(self.workdir / "state"),
            "AGENTRUN_DEFAULT_PROVIDER": "scripted",
            "AGENTRUN_DEV_TENANT": "load",
            "AGENTRUN_API_HOST": HOST,
            "AGENTRUN_API_PORT": str(self.api_port),
            # The benchmark's own client polls hard; a per-key limit would measure itself.
            "AGENTRUN_API_RATE_LIMIT_PER_MINUTE": "1000000",
            "AGENTRUN_API_RATE_LIMIT_BURST": "100000",
            "AGENTRUN_SANDBOX_IMAGE": o.sandbox_image,
            "AGENTRUN_SANDBOX_NAMESPACE": self.namespace,
            "AGENTRUN_SANDBOX_POOL_SIZE": str(o.sandbox_pool_size),
            "AGENTRUN_MAX_CONCURRENT_ACTIVITIES": str(o.max_concurrent_activities),
            "AGENTRUN_MAX_CONCURRENT_WORKFLOW_TASKS": str(o.max_concurrent_workflow_tasks),
            "PYTHONUNBUFFERED": "1",
            **dict(o.extra_env),
        }
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRUN_")}
        return {**inherited, **own}

    def _temporal_command(self) -> list[str]:
        return [
            str(Path(sys.executable).parent / "temporal"),
            "server",
            "start-dev",
            "--ip",
            HOST,
            "--port",
            str(self.temporal_port),
            "--headless",
            "--db-filename",
            str(self.workdir / "temporal.db"),
            "--log-level",
            "warn",
            "--dynamic-config-value",
            f"history.transferProcessorMaxPollRPS={TRANSFER_POLL_RPS}",
            *(
                f"--search-attribute={key.name}={search_attributes.index_kind(key)}"
                for key in search_attributes.ALL
            ),
        ]

    def _api_command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "api.server",
            "--host",
            HOST,
            "--port",
            str(self.api_port),
            "--log-level",
            "warning",
        ]

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            self._procs[name] = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env(), **(env or {})},
                start_new_session=True,  # its own process group: stopped as one
            )

    def auth_headers(self) -> dict[str, str]:
        """The API's bootstrap admin key (written at its first start) as headers."""
        key = (self.workdir / "state" / "admin.key").read_text().strip()
        return {"Authorization": f"Bearer {key}"}

    def _api_ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait(self, deadline: float, name: str, ready: Callable[[], bool]) -> None:
        proc = self._procs[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"{name} exited (code {proc.returncode}):\n{self.tail(name)}")
            if ready():
                return
            time.sleep(0.3)
        raise StackError(f"{name} did not become ready in time:\n{self.tail(name)}")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the service's process group, SIGKILL it after the grace period; the
    final SIGKILL also ends any child the service left behind in its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=STOP_GRACE_S)


def release_loop_devices(under: Path) -> int:
    """Detach the loop devices backed by files under `under`; returns how many.

    With the kernel-enforced workspace quota, each workspace volume is an image file
    on a loop device, kept under the worker's state directory (here, the stack's
    workdir). Removing a volume leaves its device attached until the sandbox releases
    it, which the stopped worker no longer will, and a device outlives its deleted
    file: without this, every benchmark would leak its pool's devices.
    """
    root = os.path.realpath(under) + os.sep
    detached = 0
    for entry in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            backing = entry.read_text().rstrip("\n").removesuffix(" (deleted)")
        except OSError:
            continue  # detached meanwhile
        if backing.startswith(root):
            device = f"/dev/{entry.parent.parent.name}"
            subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)
            detached += 1
    return detached


def tree_memory_kb(pid: int) -> tuple[int, int]:
    """`(VmRSS summed over pid and its descendants, VmHWM of pid)` in kB.

    The sum is what the process tree holds now; the high-water mark is the kernel's
    peak of the main process, which catches spikes between two samples. (0, 0) once
    the process is gone.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    rss = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        rss += _status_kb(current, "VmRSS")
        todo.extend(children.get(current, []))
    return rss, _status_kb(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (all its threads) has used; 0 once gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # fields[0] is the state (field 3 of stat), so utime (14) and stime (15) are 11, 12.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return 0
