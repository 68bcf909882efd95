"""One worker process's connection to one container's executor, over `docker attach`.

The executor (sandbox/image/executor.py) is the container's main process and reads
requests from its stdin; this module writes them through Docker's attach socket and
reads the multiplexed stdout frames back. A warm call is then one round trip through
dockerd, with no `docker exec` (process creation, namespace entry) in the way.

Several worker processes may be attached to the same container at once. Docker
broadcasts the executor's stdout to all of them (so every response names its client
and request id) and merges their stdin bytes into one pipe (so each request is sent
as checksummed frames and re-sent when the executor does not acknowledge it; every
request the worker sends is idempotent).

The executor also *sends* one kind of request of its own: a command's HTTP request
to its call's egress proxy (``E <client> <eid> <base64 JSON>``, addressed to the
worker that runs the call). The channel hands it to the handler the call registered
(`egress_handler`) on a thread of its own and sends the answer back as an ordinary
request (`egress_reply`), so the proxied traffic rides the attach stream too.

This module must not: open any network connection (the attach stream goes through
the Docker API socket only), or outlive its container (a broken stream fails every
pending request with `ChannelClosed` and the caller reconnects).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sandbox.base import EgressHandler, EgressRequest, EgressResponse

log = logging.getLogger(__name__)

FRAME_PAYLOAD = 2048
"""Raw bytes per stdin frame: small enough that dockerd moves one frame per read."""
ACK_TIMEOUT_S = 3.0
"""Re-send a request the executor has not acknowledged after this long."""


class ChannelClosed(Exception):
    """The attach stream ended (container stopped, restarted or removed)."""


class ExecutorError(Exception):
    """The executor refused a request; `kind` is `path`, `value`, `disk`, `pids`, `os`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Pending:
    __slots__ = ("accepted", "done", "response")

    def __init__(self) -> None:
        self.accepted = threading.Event()
        self.done = threading.Event()
        self.response: dict[str, Any] | None = None


class Channel:
    """A thread-safe request/response channel to one container's executor."""

    def __init__(self, api: Any, container_id: str) -> None:
        self.container_id = container_id
        self.client_id = os.urandom(6).hex()
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed: str | None = None
        self._egress: dict[str, EgressHandler] = {}
        self.features: frozenset[str] = frozenset()
        """What the executor says it supports beyond its version (`hello`)."""
        response = api.post(
            api._url("/containers/{0}/attach", container_id),
            None,
            params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1},
            stream=True,
            headers={"Connection": "Upgrade", "Upgrade": "tcp"},
        )
        api._raise_for_status(response)
        self._response = response
        # Read through the HTTP response's buffered reader: it may already hold the
        # first bytes of the upgraded stream.
        self._reader = response.raw._fp.fp
        raw = self._reader.raw
        self._sock: socket.socket = getattr(raw, "_sock", raw)
        self._thread = threading.Thread(
            target=self._read_loop, name=f"sandbox-chan-{container_id[:12]}", daemon=True
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._closed is None

    def close(self) -> None:
        self._fail("closed by the worker")
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):  # best effort on an already broken stream
            self._response.close()

    # ------------------------------------------------------------------ requests

    def request(
        self,
        payload: dict[str, Any],
        *,
        timeout_s: float,
        heartbeat: Callable[[], None] | None = None,
        tick_s: float = 2.0,
    ) -> dict[str, Any]:
        """Send `payload` and wait for its result, re-sending it until acknowledged.

        `heartbeat` is called every `tick_s` while waiting, so a long tool call keeps
        its activity alive. Raises `ChannelClosed`, `TimeoutError` or `ExecutorError`.
        """
        pending = _Pending()
        data = json.dumps(payload).encode()
        rids: list[str] = []
        now = time.monotonic()
        deadline, last_send, last_beat = now + timeout_s, now, now
        try:
            self._send(data, pending, rids)
            while not pending.done.wait(0.05 if not pending.accepted.is_set() else 0.5):
                now = time.monotonic()
                if self._closed is not None:
                    raise ChannelClosed(self._closed)
                if heartbeat is not None and now - last_beat >= tick_s:
                    heartbeat()
                    last_beat = now
                if now >= deadline:
                    raise TimeoutError(f"executor did not answer {payload.get('op')} in time")
                if not pending.accepted.is_set() and now - last_send >= ACK_TIMEOUT_S:
                    # The frames were lost or mangled (another process wrote into the
                    # same stdin at the same moment): the request is idempotent, resend.
                    last_send = now
                    self._send(data, pending, rids)
        finally:
            with self._lock:
                for rid in rids:
                    self._pending.pop(rid, None)
        response = pending.response
        if response is None:
            raise ChannelClosed(self._closed or "no response")
        if not response.get("ok"):
            raise ExecutorError(str(response.get("kind")), str(response.get("error")))
        result: dict[str, Any] = response.get("result") or {}
        return result

    def _send(self, data: bytes, pending: _Pending, rids: list[str]) -> None:
        rid = str(next(self._ids))
        with self._lock:
            if self._closed is not None:
                raise ChannelClosed(self._closed)
            self._pending[rid] = pending
        rids.append(rid)
        chunks = [data[i : i + FRAME_PAYLOAD] for i in range(0, len(data), FRAME_PAYLOAD)] or [b""]
        frames = []
        for seq, chunk in enumerate(chunks):
            enc = base64.b64encode(chunk)
            crc = binascii.crc32(enc)
            frames.append(
                b"F %s %s %d %d %x %s\n"
                % (self.client_id.encode(), rid.encode(), seq, len(chunks), crc, enc or b"=")
            )
        try:
            with self._send_lock:
                for frame in frames:
                    self._sock.sendall(frame)
        except OSError as exc:
            self._fail(f"send failed: {exc}")
            raise ChannelClosed(str(exc)) from exc

    # ------------------------------------------------------------------ egress

    @contextlib.contextmanager
    def egress_handler(self, call_id: str, handler: EgressHandler) -> Iterator[None]:
        """Answer the proxied requests of call `call_id` with `handler` meanwhile."""
        with self._lock:
            self._egress[call_id] = handler
        try:
            yield
        finally:
            with self._lock:
                if self._egress.get(call_id) is handler:
                    del self._egress[call_id]

    def _on_egress(self, line: bytes) -> None:
        try:
            _, _, eid, body = line.split(b" ", 3)
            raw = json.loads(base64.b64decode(body))
            call_id = str(raw["call"])
            request = EgressRequest(
                method=str(raw["method"]),
                url=str(raw["url"]),
                headers=[(str(k), str(v)) for k, v in raw.get("headers") or []],
                body=base64.b64decode(raw.get("body") or ""),
            )
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            handler = self._egress.get(call_id)
        threading.Thread(
            target=self._answer_egress,
            args=(eid.decode(), request, handler),
            name=f"sandbox-egress-{eid.decode()[:12]}",
            daemon=True,
        ).start()

    def _answer_egress(
        self, eid: str, request: EgressRequest, handler: EgressHandler | None
    ) -> None:
        if handler is None:
            response = EgressResponse(
                502, [("Content-Type", "text/plain")], b"agentrun: no egress broker for this call\n"
            )
        else:
            try:
                response = handler(request)
            except Exception:  # the handler must not raise; never leave the command hanging
                log.exception("egress handler failed")
                response = EgressResponse(
                    502, [("Content-Type", "text/plain")], b"agentrun: the egress broker failed\n"
                )
        reply = {
            "op": "egress_reply",
            "id": eid,
            "status": response.status,
            "headers": [list(h) for h in response.headers],
            "body": base64.b64encode(response.body).decode(),
        }
        with contextlib.suppress(ChannelClosed, TimeoutError, ExecutorError):
            self.request(reply, timeout_s=60)

    # ------------------------------------------------------------------ reading

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = reason
            pendings = list(self._pending.values())
        for p in pendings:
            p.done.set()

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._reader.read1(n - len(buf))
            if not chunk:
                raise ChannelClosed("attach stream ended")
            buf += chunk
        return bytes(buf)

    def _read_loop(self) -> None:
        line = bytearray()
        prefix = b"R " + self.client_id.encode() + b" "
        egress_prefix = b"E " + self.client_id.encode() + b" "
        try:
            while True:
                header = self._read_exact(8)
                stream, size = header[0], struct.unpack(">I", header[4:])[0]
                body = self._read_exact(size)
                if stream == 2:
                    log.debug("executor stderr: %r", body[:500])
                    continue
                line += body
                while True:
                    nl = line.find(b"\n")
                    if nl < 0:
                        break
                    one = bytes(line[:nl])
                    del line[: nl + 1]
                    if one.startswith(prefix):
                        self._dispatch(one)
                    elif one.startswith(egress_prefix):
                        self._on_egress(one)
        except (ChannelClosed, OSError, ValueError) as exc:
            self._fail(f"attach stream ended: {exc}")

    def _dispatch(self, line: bytes) -> None:
        try:
            _, _, rid, kind, body = line.split(b" ", 4)
            response = json.loads(base64.b64decode(body))
        except ValueError:
            return
        with self._lock:
            pending = self._pending.get(rid.decode())
        if pending is None:
            return
        pending.accepted.set()
        if kind == b"D" and not pending.done.is_set():
            pending.response = response
            pending.done.set()
