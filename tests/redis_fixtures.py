"""A real Redis server for the session: the delta store's Redis Streams backend.

* ``redis_server``: `redis-server` from Debian's `redis-server` package
  (`scripts/setup.sh` installs it), started once per session on a free 127.0.0.1
  port, in memory only (no RDB snapshots, no AOF), its working directory a temp dir;
  stopped and removed at the end of the session. Its :attr:`RedisServer.url`
  is what `AGENTRUN_REDIS_URL` would say.
* ``redis_url``: the server's URL, database 0 (stream keys are per tenant and run,
  and tests use unique run ids, so tests share it without seeing each other's).

tests/conftest.py registers this module as a plugin. Nothing is skipped for want
of a server: a missing binary fails the test that needs it. PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.model_fixtures import free_port

REDIS_SERVER = "redis-server"


@dataclass
class RedisServer:
    host: str
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


def _answers(host: str, port: int) -> bool:
    """Whether a Redis server answers PING on host:port (RESP, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        with redis_process() as server:
            yield server
    except RedisUnavailable as exc:
        pytest.fail(str(exc))


class RedisUnavailable(RuntimeError):
    """redis-server is missing or did not start (the message says which and shows its log)."""


@contextmanager
def redis_process() -> Iterator[RedisServer]:
    """A throw-away redis-server on 127.0.0.1 (also used by bench/), removed on exit."""
    binary = shutil.which(REDIS_SERVER)
    if binary is None:
        raise RedisUnavailable(
            "redis-server is missing: apt-get install redis-server (scripts/setup.sh does)"
        )
    base = Path(tempfile.mkdtemp(prefix="agentrun-redis-"))
    log = base / "redis.log"
    port = free_port()
    # fmt: off
    args = [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(base),
        "--save", "", "--appendonly", "no", "--protected-mode", "yes",
        "--daemonize", "no", "--logfile", str(log),
    ]
    # fmt: on
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not _answers("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                logged = log.read_text() if log.exists() else ""
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RedisUnavailable(
                    f"redis-server did not start on 127.0.0.1:{port}: {err}{logged}"
                )
            time.sleep(0.05)
        yield RedisServer(host="127.0.0.1", port=port, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
