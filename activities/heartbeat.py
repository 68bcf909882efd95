"""Heartbeats that go on while an activity works, so a dead worker is noticed early.

Temporal only learns that a worker died holding an activity when one of the
activity's timeouts fires. With a heartbeat timeout (`workflows.policies.HEARTBEAT`)
that is seconds after the last heartbeat; without one, the whole start-to-close
timeout (minutes). So every activity that can take more than a few seconds runs
its work inside one of these helpers, and the workflow gives it a heartbeat timeout.

Design (why it looks like this): the work itself (a provider call, a Docker call, a
blob write) cannot heartbeat, so the heartbeat runs *beside* it:

- `heartbeating()`, for async activities: a task on the activity's event loop;
  the work must leave the loop free (blocking calls go through `asyncio.to_thread`).
- `heartbeating_in_background()`, for sync activities (the Docker SDK is sync;
  they run in the worker's thread pool): a thread that carries the activity's
  context (the SDK finds the activity through a context variable) and calls
  `activity.heartbeat`, which the SDK makes safe to call from any thread.

The first beat comes `every` seconds in, not at the start: an activity that ends
sooner (most steps' do) sends no heartbeat at all, where a beat at the start was
one more server round trip per activity for nothing the heartbeat timeout needs.

A local activity (a tool call's first, short attempt: `workflows.calls.start_tool_local`)
sends none: Temporal has no heartbeat for one, its short budget bounds it instead.

A beat that fails (the worker's event loop busy for seconds, the activity already
finishing) is skipped, never raised: the next one tries again, and the heartbeat
timeout is what reports a worker that really stopped beating.

This module must not: carry heartbeat *details* (progress belongs in the activity's
own records; details land in history), or outlive the `with` block it was opened by.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Iterator

from temporalio import activity

__all__ = ["HEARTBEAT_EVERY", "beat", "heartbeating", "heartbeating_in_background"]

HEARTBEAT_EVERY = 2.0
"""Seconds between beats: well inside the workflow's heartbeat timeout (10 s)."""

log = logging.getLogger(__name__)


def beat() -> None:
    """`activity.heartbeat()`, but nothing in a local activity (see the module's note)."""
    if not activity.info().is_local:
        activity.heartbeat()


@contextlib.asynccontextmanager
async def heartbeating(every: float = HEARTBEAT_EVERY) -> AsyncIterator[None]:
    """Heartbeat from a task on the activity's loop while the `async with` body runs.

    >>> async with heartbeating():  # doctest: +SKIP
    ...     reply = await provider.complete(request)
    """

    if activity.info().is_local:
        yield
        return

    async def beats() -> None:
        while True:
            await asyncio.sleep(every)  # first beat after `every`: see the module's note
            activity.heartbeat()

    task = asyncio.create_task(beats())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.contextmanager
def heartbeating_in_background(every: float = HEARTBEAT_EVERY) -> Iterator[None]:
    """Heartbeat from a background thread while a sync activity's `with` body blocks.

    >>> with heartbeating_in_background():  # doctest: +SKIP
    ...     outcome = sandbox.exec(run, call_id, command, ...)
    """
    if activity.info().is_local:
        yield
        return
    stop = threading.Event()
    context = contextvars.copy_context()

    def beats() -> None:
        while not stop.wait(every):  # first beat after `every`: see the module's note
            try:
                activity.heartbeat()
            except Exception:  # a missed beat is retried by the next one
                log.debug("heartbeat skipped", exc_info=True)

    thread = threading.Thread(
        target=context.run, args=(beats,), name="activity-heartbeat", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
