"""The delta log: model token deltas, kept outside Temporal history.

A streamed model reply arrives as hundreds of small fragments. Sending them
through the workflow (signals, or the SDK's ``workflow_streams``, whose publishes
are signals and whose live polls are updates) would write history events in
proportion to output length and to the number of followers, and history must stay
small. Deltas are only a live preview anyway: the step's ``model.called`` event
and the conversation in the artifact store are authoritative. So the
``call_model`` activity appends them to a per-step log file beside the artifact
store, and the API tails that file while it streams a run's events.

Layout: ``<root>/<tenant>/<run_id>/step-<step>.jsonl``, one JSON object per
line, append-only. A delta's ``n`` is its line number, so numbering is stable and
gapless for every reader, even when a timed-out attempt that is still running
writes beside its retry (each batch is one ``O_APPEND`` write of whole lines).
Lines carry the attempt, so readers can drop the partial output of failed attempts.
The files live as long as the state directory, like the artifacts.

Backends: this file log is the embedded default; `store.delta_stream` keeps the same
records in Redis Streams, for workers and API servers on different hosts
(`AGENTRUN_DELTA_STORE=redis`). Both implement :class:`DeltaStore` with the same
guarantees: a delta's ``n`` is its 1-based position in its step's log, the same for
every reader; a tail returns each delta once, in order, never one past a gap that
may still fill; every record names its attempt. :func:`open_delta_store` picks the
backend from settings, for the worker and the API alike.

This module must not: import a backend's client library at import time (the Redis
client is imported only when `AGENTRUN_DELTA_STORE=redis`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError

from agentrun.contracts import Delta, ModelDelta

if TYPE_CHECKING:
    from agentrun.config import Settings

__all__ = [
    "DeltaLog",
    "DeltaStore",
    "DeltaTail",
    "DeltaWriter",
    "FileDeltaTail",
    "buffered_writer",
    "check_names",
    "open_delta_store",
    "parse_record",
]

FLUSH_SECONDS = 0.05
"""How long a delta may wait in the writer's buffer: batching keeps writes few."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class DeltaTail(Protocol):
    """Follows one step's deltas, returning each once, in order, after delta ``after_n``."""

    n: int
    """Deltas consumed so far (those up to ``n`` were returned or skipped)."""

    async def poll(self) -> list[ModelDelta]:
        """Every delta that arrived since the last poll (all of them: the SSE stream
        drains a step with one poll before it writes the step's closing event)."""
        ...


class DeltaStore(Protocol):
    """Where model token deltas go (worker) and come from (API)."""

    def writer(
        self, tenant_id: str, run_id: str, step: int, attempt: int
    ) -> AbstractAsyncContextManager[DeltaWriter]:
        """A ``DeltaSink`` for one model call attempt, flushed on exit (even on failure)."""
        ...

    def tail(self, tenant_id: str, run_id: str, step: int, after_n: int = 0) -> DeltaTail: ...

    async def aclose(self) -> None:
        """Release connections (the process is done with the store)."""
        ...


def check_names(tenant_id: str, run_id: str) -> None:
    """Tenant and run ids become path parts and stream keys: refuse anything odd."""
    for value in (tenant_id, run_id):
        if not _NAME.match(value) or ".." in value:
            raise ValueError(f"unsafe name for a delta log path: {value!r}")


def open_delta_store(settings: Settings) -> DeltaStore | None:
    """The deployment's delta store (`AGENTRUN_DELTA_STORE`); None when models do not
    stream (`AGENTRUN_MODEL_STREAM=false`). The worker and the API both call this."""
    if not settings.model_stream:
        return None
    if settings.delta_store == "redis":
        from store.delta_stream import RedisDeltaStore  # the client library, only when used

        if not settings.redis_url:  # Settings refuses this; a clear error all the same
            raise ValueError("AGENTRUN_DELTA_STORE=redis needs AGENTRUN_REDIS_URL")
        return RedisDeltaStore.from_url(
            settings.redis_url, retention_seconds=settings.delta_retention_seconds
        )
    return DeltaLog(settings.deltas_path)


class DeltaLog:
    """Where the delta logs of all runs live (``AGENTRUN_DELTA_DIR``)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def path(self, tenant_id: str, run_id: str, step: int) -> Path:
        check_names(tenant_id, run_id)
        return self._root / tenant_id / run_id / f"step-{int(step)}.jsonl"

    def writer(
        self, tenant_id: str, run_id: str, step: int, attempt: int
    ) -> AbstractAsyncContextManager[DeltaWriter]:
        """A ``DeltaSink`` for one model call attempt; flushed on exit, even on failure,
        so the partial output of a failed attempt is logged before Temporal retries."""
        path = self.path(tenant_id, run_id, step)

        async def append(lines: list[str]) -> None:
            data = "".join(line + "\n" for line in lines).encode()
            await asyncio.to_thread(_append, path, data)

        return buffered_writer(append, step=step, attempt=attempt)

    def tail(self, tenant_id: str, run_id: str, step: int, after_n: int = 0) -> FileDeltaTail:
        return FileDeltaTail(self.path(tenant_id, run_id, step), after_n=after_n)

    async def aclose(self) -> None:
        return None


Append = Callable[[list[str]], Awaitable[None]]
"""Writes a batch of records (JSON texts, one per delta) in order, as one unit."""


@contextlib.asynccontextmanager
async def buffered_writer(append: Append, *, step: int, attempt: int) -> AsyncIterator[DeltaWriter]:
    """A :class:`DeltaWriter` flushed every ``FLUSH_SECONDS`` and on exit.

    A failed write is not retried (a write whose outcome is unknown could land twice:
    a duplicate); the error ends the flushing and is raised on exit, so the model call
    fails and Temporal retries it as a new attempt, which readers tell apart.

    On exit the flusher is asked to stop, not cancelled: a write it has begun ends
    first. Cancelling a client in the middle of a request is what leaves a
    connection with an unread reply (redis-py's asyncio client has had such bugs),
    and the batch it held would be lost or doubled; the backend's own timeouts bound
    how long a write can take."""
    writer = DeltaWriter(append, step=step, attempt=attempt)
    stop = asyncio.Event()
    flusher = asyncio.create_task(writer.flush_until(stop))
    try:
        yield writer
    finally:
        stop.set()
        await flusher  # its write error, if it had one, is raised here
        await writer.flush()


class DeltaWriter:
    """Collects deltas from a provider (it is the ``DeltaSink``) and appends them in batches.

    ``__call__`` never blocks: it only encodes and buffers; the backend's ``append``
    writes every ``FLUSH_SECONDS``.
    """

    def __init__(self, append: Append, *, step: int, attempt: int) -> None:
        self._append = append
        self._step = step
        self._attempt = attempt
        self._buffer: list[str] = []
        self.count = 0

    def __call__(self, delta: Delta) -> None:
        if not delta.text and delta.name is None:
            return
        record = {
            "step": self._step,
            "attempt": self._attempt,
            "kind": delta.kind,
            "text": delta.text,
            "index": delta.index,
            "name": delta.name,
            "at": datetime.now(UTC).isoformat(),
        }
        self._buffer.append(json.dumps(record, ensure_ascii=False))
        self.count += 1

    async def flush_until(self, stop: asyncio.Event) -> None:
        """Flush every ``FLUSH_SECONDS`` until `stop` is set (the caller flushes last)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_SECONDS):
                    await stop.wait()
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch = self._buffer[:]
        self._buffer.clear()
        await self._append(batch)


def parse_record(raw: str | bytes, n: int) -> ModelDelta | None:
    """A stored record as the delta numbered ``n``; None for a damaged one (which keeps
    its number and yields nothing)."""
    try:
        return ModelDelta.model_validate({**json.loads(raw), "n": n})
    except (ValueError, ValidationError):
        return None


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


class FileDeltaTail:
    """Follows one step's delta log file, returning each delta once, after delta ``after_n``.

    Only complete lines are consumed, so a batch caught half-written is read on the
    next poll. :meth:`poll` reads in a thread; :meth:`poll_now` is its blocking part.
    """

    def __init__(self, path: Path, *, after_n: int = 0) -> None:
        self._path = path
        self._after_n = after_n
        self.n = 0
        """Lines consumed so far (deltas up to ``n`` were returned or skipped)."""
        self._offset = 0

    async def poll(self) -> list[ModelDelta]:
        return await asyncio.to_thread(self.poll_now)

    def poll_now(self) -> list[ModelDelta]:
        try:
            with self._path.open("rb") as file:
                file.seek(self._offset)
                chunk = file.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        if end == 0:
            return []
        self._offset += end
        out: list[ModelDelta] = []
        for line in chunk[:end].splitlines():
            self.n += 1
            if self.n <= self._after_n:
                continue
            delta = parse_record(line, self.n)
            if delta is not None:
                out.append(delta)
        return out
