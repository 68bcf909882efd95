"""The sandbox interface the tool activities program against.

A sandbox is one isolated environment per run (a hardened container for the
Docker implementation). Implementations are synchronous (the Docker SDK is) and
are called from the worker's activity thread pool, never from workflow code.

Contract every implementation keeps:
- `exec` is exactly-once per `call_id`: calling it again with the same id (a
  retried activity after a worker crash) re-attaches to that call and returns
  its recorded result; it never starts the command a second time.
- Every path is relative to the run's workspace; escaping it is an error.
- Limits are reported as data (`ExecOutcome.limit`), not raised: they are the
  model's problem to react to, not the worker's.
- A call's processes end with it: nothing it started (in the background, with
  `nohup`, `setsid` or a double fork) is still running when `exec` returns.
- The workspace's size is enforced by the kernel where the implementation can
  (a write past it fails with ENOSPC); a call that filled it reports `DISK`.
- Unless its policy asks for `network` (and the operator allows it), a command
  reaches the network only through `exec`'s `egress` handler, when it is given one
  (an HTTP proxy inside the sandbox, answered in the worker); the sandbox itself has
  no route. `env` values reach that one command's process only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agentrun.contracts import LimitKind, SandboxPolicy


class SandboxError(Exception):
    """Base class. `retryable` says whether the activity should be retried."""

    retryable = True


class SandboxUnavailable(SandboxError):
    """The engine is down or overloaded: transient, retry with backoff."""


class SandboxPolicyError(SandboxError):
    """The run asked for something the operator does not allow (image, network, limits)."""

    retryable = False


class SandboxPathError(SandboxError):
    """A path a file operation was given escapes the workspace, does not exist, is not
    the right kind of file or may not be read or written. Only that: a failure of the
    sandbox itself is never a path error."""

    retryable = False


class SandboxWorkspaceFull(SandboxPolicyError):
    """A file operation needs more space than the workspace's size limit leaves."""


class SandboxCallNotFound(SandboxError):
    """The workspace holds no record of that call (never run here, or deleted by the run)."""

    retryable = False


@dataclass(frozen=True)
class RunRef:
    tenant_id: str
    run_id: str


@dataclass
class ExecOutcome:
    exit_code: int | None
    stdout: bytes
    """At most `max_output_bytes`."""
    stderr: bytes
    stdout_total: int
    stderr_total: int
    duration_ms: int
    limit: LimitKind | None = None
    """Which limit ended the command, if any: `TIMEOUT`, `MEMORY`, `PIDS`, `OUTPUT`, `DISK`;
    or `INTERRUPTED` when the sandbox restarted under the call (it is never re-run)."""
    reattached: bool = False
    """True when the result was recorded by an earlier attempt of the same call."""


@dataclass
class EgressRequest:
    """An HTTP request a command sent to its call's egress proxy (inside the container).

    `url` is what the command asked for (`http://host[:port]/path?query`), exactly as
    it arrived; the worker's broker decides whether and where it goes.
    """

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class EgressResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


EgressHandler = Callable[[EgressRequest], EgressResponse]
"""Answers a call's proxied requests, in the worker (never raises: refusals are 403s)."""


@dataclass
class FileEntry:
    path: str
    size: int
    is_dir: bool


@dataclass
class CollectedFile:
    path: str
    data: bytes


@dataclass
class JanitorReport:
    removed_containers: list[str] = field(default_factory=list)
    removed_volumes: list[str] = field(default_factory=list)
    released_workspaces: list[str] = field(default_factory=list)
    """Volumes whose workspace filesystem image was detached and deleted."""


class Sandbox(Protocol):
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
        """Run `command` with `/bin/sh -c` in the run's workspace, exactly once per call_id.

        `env` is set in the command's process only (never the container's). With
        `egress`, the command gets an HTTP proxy on the container's own loopback
        (`HTTP_PROXY`) for as long as it runs; each request it sends there is answered
        by `egress`, called in the worker.
        """
        ...

    def read_call_output(self, run: RunRef, call_id: str, stream: str, max_bytes: int) -> bytes:
        """The full recorded stdout/stderr of a call (for spilling to an artifact).

        An empty stream reads as `b""`; an unknown call raises `SandboxCallNotFound`.
        """
        ...

    def read_file(
        self, run: RunRef, path: str, *, policy: SandboxPolicy, max_bytes: int
    ) -> bytes: ...

    def write_file(self, run: RunRef, path: str, data: bytes, *, policy: SandboxPolicy) -> None: ...

    def list_files(
        self, run: RunRef, path: str, *, policy: SandboxPolicy, max_entries: int = 1000
    ) -> list[FileEntry]: ...

    def collect(
        self, run: RunRef, paths: list[str], *, max_files: int = 100, max_bytes: int = 64 << 20
    ) -> list[CollectedFile]:
        """Regular files of the workspace (all when `paths` is empty), hidden dirs excluded."""
        ...

    def pause(self, run: RunRef) -> None: ...

    def resume(self, run: RunRef) -> None:
        """Unfreeze the run's container, or start it again if it was stopped."""
        ...

    def stop(self, run: RunRef) -> None:
        """Stop the run's container (idle): processes and memory go, the workspace
        stays; its next call (or `resume`) starts it again. Idempotent."""
        ...

    def destroy(self, run: RunRef, *, keep_workspace: bool) -> None:
        """Remove the container (idempotent); keep or remove the workspace volume."""
        ...

    def janitor(self, is_live: Callable[[RunRef], bool]) -> JanitorReport:
        """Remove containers and volumes of runs for which `is_live` says False."""
        ...
