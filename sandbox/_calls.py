"""The calls into a run's executor: exec, its recorded output, and the workspace's files.

Design (why it looks like this):

* **Every request is idempotent**, so a broken attach stream, a restarted container
  or a lost frame is handled the same way: forget the cached handle, find the
  container again, and send the request again (`ATTEMPTS` times).
* **Exactly-once**: see the executor's docstring. Call ids are tokenised with an HMAC
  key stored as a label of the workspace volume, which the container cannot read, so
  a command cannot pre-create the record of a future call. Trade-off: commands run as
  the same uid as the executor, so a command *can* delete or edit records of calls that
  already finished (`rm -rf /workspace/.agentrun`); a retried call whose record was
  deleted by the run itself would run again. Only the run's own data is at stake.
* **Output is capped twice**: `max_output_bytes` comes back with the result, at most
  `output_store_bytes` is kept in the call's record, from which
  `read_call_output` reads it back in chunks (the spill of a long output to an
  artifact). The executor never holds more than a chunk of it in memory.
* **Limits are data.** The executor names the limit that ended a call as a string
  (it imports nothing of the project); it becomes a `LimitKind` here.
* **Refusals are typed by what they mean** (`refusal`): a wrong path of a file
  operation is a `SandboxPathError`, a full workspace a `SandboxWorkspaceFull`, an
  unknown call a `SandboxCallNotFound`; a failure inside the executor is retried and
  then `SandboxUnavailable`, never a path error.
* Large files move in chunks (`READ_CHUNK`, `WRITE_CHUNK`) so no single frame or
  response grows with the file; a write lands in a temp file and is renamed into
  place by a final `commit`, so a reader never sees half a file.

This module must not: raise for a command's own failure (limits and exit codes are
data in `ExecOutcome`), or accept a path the executor would have to refuse without
refusing it first (cheaply, before a round trip; the executor checks again).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from agentrun.contracts import LimitKind, SandboxPolicy
from sandbox._channel import ChannelClosed, ExecutorError
from sandbox._connections import Connections, Handle
from sandbox.base import (
    CollectedFile,
    EgressHandler,
    ExecOutcome,
    FileEntry,
    RunRef,
    SandboxCallNotFound,
    SandboxError,
    SandboxPathError,
    SandboxPolicyError,
    SandboxUnavailable,
    SandboxWorkspaceFull,
)
from sandbox.config import SandboxConfig

CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
READ_CHUNK = 1 << 20
WRITE_CHUNK = 192 << 10
ATTEMPTS = 3

Locate = Callable[[RunRef, SandboxPolicy | None], Handle]
"""The run's running container, found or created (with `policy`, default when None)."""


def _const(payload: dict[str, Any]) -> Callable[[Handle], dict[str, Any]]:
    """A request that does not depend on the container (most but `exec`/`output`)."""
    return lambda _handle: payload


def _check_rel(path: str) -> None:
    """Cheap worker-side refusal; the executor re-checks after resolving symlinks."""
    if path.startswith("/") or "\x00" in path:
        raise SandboxPathError(f"path must be relative to the workspace: {path!r}")
    if ".." in path.split("/"):
        raise SandboxPathError(f"path must not contain '..': {path!r}")


def _token(handle: Handle, call_id: str) -> str:
    return hmac.new(handle.key, call_id.encode(), hashlib.sha256).hexdigest()[:32]


def parse_limit(raw: object) -> LimitKind | None:
    """The executor's name of the limit that ended a call, as a `LimitKind`."""
    if raw is None:
        return None
    try:
        return LimitKind(str(raw))
    except ValueError:
        raise SandboxPolicyError(
            f"the sandbox image's executor reported an unknown limit {raw!r}: rebuild it "
            "with scripts/build-sandbox-image.sh --force"
        ) from None


def refusal(exc: ExecutorError) -> SandboxError | None:
    """The permanent error an executor refusal stands for; None when it may pass.

    Only the executor's `path` kind (a file operation's path is wrong) is a
    `SandboxPathError`: the executor's own failures (`os`) are never blamed on a path.
    """
    if exc.kind == "path":
        return SandboxPathError(str(exc))
    if exc.kind == "value":
        return SandboxPolicyError(str(exc))
    if exc.kind == "disk":
        return SandboxWorkspaceFull(f"workspace limit reached: {exc}")
    if exc.kind == "call":
        return SandboxCallNotFound(str(exc))
    return None


class Calls:
    """Requests to the executors of runs, with reconnects. Thread-safe."""

    def __init__(self, config: SandboxConfig, connections: Connections, locate: Locate) -> None:
        self._config = config
        self._connections = connections
        self._locate = locate

    def _call(
        self,
        run: RunRef,
        policy: SandboxPolicy | None,
        payload: Callable[[Handle], dict[str, Any]],
        *,
        timeout_s: float,
        heartbeat: Callable[[], None] | None = None,
        egress: tuple[str, EgressHandler] | None = None,
    ) -> dict[str, Any]:
        """One executor request with reconnects; every request is idempotent.

        `egress` (call id, handler) answers that call's proxied requests while it runs.
        """
        last: Exception | None = None
        for _ in range(ATTEMPTS):
            try:
                # Inside the try: a container that vanished while it was found or
                # created (a racing janitor, a claim lost) is looked up again here,
                # without spending a Temporal retry.
                handle = self._locate(run, policy)
                channel = self._connections.channel(handle.container_id)
                answering: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
                if egress is not None:
                    if "egress" not in channel.features:
                        raise SandboxPolicyError(
                            "the sandbox image's executor has no egress proxy: rebuild it "
                            "with scripts/build-sandbox-image.sh --force"
                        )
                    answering = channel.egress_handler(*egress)
                with answering:
                    return channel.request(
                        payload(handle), timeout_s=timeout_s, heartbeat=heartbeat
                    )
            except (ChannelClosed, SandboxUnavailable) as exc:
                # The container stopped, restarted or was removed: look it up again.
                last = exc
                self._connections.forget(run)
            except TimeoutError as exc:
                self._connections.forget(run)
                raise SandboxUnavailable(f"sandbox of {run} did not answer: {exc}") from exc
            except ExecutorError as exc:
                permanent = refusal(exc)
                if permanent is not None:
                    raise permanent from exc
                # `pids` (no thread left to serve it) or `os` (the executor failed):
                # maybe transient, so try again, then let the activity retry.
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
        egress: EgressHandler | None = None,
    ) -> ExecOutcome:
        """Run `command` once per `call_id`; a repeated id re-attaches to the first run.

        With `egress`, the command gets an HTTP proxy on the container's loopback
        whose requests `egress` answers (see the executor's "Egress")."""
        if not CALL_ID.match(call_id):
            raise SandboxPolicyError(f"call id {call_id!r} must match {CALL_ID.pattern}")
        for name in env or {}:
            if not ENV_NAME.match(name):
                raise SandboxPolicyError(f"environment variable name {name!r} is invalid")
        store_cap = self._config.output_store_bytes
        max_output = max(0, min(max_output_bytes, store_cap))

        def payload(handle: Handle) -> dict[str, Any]:
            return {
                "op": "exec",
                "call": call_id,
                "token": _token(handle, call_id),
                "cmd": command,
                "timeout": timeout_s,
                "max_output": max_output,
                "store_cap": store_cap,
                "env": dict(env or {}),
                "egress": egress is not None,
            }

        result = self._call(
            run,
            policy,
            payload,
            timeout_s=timeout_s + 60,
            heartbeat=heartbeat,
            egress=(call_id, egress) if egress is not None else None,
        )
        return ExecOutcome(
            exit_code=result.get("exit_code"),
            stdout=base64.b64decode(result.get("stdout", "")),
            stderr=base64.b64decode(result.get("stderr", "")),
            stdout_total=int(result.get("stdout_total", 0)),
            stderr_total=int(result.get("stderr_total", 0)),
            duration_ms=int(result.get("duration_ms", 0)),
            limit=parse_limit(result.get("limit")),
            reattached=bool(result.get("reattached")),
        )

    def read_call_output(self, run: RunRef, call_id: str, stream: str, max_bytes: int) -> bytes:
        """The recorded stdout/stderr of a call (at most `output_store_bytes`)."""
        if stream not in ("stdout", "stderr"):
            raise SandboxPolicyError("stream must be 'stdout' or 'stderr'")
        if not CALL_ID.match(call_id):
            raise SandboxCallNotFound(f"no such call: {call_id!r}")
        out = bytearray()
        while len(out) < max_bytes:
            want = min(READ_CHUNK, max_bytes - len(out))
            offset = len(out)

            def payload(handle: Handle, offset: int = offset, want: int = want) -> dict[str, Any]:
                return {
                    "op": "output",
                    "call": call_id,
                    "token": _token(handle, call_id),
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
            try:
                data = self.read_file(run, entry["path"], policy=SandboxPolicy(), max_bytes=budget)
            except SandboxPathError:
                # Unreadable (a command made it mode 000) or gone since the walk: one
                # such file must not cost the run every other artifact and its transcript.
                continue
            budget -= len(data)
            collected.append(CollectedFile(entry["path"], data))
        return collected
