"""One poller per followed run, shared by all the SSE connections that follow it.

Without it every SSE connection polls the run's `events` query on its own, so a
run with fifty followers costs fifty queries (each a round trip through the
Temporal server to a worker) every poll interval. A `RunFeed` polls once per
interval and keeps a window of the newest events; connections read from the
window and wake when it grows. A connection that is behind the window (it
resumed far back, or is replaying a finished run) reads with its own queries
until it catches up, so the window never has to hold a run's whole history.

The feed also watches for an execution that Temporal closed without the workflow
finishing (terminated, timed out): one `describe` per quiet interval, not one per
connection. `bench/sse_bench.py` measures the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from agentrun.config import Settings
from agentrun.contracts import EventsPage, RunEvent
from api.errors import NotFound
from api.service import RunNotAnswering, SegmentReader, describe, fetch_events
from telemetry.metrics import instruments

log = logging.getLogger("agentrun.api.feed")

PAGE = 500
WINDOW = 2000
"""Events a feed keeps for its connections; one further back reads on its own."""
CLOSED_CHECK_SECONDS = 2.0
"""With no new event for this long, ask Temporal whether the execution ended."""
_CLOSED = (
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
    WorkflowExecutionStatus.FAILED,
)


class RunFeed:
    """The newest events of one run, polled once for every connection following it."""

    def __init__(self, handle: Any, reader: SegmentReader, settings: Settings, after: int) -> None:
        self._handle = handle
        self._reader = reader
        self._settings = settings
        self._window: list[RunEvent] = []
        self.last_seq = after
        """The newest seq the feed has (its window ends there)."""
        self.page: EventsPage | None = None
        self.ended: Literal["not_found", "execution_closed"] | None = None
        """`not_found` or `execution_closed`: no more events will come."""
        self.queries = 0
        self._changed = asyncio.Event()
        self.subscribers = 0
        self._task: asyncio.Task[None] | None = None

    async def read(self, after: int) -> tuple[list[RunEvent], EventsPage | None]:
        """Events with seq > `after` (at most `PAGE`), in order, and the newest page."""
        start = self._window[0].seq if self._window else self.last_seq + 1
        if after + 1 >= start:
            return [e for e in self._window if e.seq > after][:PAGE], self.page
        return await self._fetch(after)  # behind the window: catch up on our own

    async def wait(self, seconds: float) -> bool:
        """Wait until the feed changes (at most `seconds`); True if it did."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), seconds)
        return changed.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name=f"feed {self._handle.id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _fetch(self, after: int) -> tuple[list[RunEvent], EventsPage | None]:
        self.queries += 1
        try:
            return await fetch_events(
                self._handle, self._reader, after, PAGE, self._settings.api_query_timeout_seconds
            )
        except RunNotAnswering:
            # Between two Temporal runs (continue-as-new) or no worker up: keep waiting.
            return [], None
        except RPCError as err:
            log.warning("events poll for %s failed: %s", self._handle.id, err)
            return [], None

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while self.ended is None:
            try:
                events, page = await self._fetch(self.last_seq)
            except NotFound:
                events, page, self.ended = [], None, "not_found"
            if events:
                self._window = (self._window + events)[-WINDOW:]
                self.last_seq = events[-1].seq
                quiet_since = loop.time()
            if page is not None:
                self.page = page
            if (
                not events
                and self.ended is None
                and not (page and page.terminal)
                and loop.time() - quiet_since >= CLOSED_CHECK_SECONDS
            ):
                quiet_since = loop.time()
                if await self._closed_without_finishing():
                    self.ended = "execution_closed"
            self._changed.set()
            self._changed = asyncio.Event()
            if len(events) < PAGE:
                await asyncio.sleep(self._settings.api_sse_poll_seconds)

    async def _closed_without_finishing(self) -> bool:
        try:
            desc = await describe(self._handle)
        except (NotFound, RPCError):
            return False
        return desc.status in _CLOSED


class RunFeeds:
    """The feeds of the runs being followed through this API process.

    With `shared=False` every connection gets a feed of its own, which is how SSE
    worked before feeds were shared; the benchmark uses it as its baseline.
    """

    def __init__(self, reader: SegmentReader, settings: Settings, *, shared: bool = True) -> None:
        self._reader = reader
        self.settings = settings
        self._shared = shared
        self._feeds: dict[str, RunFeed] = {}
        self._retired_queries = 0
        self._connections = itertools.count()

    def active(self) -> dict[str, RunFeed]:
        """The feeds polling now, by workflow id (`#n` suffixed when not shared)."""
        return dict(self._feeds)

    @property
    def queries(self) -> int:
        """Events queries sent so far by all feeds, past and present."""
        return sum(feed.queries for feed in self._feeds.values()) + self._retired_queries

    @contextlib.asynccontextmanager
    async def follow(self, handle: Any, after: int) -> AsyncIterator[RunFeed]:
        key = handle.id if self._shared else f"{handle.id}#{next(self._connections)}"
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = RunFeed(handle, self._reader, self.settings, after)
        feed.subscribers += 1
        feed.start()
        followers = instruments().sse_followers
        followers.add(1)
        try:
            yield feed
        finally:
            followers.add(-1)
            feed.subscribers -= 1
            if feed.subscribers == 0 and self._feeds.get(key) is feed:
                del self._feeds[key]
                self._retired_queries += feed.queries
                await feed.stop()
