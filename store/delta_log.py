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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from agentrun.contracts import Delta, ModelDelta

__all__ = ["DeltaLog", "DeltaTail", "DeltaWriter"]

FLUSH_SECONDS = 0.05
"""How long a delta may wait in the writer's buffer: batching keeps writes few."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class DeltaLog:
    """Where the delta logs of all runs live (``AGENTRUN_DELTA_DIR``)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def path(self, tenant_id: str, run_id: str, step: int) -> Path:
        for value in (tenant_id, run_id):
            if not _NAME.match(value) or ".." in value:
                raise ValueError(f"unsafe name for a delta log path: {value!r}")
        return self._root / tenant_id / run_id / f"step-{int(step)}.jsonl"

    @contextlib.asynccontextmanager
    async def writer(
        self, tenant_id: str, run_id: str, step: int, attempt: int
    ) -> AsyncIterator[DeltaWriter]:
        """A ``DeltaSink`` for one model call attempt; flushed on exit, even on failure,
        so the partial output of a failed attempt is logged before Temporal retries."""
        writer = DeltaWriter(self.path(tenant_id, run_id, step), step=step, attempt=attempt)
        flusher = asyncio.create_task(writer.flush_periodically())
        try:
            yield writer
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await writer.flush()

    def tail(self, tenant_id: str, run_id: str, step: int, after_n: int = 0) -> DeltaTail:
        return DeltaTail(self.path(tenant_id, run_id, step), after_n=after_n)


class DeltaWriter:
    """Collects deltas from a provider (it is the ``DeltaSink``) and appends them in batches.

    ``__call__`` never blocks: it only encodes and buffers; the file is written from a
    thread every ``FLUSH_SECONDS``.
    """

    def __init__(self, path: Path, *, step: int, attempt: int) -> None:
        self._path = path
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
        self._buffer.append(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        data = "".join(self._buffer).encode()
        self._buffer.clear()
        await asyncio.to_thread(_append, self._path, data)


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


class DeltaTail:
    """Follows one step's delta log, returning each delta once, after delta ``after_n``.

    Only complete lines are consumed, so a batch caught half-written is read on the
    next poll. Blocking: call :meth:`poll` from a thread.
    """

    def __init__(self, path: Path, *, after_n: int = 0) -> None:
        self._path = path
        self._after_n = after_n
        self.n = 0
        """Lines consumed so far (deltas up to ``n`` were returned or skipped)."""
        self._offset = 0

    def poll(self) -> list[ModelDelta]:
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
            try:
                out.append(ModelDelta.model_validate({**json.loads(line), "n": self.n}))
            except (ValueError, ValidationError):
                continue  # a damaged line keeps its number and yields nothing
        return out
