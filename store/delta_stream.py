"""The delta log on Redis Streams: live model deltas across hosts.

With `AGENTRUN_DELTA_STORE=redis`, the worker that runs a model call appends its
deltas to a Redis stream and any API server tails it, so the two need not share a
directory. Same records, same numbering and the same guarantees as the file log
(`store.delta_log`), so the SSE cursors (`<seq>.<step>.<n>`) do not change.

Design (why it looks like this):

* **One stream per step**, key ``agentrun:deltas:{<tenant>/<run_id>}:<step>`` (the
  braces are a Redis Cluster hash tag: a run's streams share a slot). Each entry
  holds one record (field ``d``: the same JSON as a line of the file log, attempt
  included).
* **``n`` is the entry id's sequence part.** Entries are added with the id
  ``0-*``: Redis (7.0 or later) gives each the next sequence number of the stream,
  atomically, so ``n`` runs 1, 2, 3 … without gap or repeat even while a timed-out
  attempt still writes beside its retry, and every reader sees the same numbers. A
  batch is one ``MULTI``/``EXEC`` transaction, so its deltas stay together.
* **A tail reads with ``XRANGE (0-<n> +``**, from just after the last delta it
  returned (or the client's cursor), in pages, until the stream has nothing more:
  an entry is complete once it is visible, so there is no half-written batch to wait
  for. A damaged entry keeps its number and yields nothing, as a damaged line does.
* **Retention: a step's stream expires `AGENTRUN_DELTA_RETENTION_SECONDS` after its
  last delta.** Every batch sets the key's ``EXPIRE`` in the same transaction. The
  last write of a run comes with its last model call, shortly before the run ends,
  so a finished run's deltas are gone one retention period after it ended, with no
  sweeper and no call from the workflow. Deltas are a live preview: the durable
  events and the conversation (artifact store) stay. Streams are not trimmed by
  length (``MAXLEN`` would drop deltas a resuming reader has not seen: a gap); a
  step's length is bounded by the model's output limit.
* **Errors are not retried here**: a batch whose ``EXEC`` outcome is unknown could
  land twice. The write error fails the model call (`buffered_writer`), Temporal
  retries it as a new attempt, and clients keep to the attempt `model.called` names.

This module must not: be imported unless the Redis backend is configured (the
factory in `store.delta_log` imports it lazily), or block the event loop (it uses
redis-py's asyncio client).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from redis.asyncio import Redis

from agentrun.contracts import ModelDelta
from store.delta_log import DeltaWriter, buffered_writer, check_names, parse_record

__all__ = ["RedisDeltaStore", "RedisDeltaTail", "stream_key"]

KEY_PREFIX = "agentrun:deltas:"
PAGE = 1000
"""Entries per ``XRANGE`` call; a tail pages until the stream has no more."""
_FIELD = "d"
SOCKET_TIMEOUT_S = 10.0
"""Connecting and every reply: a Redis that stops answering fails the write (the
model call is retried) or the tail's read, instead of holding them for ever. No
command here blocks on the server's side, so any reply is due within milliseconds."""


def stream_key(tenant_id: str, run_id: str, step: int) -> str:
    check_names(tenant_id, run_id)
    return f"{KEY_PREFIX}{{{tenant_id}/{run_id}}}:{int(step)}"


class RedisDeltaStore:
    """Model token deltas in Redis Streams (``AGENTRUN_DELTA_STORE=redis``)."""

    def __init__(self, redis: Redis, *, retention_seconds: int) -> None:
        self._redis = redis
        self._retention = retention_seconds

    @classmethod
    def from_url(cls, url: str, *, retention_seconds: int) -> RedisDeltaStore:
        """A store on `url` (``redis://host:6379/0``, ``rediss://`` for TLS); connects
        on first use, in the event loop that uses it."""
        return cls(
            Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=SOCKET_TIMEOUT_S,
                socket_timeout=SOCKET_TIMEOUT_S,
            ),
            retention_seconds=retention_seconds,
        )

    def writer(
        self, tenant_id: str, run_id: str, step: int, attempt: int
    ) -> AbstractAsyncContextManager[DeltaWriter]:
        key = stream_key(tenant_id, run_id, step)

        async def append(records: list[str]) -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                for record in records:
                    pipe.xadd(key, {_FIELD: record}, id="0-*")
                pipe.expire(key, self._retention)
                await pipe.execute()

        return buffered_writer(append, step=step, attempt=attempt)

    def tail(self, tenant_id: str, run_id: str, step: int, after_n: int = 0) -> RedisDeltaTail:
        return RedisDeltaTail(self._redis, stream_key(tenant_id, run_id, step), after_n=after_n)

    async def ttl(self, tenant_id: str, run_id: str, step: int) -> int:
        """Seconds until a step's stream expires (-2: there is none; -1: it never does)."""
        seconds: int = await self._redis.ttl(stream_key(tenant_id, run_id, step))
        return seconds

    async def aclose(self) -> None:
        await self._redis.aclose()


class RedisDeltaTail:
    """Follows one step's stream, returning each delta once, after delta ``after_n``."""

    def __init__(self, redis: Redis, key: str, *, after_n: int = 0) -> None:
        self._redis = redis
        self._key = key
        self.n = max(0, after_n)
        """The last delta returned or skipped; the next read starts after it."""

    async def poll(self) -> list[ModelDelta]:
        out: list[ModelDelta] = []
        while True:
            entries = await self._redis.xrange(self._key, min=f"(0-{self.n}", max="+", count=PAGE)
            for entry_id, fields in entries or []:
                ms, _, seq = _text(entry_id).partition("-")
                if ms != "0":
                    return out  # not a delta writer's (its ids are `0-<n>`, all before)
                self.n = int(seq)
                delta = parse_record(_text((fields or {}).get(_FIELD)), self.n)
                if delta is not None:
                    out.append(delta)
            if len(entries or []) < PAGE:
                return out


def _text(value: str | bytes | None) -> str:
    """A reply field as text (the client decodes replies; its types say it may not)."""
    return value.decode() if isinstance(value, bytes) else (value or "")
