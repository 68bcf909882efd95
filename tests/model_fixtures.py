"""Fixtures shared by the model-provider tests.

* ``fake_provider``: a tiny threaded HTTP server on 127.0.0.1 that answers with
  canned statuses and bodies and records what it was sent. It stands in for the
  OpenAI and Anthropic APIs, which tests must not (and here cannot) reach.
* ``embedded_llm``: the real embedded model (SmolLM2-135M under llama.cpp's
  server), started once per session on a free port with one thread, so tests of
  other engineers running at the same time keep their CPU.
* ``native_llm``: the same model and server with native tool calling
  (``--chat_format chatml-function-calling``), for
  ``AGENTRUN_OPENAI_JSON_SCHEMA_TOOLS=false``.

tests/conftest.py registers this module as a plugin, so test modules request the
fixtures by name without importing them. Tests also import helpers from here, so
the module may be imported before pytest registers it; the marker below opts it
out of assertion rewriting, which it does not need (it has no asserts), instead
of emitting a warning: PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cli.embedded_llm import (
    NATIVE_TOOLS_CHAT_FORMAT,
    EmbeddedModelError,
    EmbeddedModelServer,
    model_path,
)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections for the whole test.

    Held bound without `listen()`: a connection gets RST at once, and no server
    the test starts (nor an outgoing connection's source port) can take it, as
    could happen with a port that was only free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@dataclass
class Canned:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering (a hanging provider)."""
    chunks: list[bytes] | None = None
    """When set, the body is sent in these pieces, flushed one by one without a
    content-length (the connection's close ends it), ``chunk_delay`` apart: a
    server streaming its reply."""
    chunk_delay: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeProvider:
    """Routes ``/<scenario>/...`` to the response registered for ``scenario``.

    Register with :meth:`scenario`, which returns a unique prefix, then point a
    provider's base URL at :meth:`url` for it. Requests are recorded per scenario.
    """

    def __init__(self) -> None:
        self._canned: dict[str, Canned] = {}
        self._seen: dict[str, list[Recorded]] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                name = self.path.strip("/").split("/", 1)[0]
                with fake._lock:
                    canned = fake._canned.get(name, Canned(404, b'{"error": "no such scenario"}'))
                    fake._seen.setdefault(name, []).append(
                        Recorded(self.command, self.path, dict(self.headers.items()), body)
                    )
                if canned.delay and fake.stopping.wait(canned.delay):
                    return
                try:
                    self.send_response(canned.status)
                    for key, value in canned.headers.items():
                        self.send_header(key, value)
                    if canned.chunks is None:
                        self.send_header("content-length", str(len(canned.body)))
                    self.end_headers()
                    for n, chunk in enumerate(canned.chunks or [canned.body]):
                        if n and canned.chunk_delay and fake.stopping.wait(canned.chunk_delay):
                            return
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout tests)

            do_GET = _handle
            do_POST = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def scenario(
        self,
        status: int = 200,
        body: bytes | str | dict[str, Any] = b"{}",
        *,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        chunks: list[bytes | str] | None = None,
        chunk_delay: float = 0.0,
    ) -> str:
        """Register a canned response under a fresh name and return the name.

        ``chunks`` (instead of ``body``) streams the body piece by piece, see
        :class:`Canned`.
        """
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        pieces = (
            None if chunks is None else [c.encode() if isinstance(c, str) else c for c in chunks]
        )
        name = f"s{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._canned[name] = Canned(status, body, headers or {}, delay, pieces, chunk_delay)
        return name

    def url(self, name: str, suffix: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{name}{suffix}"

    def requests(self, name: str) -> list[Recorded]:
        with self._lock:
            return list(self._seen.get(name, []))


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[FakeProvider]:
    fake = FakeProvider().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def embedded_llm() -> Iterator[EmbeddedModelServer]:
    """The embedded model server, once per session; skipped when not installed."""
    try:
        model_path()
    except EmbeddedModelError as exc:
        pytest.skip(str(exc))
    server = EmbeddedModelServer(port=free_port(), host="127.0.0.1", threads=1)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def native_llm() -> Iterator[EmbeddedModelServer]:
    """The embedded model served with native ``tools``/``tool_calls``, once per session."""
    model_path()  # the embedded model is a test dependency: fail loudly when missing
    server = EmbeddedModelServer(
        port=free_port(), host="127.0.0.1", threads=1, chat_format=NATIVE_TOOLS_CHAT_FORMAT
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
