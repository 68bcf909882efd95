"""agentrun's in-container executor: the sandbox container's main process.

Runs as the unprivileged `agent` user (uid 10001) under docker-init. The worker
talks to it over the container's attached stdin/stdout (never over a network), so a
warm tool call costs one round trip through dockerd instead of a `docker exec`.
Standard library only, and one file: it is copied into the image and must run on
any image that has python3 (so it imports nothing of agentrun either).

It must not: trust the worker's framing blindly (several worker processes may be
attached at once and their stdin bytes share one pipe, so every frame is
checksummed and every request is idempotent, which makes a dropped frame a retry,
not a corruption); buffer a command's output in memory beyond what it returns;
touch anything outside /workspace, /tmp and its home; let a command's process
outlive its call.

Wire format (one line per frame, ASCII):
  worker -> executor: ``F <client> <rid> <seq> <count> <crc32> <base64 chunk>``;
     the chunks of a request, joined, are its JSON.
  executor -> worker: ``R <client> <rid> <A|D> <base64 JSON>`` (A = accepted, D = done).
Exactly-once: each call gets a directory ``/workspace/.agentrun/calls/<id>.<token>``
(created atomically before the command starts, so a second request for the same id
re-attaches instead of starting it again); ``result.json`` in it is the completion
marker, written by atomic rename after the command ended. The token is an HMAC the
worker derives from a key the container never sees, so a command cannot predict and
pre-forge the directory of a future call.

Processes end with their call. Each command runs under its own subreaper (Docker's
tini, ``docker-init -s``), so whatever it starts stays in the call's process tree
even after ``setsid`` or a double fork; when the call ends (exit, timeout, a limit),
every process of the container that is neither this executor nor in the tree of
another call still running is killed (`end_processes`). There is no background
service: a daemon started by one call is gone before the next one starts.

The workspace size is enforced by the kernel: /workspace is a filesystem of that
size (the worker mounts an ext4 image per run, see sandbox/_workspace_images.py), so
a write past it fails with ENOSPC. The executor only names the limit: a call that
saw the workspace full and either used space or printed ENOSPC's message reports
``disk``; a later call that writes nothing is never blamed for it.

Egress. A call whose request says `egress` gets an HTTP proxy of its own, listening
on 127.0.0.1 in the container's network namespace (which has a loopback and no
route: the container keeps `--network none`), for as long as the call runs; the
command finds it in `HTTP_PROXY`/`http_proxy` (and `HTTPS_PROXY`, whose CONNECT
tunnels are refused with a message saying to use http:// URLs). Each request it
receives goes to the worker that runs the call as a line on stdout,
``E <client> <eid> <base64 JSON>``, and waits for the worker's `egress_reply`
request. The executor decides nothing about where a request may go: the worker's
broker does (allow-list, credentials), and it never sends a credential back here.

Layout: `STATE` holds what lasts across calls (owner, the running calls); one `Call`
holds everything about one command. `run_call` takes a call through its steps:
`begin` (baselines), `spawn`, `pump` (stdout/stderr into capped sinks, deadline,
exit, disk samples), `end_processes`, `reap`, and `attribute_limit` (which limit
ended it).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import os
import queue
import selectors
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

VERSION = 1
FEATURES = ("egress",)
"""What this executor supports beyond `VERSION` (in `hello`): the worker checks before
it relies on one, so an older image fails with "rebuild it", not with silence."""
WORKSPACE = "/workspace"
STATE_DIR = os.path.join(WORKSPACE, ".agentrun")
CALLS_DIR = os.path.join(STATE_DIR, "calls")
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/home/agent",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "USER": "agent",
    "LOGNAME": "agent",
}
CHUNK = 65536
MAX_LINE = 1 << 20
PIDS_EVENTS = "/sys/fs/cgroup/pids/pids.events"
OOM_CONTROL = "/sys/fs/cgroup/memory/memory.oom_control"
SUBREAPER = "/sbin/docker-init"
"""Docker's init (tini), bind-mounted into every container created with `init: true`."""
FULL_MARGIN = 64 << 10
"""The workspace counts as full below this much free space (ext4 keeps a few blocks)."""
NO_SPACE = (os.strerror(errno.ENOSPC).encode(), os.strerror(errno.EDQUOT).encode())
"""What a command prints when a write failed for lack of space (C.UTF-8 locale)."""
PATH_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.EACCES,
        errno.EPERM,
        errno.EEXIST,
        errno.ENOTEMPTY,
    }
)
"""OS errors of a file operation that are about the path the model gave."""
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
RESERVE = os.path.join(STATE_DIR, "reserve")
RESERVE_BYTES = 256 << 10
"""Workspace space held back for call records (`keep_reserve`)."""
RECORD_SLOT = 16 << 10
"""What one call record needs at most (a directory, a result file): freed per retry."""
FILE_OPS = frozenset({"read", "write", "commit", "list", "walk"})

# The names of the limits a result reports. They are the values of
# `agentrun.contracts.LimitKind`, spelled out because this file imports nothing of
# agentrun; the worker parses them back into that enum.
TIMEOUT = "timeout"
MEMORY = "memory"
PIDS = "pids"
OUTPUT = "output"
DISK = "disk"
INTERRUPTED = "interrupted"
LIMIT_NAMES = (TIMEOUT, MEMORY, PIDS, OUTPUT, DISK, INTERRUPTED)


class RequestError(Exception):
    """A request the executor refuses; `kind` tells the worker which error to raise.

    Kinds: `path` (a path the request named is wrong), `value` (a bad argument),
    `disk` (the workspace is full), `call` (no record of that call), `pids` (no
    thread left to serve it), `os` (anything else failed inside the executor).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def error_kind(op: str, exc: OSError) -> str:
    """The kind of an OS error raised while serving `op`.

    Only a file operation's errors about its path are `path` errors (the model named
    a wrong file); everything else the executor itself ran into is `os`.
    """
    if exc.errno in DISK_ERRNOS:
        return "disk"
    if op in FILE_OPS and exc.errno in PATH_ERRNOS:
        return "path"
    return "os"


# --------------------------------------------------------------------------- output


_out_lock = threading.Lock()
"""Whole lines only: handler threads answer concurrently on the one stdout."""


def send(client: str, rid: str, kind: str, payload: dict[str, Any]) -> None:
    body = base64.b64encode(json.dumps(payload).encode()).decode()
    line = f"R {client} {rid} {kind} {body}\n"
    with _out_lock:
        sys.stdout.buffer.write(line.encode())
        sys.stdout.buffer.flush()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def send_egress(client: str, eid: str, payload: dict[str, Any]) -> None:
    body = base64.b64encode(json.dumps(payload).encode()).decode()
    line = f"E {client} {eid} {body}\n"
    with _out_lock:
        sys.stdout.buffer.write(line.encode())
        sys.stdout.buffer.flush()


# --------------------------------------------------------------------------- state


class State:
    """What the executor knows across calls (one instance: `STATE`).

    `lock` guards `calls` and `owner`. `workspace_bytes` is the size the worker asked
    for (informational: the workspace's own filesystem enforces it).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, Call] = {}
        self.owner: str | None = None
        self.workspace_bytes = 0


class _Sink:
    """One output stream of a call: a capped file on disk plus the head kept in memory.

    The file is created on the first byte, so a stream that stayed empty has none
    (`op_output` reads that as empty). `no_space` remembers whether the stream
    carried ENOSPC's message (the disk limit's evidence from inside the command).
    """

    def __init__(self, path: str, head: int, cap: int) -> None:
        self.path, self.head_size, self.cap = path, head, cap
        self.head = bytearray()
        self.total = 0
        self.file: Any = None
        self.no_space = False
        self._tail = b""

    def write(self, data: bytes) -> None:
        room = self.cap - self.total
        if room > 0 and self.file is not False:
            try:
                if self.file is None:
                    self.file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
                self.file.write(data[:room])
            except OSError:
                # The workspace is full (ENOSPC): keep counting, stop storing.
                if self.file:
                    with contextlib.suppress(OSError):
                        self.file.close()
                self.file = False
        if not self.no_space:
            seen = self._tail + data
            self.no_space = any(msg in seen for msg in NO_SPACE)
            self._tail = data[-64:]
        if len(self.head) < self.head_size:
            self.head += data[: self.head_size - len(self.head)]
        self.total += len(data)

    def close(self) -> None:
        if self.file:
            with contextlib.suppress(OSError):
                self.file.close()


class Call:
    """Everything about one command: its request, the baselines its limits are judged
    against, its output and how it ended.

    Registered in `STATE.calls` while it runs; `end_processes` of another call reads
    `proc` from another thread.
    """

    def __init__(self, call_dir: str, req: dict[str, Any]) -> None:
        self.dir = call_dir
        self.req = req
        self.ack: Any = req["_ack"]
        self.client: str = str(req.get("_client", ""))
        """The worker that answers this call's egress requests (the latest to ask for it)."""
        self.proxy: Any = None
        self.done = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.kill_reason: str | None = None
        """Set when the executor ends the call itself (timeout, output)."""
        # Set by begin() from the request and the container's counters.
        self.timeout = 0.0
        self.store_cap = 0
        self.env: dict[str, str] = {}
        self.pids0 = 0
        self.oom0 = 0
        self.free0 = 0
        """Free bytes of the workspace when the call started."""
        self.min_free = 0
        """The least free space seen while the call ran."""
        self.saw_full = False
        """Whether the workspace was full at some point while the call ran."""
        self.started = 0.0
        self.sinks: dict[str, _Sink] = {}
        # Set by pump() and reap().
        self.status: int | None = None
        self.duration_ms = 0

    def sample_disk(self) -> None:
        free, full = workspace_free()
        self.min_free = min(self.min_free, free)
        self.saw_full = self.saw_full or full

    def result(self, exit_code: int | None, limit: str | None) -> dict[str, Any]:
        """The recorded result; `_heads` (the returned output) is popped before recording."""
        out, err = self.sinks["out"], self.sinks["err"]
        return {
            "exit_code": exit_code,
            "stdout_total": out.total,
            "stderr_total": err.total,
            "duration_ms": self.duration_ms,
            "limit": limit,
            "_heads": {"out": bytes(out.head), "err": bytes(err.head)},
        }


STATE = State()


def counter(path: str, key: str) -> int:
    """A named counter from a cgroup v1 events file (0 when the file is absent)."""
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def workspace_free() -> tuple[int, bool]:
    """Free bytes of the workspace's filesystem, and whether it is full.

    One statfs: cheap enough to sample many times a call. Full means less than
    `FULL_MARGIN` left or no inode left (a filesystem that reports no inode count,
    like btrfs, is never full by inodes).
    """
    try:
        st = os.statvfs(WORKSPACE)
    except OSError:
        return 0, False
    free = st.f_bavail * st.f_frsize
    return free, free < FULL_MARGIN or (st.f_files > 0 and st.f_favail == 0)


# --------------------------------------------------------------------------- paths


def resolve(rel: str, *, must_exist: bool = True) -> str:
    """Map a workspace-relative path to an absolute one, refusing every escape."""
    if not isinstance(rel, str) or rel.startswith("/") or "\x00" in rel:
        raise RequestError("path", f"path must be relative to the workspace: {rel!r}")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RequestError("path", f"path must not contain '..': {rel!r}")
    if parts and parts[0] == ".agentrun":
        raise RequestError("path", "the .agentrun directory is reserved for call records")
    full = os.path.join(WORKSPACE, *parts) if parts else WORKSPACE
    real = os.path.realpath(full)
    root = os.path.realpath(WORKSPACE)
    if real != root and not real.startswith(root + "/"):
        raise RequestError("path", f"path resolves outside the workspace: {rel!r}")
    if must_exist and not os.path.lexists(real):
        raise RequestError("path", f"no such file or directory: {rel!r}")
    return real


# --------------------------------------------------------------------------- a call's steps


def process_table() -> dict[int, tuple[int, bool]]:
    """Parent pid and liveness (not a zombie) of every process of the container."""
    table: dict[int, tuple[int, bool]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        table[int(name)] = (int(fields[1]), fields[0] not in (b"Z", b"X"))
    return table


def subtree(table: dict[int, tuple[int, bool]], roots: list[int]) -> set[int]:
    """The given processes and all their descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [pid for pid in roots if pid in table]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found


def end_processes(call: Call) -> None:
    """SIGKILL every process the call left, wherever it went.

    Spared: docker-init (pid 1), this executor, the trees under this executor's other
    children (the calls still running: each runs under its own subreaper, so a
    daemon it started is still in its tree), and processes entered from outside
    (`docker exec`: parent pid 0). Everything else is this call's, or a leftover of
    a call that already ended, which is reparented to pid 1 once its subreaper
    exited: `nohup`, `setsid`, double forks, a fork bomb. Repeated until nothing is
    left, since a fork bomb forks while it is being killed.
    """
    me = os.getpid()
    own = call.proc.pid if call.proc is not None else -1
    for _ in range(200):
        table = process_table()
        spared = [
            pid
            for pid, (ppid, _) in table.items()
            if (ppid == me and pid != own) or (ppid == 0 and pid != 1)
        ]
        keep = subtree(table, spared) | {1, me}
        victims = [pid for pid, (_, alive) in table.items() if alive and pid not in keep]
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


_spawn_lock = threading.Lock()
"""One spawn at a time: the executor's OOM score is raised around each (see `spawn`)."""
OOM_SCORE_ADJ = "/proc/self/oom_score_adj"
_oom_score_adj0 = "0"
"""The executor's own OOM score adjustment (read at start; restored after a spawn)."""


def _set_oom_score_adj(value: str) -> None:
    with contextlib.suppress(OSError), open(OOM_SCORE_ADJ, "w") as f:
        f.write(value)


def begin(call: Call) -> None:
    """Read the request and take the baselines the call's limits are judged against."""
    req = call.req
    call.timeout = float(req.get("timeout", 60))
    call.store_cap = int(req.get("store_cap", 16 << 20))
    head = int(req.get("max_output", 16384))
    call.env = dict(BASE_ENV)
    call.env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
    if req.get("egress"):
        call.proxy = start_proxy(call)
        url = f"http://127.0.0.1:{call.proxy.server_address[1]}"
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
            call.env[name] = url
    call.pids0 = counter(PIDS_EVENTS, "max")
    call.oom0 = counter(OOM_CONTROL, "oom_kill")
    call.free0, call.saw_full = workspace_free()
    call.min_free = call.free0
    call.started = time.monotonic()
    call.sinks = {
        "out": _Sink(os.path.join(call.dir, "out"), head, call.store_cap),
        "err": _Sink(os.path.join(call.dir, "err"), head, call.store_cap),
    }


def spawn(call: Call) -> subprocess.Popen[bytes]:
    """Start the command in its own session; raises OSError when it cannot start.

    Under `docker-init -s`: a subreaper of the call's own, so processes that leave
    their parent (double fork, `setsid`) stay in the call's tree while it runs. Its
    exit status is the command's (128+n for a signal, like a shell's).
    """
    argv = ["/bin/sh", "-c", call.req["cmd"]]
    if os.access(SUBREAPER, os.X_OK):
        argv = [SUBREAPER, "-s", "--", *argv]
    with _spawn_lock:
        # The command must be the OOM killer's first choice, so a memory bomb does
        # not take the executor down; set on the command after the fork, its first
        # children could fork before the write. So the executor raises its own score
        # for the instant of the fork (no privilege needed, and none to lower it back
        # to where it was) and the command inherits it. No preexec_fn: CPython can
        # vfork, about twice as cheap.
        _set_oom_score_adj("1000")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=WORKSPACE,
                env=call.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                restore_signals=True,
            )
        finally:
            _set_oom_score_adj(_oom_score_adj0)
    call.proc = proc
    return proc


def spawn_failed(call: Call, exc: OSError) -> dict[str, Any]:
    """The result of a command that never started."""
    err = call.sinks["err"]
    err.write(f"agentrun: cannot start the command: {exc}\n".encode())
    err.close()
    # fork() failing with EAGAIN is the pids limit biting before the command ran.
    return {
        "exit_code": None,
        "stdout_total": 0,
        "stderr_total": err.total,
        "duration_ms": 0,
        "limit": PIDS if exc.errno == errno.EAGAIN else None,
        "_heads": {"out": b"", "err": bytes(err.head)},
    }


def pump(call: Call, proc: subprocess.Popen[bytes]) -> None:
    """Move the command's output into its sinks until it exits or must be ended.

    Ends the call (`kill_reason`) at its deadline or when an output stream passes
    `store_cap`. Samples the workspace's free space on every turn. Sets
    `call.status` when the command's main process exited while we watched.
    """
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    # A pidfd makes the exit an event like the pipes: no polling, no added latency.
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ, "exit")
    start = call.started
    deadline = start + call.timeout
    exited_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            call.sample_disk()
            if call.kill_reason is None and now >= deadline:
                call.kill_reason = TIMEOUT
            if call.kill_reason is not None:
                break
            pipes_open = len(sel.get_map()) > (1 if exited_at is None else 0)
            if exited_at is not None and (not pipes_open or now - exited_at > 0.2):
                # Done; a background child still holding the pipes does not keep the
                # call open beyond a short grace (end_processes ends it).
                break
            if now - start > 0.05:
                call.ack()
            wait = max(min(deadline - now, 0.1 if now - start > 0.05 else 0.05), 0.0)
            for key, _ in sel.select(wait):
                if key.data == "exit":
                    sel.unregister(pidfd)
                    call.status = proc.wait()
                    exited_at = time.monotonic()
                    continue
                data = os.read(key.fd, CHUNK)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                sink = call.sinks[key.data]
                sink.write(data)
                if sink.total > call.store_cap and call.kill_reason is None:
                    call.kill_reason = OUTPUT
    finally:
        sel.close()
        os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()


def reap(call: Call, proc: subprocess.Popen[bytes]) -> int:
    """Wait for the command's main process and store its output; returns its status."""
    if call.status is None:
        call.status = proc.wait()
    for sink in call.sinks.values():
        sink.close()
    call.duration_ms = int((time.monotonic() - call.started) * 1000)
    return call.status


def attribute_limit(call: Call, status: int) -> tuple[int | None, str | None]:
    """The exit code to report and the name of the limit that ended the call, if any."""
    exit_code: int | None = 128 - status if status < 0 else status
    limit = call.kill_reason
    if limit is not None:
        # We ended it: there is no exit code of the command's own to report.
        exit_code = None
    if limit in (None, TIMEOUT):
        # Name the limit that bit first, even when the command went on (a shell whose
        # child hit a limit) or ran into the timeout (a fork bomb): "pids" or "memory"
        # tells the model more than "timeout".
        call.sample_disk()
        used_space = call.min_free < call.free0 - FULL_MARGIN
        said_so = call.sinks["err"].no_space or call.sinks["out"].no_space
        if counter(OOM_CONTROL, "oom_kill") > call.oom0:
            limit = MEMORY
        elif counter(PIDS_EVENTS, "max") > call.pids0:
            limit = PIDS
        elif call.saw_full and (used_space or said_so):
            # The workspace was full while the call ran, and the call filled it or a
            # write of it failed for lack of space. A full workspace alone blames no
            # one: the next call that writes nothing is not its cause.
            limit = DISK
    return exit_code, limit


def run_call(call: Call) -> dict[str, Any]:
    """Run the command to completion, recording output and the result in its call dir."""
    begin(call)
    try:
        proc = spawn(call)
    except OSError as exc:
        stop_proxy(call)
        return spawn_failed(call, exc)
    try:
        pump(call, proc)
    finally:
        # Nothing of a call outlives it, whether it exited, timed out or hit a limit.
        end_processes(call)
        stop_proxy(call)
    status = reap(call, proc)
    exit_code, limit = attribute_limit(call, status)
    return call.result(exit_code, limit)


# --------------------------------------------------------------------------- call records


def read_head(path: str, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(max(n, 0))
    except OSError:
        return b""


def call_result(call_dir: str, max_output: int, reattached: bool) -> dict[str, Any]:
    with open(os.path.join(call_dir, "result.json")) as f:
        result: dict[str, Any] = json.load(f)
    result["stdout"] = b64(read_head(os.path.join(call_dir, "out"), max_output))
    result["stderr"] = b64(read_head(os.path.join(call_dir, "err"), max_output))
    result["reattached"] = reattached
    return result


def keep_reserve() -> None:
    """Hold `RESERVE_BYTES` of the workspace back for call records (best effort).

    A command may fill the workspace to its last block; its call must still be
    recorded, and the next call (the model's `rm`) must still run, which needs a
    directory and a result file. Topped up after every call, when there is room.
    """
    try:
        os.makedirs(STATE_DIR, exist_ok=True)
        fd = os.open(RESERVE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_blocks * 512 < RESERVE_BYTES:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
        finally:
            os.close(fd)
    except OSError:
        pass  # the workspace is full: the next call's end tries again


def recorded(step: Callable[[], Any]) -> Any:
    """Run a step that writes call records; when the workspace is full, free one slot
    of the reserve and try again (nothing else writes meanwhile: no command runs
    while a call is set up or recorded, its processes ended with it)."""
    while True:
        try:
            return step()
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            try:
                size = os.stat(RESERVE).st_size
            except OSError:
                raise exc from None
            if size == 0:
                raise
            os.truncate(RESERVE, max(0, size - RECORD_SLOT))


def make_call_dir(call_dir: str) -> None:
    os.makedirs(CALLS_DIR, exist_ok=True)
    os.mkdir(call_dir)


def write_result(call_dir: str, result: dict[str, Any]) -> None:
    def write() -> None:
        tmp = os.path.join(call_dir, "result.json.tmp")
        with open(tmp, "w") as f:
            # No fsync: the record must survive container restarts (page cache does),
            # and an fsync per call would cost more than the call. A host crash can
            # lose it.
            json.dump(result, f)
        os.replace(tmp, os.path.join(call_dir, "result.json"))

    recorded(write)


def call_dir_for(req: dict[str, Any]) -> str:
    call_id, token = str(req["call"]), str(req["token"])
    for part in (call_id, token):
        if not part or "/" in part or part.startswith(".") or len(part) > 128:
            raise RequestError("path", f"bad call id or token: {part!r}")
    return os.path.join(CALLS_DIR, f"{call_id}.{token}")


def op_exec(req: dict[str, Any]) -> dict[str, Any]:
    call_dir = call_dir_for(req)
    max_output = int(req.get("max_output", 16384))
    with STATE.lock:
        call = STATE.calls.get(call_dir)
        if call is None:
            if os.path.exists(os.path.join(call_dir, "result.json")):
                return call_result(call_dir, max_output, True)
            if os.path.isdir(call_dir):
                # Started by an earlier life of this container and never finished:
                # the container restarted under it. Record that, never run it again.
                write_result(
                    call_dir,
                    {
                        "exit_code": None,
                        "stdout_total": os.path.getsize(os.path.join(call_dir, "out"))
                        if os.path.exists(os.path.join(call_dir, "out"))
                        else 0,
                        "stderr_total": 0,
                        "duration_ms": 0,
                        "limit": INTERRUPTED,
                    },
                )
                return call_result(call_dir, max_output, True)
            recorded(lambda: make_call_dir(call_dir))
            call = Call(call_dir, req)
            STATE.calls[call_dir] = call
            owner = True
        else:
            owner = False
    if not owner:
        # A retried call (its first worker may be gone): its egress goes to us now.
        call.client = str(req.get("_client", call.client))
        while not call.done.wait(0.05):
            req["_ack"]()
        return call_result(call_dir, max_output, True)
    heads: dict[str, bytes] = {"out": b"", "err": b""}
    try:
        result = run_call(call)
        heads = result.pop("_heads")
    except Exception as exc:
        result = {
            "exit_code": None,
            "stdout_total": 0,
            "stderr_total": 0,
            "duration_ms": 0,
            "limit": None,
            "error": f"executor error: {exc!r}",
        }
    try:
        write_result(call_dir, result)
    finally:
        call.done.set()
        with STATE.lock:
            STATE.calls.pop(call_dir, None)
        keep_reserve()
    return {
        **result,
        "stdout": b64(heads["out"][:max_output]),
        "stderr": b64(heads["err"][:max_output]),
        "reattached": False,
    }


def op_output(req: dict[str, Any]) -> dict[str, Any]:
    """A chunk of a call's recorded stdout or stderr."""
    call_dir = call_dir_for(req)
    name = {"stdout": "out", "stderr": "err"}.get(str(req.get("stream")))
    if name is None:
        raise RequestError("value", "stream must be stdout or stderr")
    if not os.path.isdir(call_dir):
        raise RequestError("call", f"no record of call {req['call']!r} in this workspace")
    try:
        f = open(os.path.join(call_dir, name), "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        # A stream gets its file on its first byte: none means it stayed empty.
        return {"data": ""}
    with f:
        f.seek(int(req.get("offset", 0)))
        return {"data": b64(f.read(int(req.get("length", CHUNK))))}


# --------------------------------------------------------------------------- files


def op_read(req: dict[str, Any]) -> dict[str, Any]:
    path = resolve(req["path"])
    if not os.path.isfile(path):
        raise RequestError("path", f"not a regular file: {req['path']!r}")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(int(req.get("offset", 0)))
        return {"data": b64(f.read(int(req.get("length", CHUNK)))), "size": size}


def op_write(req: dict[str, Any]) -> dict[str, Any]:
    """Write a chunk at an offset into a temp file (idempotent, so safe to resend)."""
    tmp = os.path.join(STATE_DIR, "tmp", os.path.basename(str(req["tmp"])))
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    size = int(req.get("size", 0))
    if int(req["offset"]) == 0 and size > workspace_free()[0]:
        # Refused before the first byte rather than at the last chunk; the
        # filesystem would refuse it anyway (ENOSPC, a `disk` error too).
        raise RequestError(
            "disk", f"a file of {size} bytes does not fit in what is left of the workspace"
        )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, base64.b64decode(req["data"]), int(req["offset"]))
    finally:
        os.close(fd)
    return {}


def op_commit(req: dict[str, Any]) -> dict[str, Any]:
    """Move a completely written temp file into place (atomic rename)."""
    tmp = os.path.join(STATE_DIR, "tmp", os.path.basename(str(req["tmp"])))
    path = resolve(req["path"], must_exist=False)
    if os.path.isdir(path):
        raise RequestError("path", f"is a directory: {req['path']!r}")
    if not os.path.exists(tmp):
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        open(tmp, "wb").close()
    if os.path.getsize(tmp) != int(req["size"]):
        os.unlink(tmp)
        raise RequestError("retry", "incomplete upload")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    # The parent may have been swapped for a symlink since resolve(): check again.
    resolve(os.path.relpath(parent, os.path.realpath(WORKSPACE)))
    os.replace(tmp, path)
    return {}


def op_list(req: dict[str, Any]) -> dict[str, Any]:
    path = resolve(req.get("path") or "")
    if not os.path.isdir(path):
        raise RequestError("path", f"not a directory: {req.get('path')!r}")
    root = os.path.realpath(WORKSPACE)
    entries: list[dict[str, Any]] = []
    limit = int(req.get("max", 1000))
    with os.scandir(path) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.path == STATE_DIR:
                continue
            if len(entries) >= limit:
                break
            st = entry.stat(follow_symlinks=False)
            entries.append(
                {
                    "path": os.path.relpath(entry.path, root),
                    "size": st.st_size,
                    "is_dir": stat.S_ISDIR(st.st_mode),
                }
            )
    return {"entries": entries}


def op_walk(req: dict[str, Any]) -> dict[str, Any]:
    """Regular files under the given paths (all of the workspace when none), no hidden dirs."""
    root = os.path.realpath(WORKSPACE)
    limit = int(req.get("max", 100))
    files: list[dict[str, Any]] = []
    starts = [resolve(p) for p in req.get("paths") or []] or [root]
    for start in starts:
        if os.path.isfile(start) and not os.path.islink(start):
            files.append({"path": os.path.relpath(start, root), "size": os.path.getsize(start)})
            continue
        for top, dirs, names in os.walk(start):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                full = os.path.join(top, name)
                st = os.lstat(full)
                if stat.S_ISREG(st.st_mode):
                    files.append({"path": os.path.relpath(full, root), "size": st.st_size})
                if len(files) >= limit:
                    return {"files": files}
    return {"files": files[:limit]}


# --------------------------------------------------------------------------- egress

EGRESS_WAIT_S = 120.0
"""How long a proxied request waits for the worker's answer (then 504)."""
EGRESS_MAX_BODY = 8 << 20
"""The largest request body a command may send through the proxy (then 413)."""
EGRESS_IN_FLIGHT = 8
"""Proxied requests of one call in flight at once (more wait): each is a thread in the
worker, so a command opening a thousand connections must not become a thousand."""
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)


class _Reply:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: dict[str, Any] | None = None


_egress_lock = threading.Lock()
_egress_waiting: dict[str, _Reply] = {}
_egress_ids = iter(range(1, 1 << 62))


def egress_roundtrip(call: Call, payload: dict[str, Any]) -> dict[str, Any] | None:
    """Send one proxied request to the call's worker; its reply, or None on timeout."""
    slot = _Reply()
    with _egress_lock:
        eid = f"{os.getpid()}-{next(_egress_ids)}"
        _egress_waiting[eid] = slot
    try:
        send_egress(call.client, eid, {"call": call.req["call"], **payload})
        slot.event.wait(EGRESS_WAIT_S)
        return slot.reply
    finally:
        with _egress_lock:
            _egress_waiting.pop(eid, None)


def op_egress_reply(req: dict[str, Any]) -> dict[str, Any]:
    """The worker's answer to a proxied request (idempotent: a resend is ignored)."""
    with _egress_lock:
        slot = _egress_waiting.get(str(req.get("id")))
    if slot is not None and not slot.event.is_set():
        slot.reply = req
        slot.event.set()
    return {}


def start_proxy(call: Call) -> Any:
    """The call's HTTP proxy on the container's loopback (an ephemeral port), serving."""
    # Imported here: only calls with egress pay for the http.server import.
    import http.server

    in_flight = threading.BoundedSemaphore(EGRESS_IN_FLIGHT)

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "agentrun-egress"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # stderr is the worker's debug channel, not an access log

        def _plain(self, status: int, text: str) -> None:
            body = (text + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def do_CONNECT(self) -> None:
            self._plain(
                405,
                "agentrun egress: CONNECT (https through the proxy) is not supported; "
                "request http://host/... and the broker speaks https to allowed hosts",
            )

        def _body(self) -> bytes | None:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                out = bytearray()
                while True:
                    size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    if len(out) + size > EGRESS_MAX_BODY:
                        return None
                    out += self.rfile.read(size)
                    self.rfile.readline(1024)
            length = int(self.headers.get("Content-Length") or 0)
            if length > EGRESS_MAX_BODY:
                return None
            return self.rfile.read(length) if length > 0 else b""

        def _forward(self) -> None:
            if not self.path.lower().startswith("http://"):
                self._plain(
                    400,
                    "agentrun egress: send absolute http:// URLs through the proxy "
                    "(HTTP_PROXY is set for this command)",
                )
                return
            try:
                body = self._body()
            except ValueError:
                self._plain(400, "agentrun egress: malformed chunked body")
                return
            if body is None:
                self._plain(413, f"agentrun egress: request body over {EGRESS_MAX_BODY} bytes")
                return
            headers = [[k, v] for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
            with in_flight:
                reply = egress_roundtrip(
                    call,
                    {
                        "method": self.command,
                        "url": self.path,
                        "headers": headers,
                        "body": b64(body),
                    },
                )
            if reply is None:
                self._plain(504, "agentrun egress: the broker did not answer in time")
                return
            data = base64.b64decode(reply.get("body") or "")
            self.send_response(int(reply.get("status", 502)))
            for k, v in reply.get("headers") or []:
                if str(k).lower() not in HOP_BY_HOP:
                    self.send_header(str(k), str(v))
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    return server


def stop_proxy(call: Call) -> None:
    if call.proxy is not None:
        call.proxy.shutdown()
        call.proxy.server_close()
        call.proxy = None


# --------------------------------------------------------------------------- control


def op_hello(req: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": VERSION,
        "features": list(FEATURES),
        "pid": os.getpid(),
        "owner": STATE.owner,
    }


def op_claim(req: dict[str, Any]) -> dict[str, Any]:
    """First claim wins: the arbiter when two workers race for one pool container."""
    with STATE.lock:
        owner = STATE.owner
        if owner is None:
            STATE.owner = owner = str(req["owner"])
            if req.get("workspace_bytes"):
                STATE.workspace_bytes = int(req["workspace_bytes"])
        return {"ok": owner == req["owner"], "owner": owner}


def op_config(req: dict[str, Any]) -> dict[str, Any]:
    with STATE.lock:
        if req.get("workspace_bytes"):
            STATE.workspace_bytes = int(req["workspace_bytes"])
        if req.get("owner") and STATE.owner is None:
            STATE.owner = str(req["owner"])
    return {"owner": STATE.owner}


OPS = {
    "hello": op_hello,
    "claim": op_claim,
    "config": op_config,
    "exec": op_exec,
    "output": op_output,
    "read": op_read,
    "write": op_write,
    "commit": op_commit,
    "list": op_list,
    "walk": op_walk,
    "egress_reply": op_egress_reply,
}


def handle(client: str, rid: str, raw: bytes) -> None:
    acked: list[bool] = []

    def ack() -> None:
        # Quick requests are answered without a separate acknowledgement (one write
        # less per call); slow ones acknowledge so the worker does not re-send them.
        if not acked:
            acked.append(True)
            send(client, rid, "A", {})

    name = "?"
    try:
        req = json.loads(raw)
        req["_ack"] = ack
        req["_client"] = client
        name = str(req.get("op"))
        op = OPS.get(name)
        if op is None:
            raise RequestError("value", f"unknown op {name!r}")
        result = op(req)
        send(client, rid, "D", {"ok": True, "result": result})
    except RequestError as exc:
        send(client, rid, "D", {"ok": False, "kind": exc.kind, "error": str(exc)})
    except OSError as exc:
        message = f"{name}: {exc.strerror or exc}" + (f": {exc.filename!r}" if exc.filename else "")
        send(client, rid, "D", {"ok": False, "kind": error_kind(name, exc), "error": message})
    except Exception as exc:
        send(client, rid, "D", {"ok": False, "kind": "os", "error": f"{name}: {exc!r}"})


class Handlers:
    """The threads that run requests (one instance: `HANDLERS`).

    Threads are reused (starting one per request costs more than a quick call), and
    never capped: a long `exec` holds its thread for its whole duration.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[str, str, bytes]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def _work(self) -> None:
        while True:
            handle(*self._jobs.get())
            with self._lock:
                self._idle += 1

    def dispatch(self, client: str, rid: str, raw: bytes) -> None:
        """Hand a request to an idle handler thread, starting one when none is idle."""
        with self._lock:
            # Reserve a thread for this job: an idle one, or a new one.
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        if spawn:
            threading.Thread(target=self._work, daemon=True).start()
        self._jobs.put((client, rid, raw))


HANDLERS = Handlers()


# --------------------------------------------------------------------------- stdin


def parse_frame(line: bytes) -> tuple[str, str, int, int, bytes] | None:
    """(client, rid, seq, count, chunk) of a well-formed frame; None for anything else."""
    fields = line.split()
    if len(fields) != 7 or fields[0] != b"F":
        return None
    try:
        client, rid = fields[1].decode(), fields[2].decode()
        seq, count = int(fields[3]), int(fields[4])
        if binascii.crc32(fields[6]) != int(fields[5], 16):
            return None
        chunk = base64.b64decode(fields[6], validate=True)
    except (ValueError, binascii.Error):
        return None
    return client, rid, seq, count, chunk


def main() -> None:
    global _oom_score_adj0
    with contextlib.suppress(OSError), open(OOM_SCORE_ADJ) as f:
        _oom_score_adj0 = f.read().strip() or "0"
    for arg in sys.argv[1:]:
        if arg.startswith("--workspace-bytes="):
            STATE.workspace_bytes = int(arg.split("=", 1)[1])
        if arg.startswith("--owner="):
            STATE.owner = arg.split("=", 1)[1]
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    keep_reserve()
    partial: dict[tuple[str, str], dict[int, bytes]] = {}
    started: dict[tuple[str, str], float] = {}
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline(MAX_LINE)
        if not line:
            # Nobody can ever attach to a closed stdin again: exit, and let the
            # worker restart the container (the workspace survives).
            return
        frame = parse_frame(line)
        if frame is None:
            continue
        client, rid, seq, count, chunk = frame
        key = (client, rid)
        parts = partial.setdefault(key, {})
        started.setdefault(key, time.monotonic())
        parts[seq] = chunk
        if len(parts) == count:
            raw = b"".join(parts[i] for i in range(count) if i in parts)
            partial.pop(key, None)
            started.pop(key, None)
            if len(raw) and all(i in parts for i in range(count)):
                try:
                    HANDLERS.dispatch(client, rid, raw)
                except RuntimeError:
                    # No task left in the pids cgroup (a fork bomb is running): refuse
                    # this request rather than die; the worker retries it.
                    send(client, rid, "D", {"ok": False, "kind": "pids", "error": "pids limit"})
        if len(started) > 64:
            # Frames of requests that will never complete (a worker died mid-send).
            cutoff = time.monotonic() - 60
            for stale in [k for k, t in started.items() if t < cutoff]:
                partial.pop(stale, None)
                started.pop(stale, None)


if __name__ == "__main__":
    main()
