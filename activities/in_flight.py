"""The activities a worker is running, so that stopping it can say what it waits for.

A worker stopped by SIGTERM drains (`worker.run_worker`): it stops taking tasks and
gives the activities it runs `AGENTRUN_WORKER_DRAIN_SECONDS` to finish. An operator
watching a rolling update wants to know how much it is waiting for and how it
ended, in two log lines:

    draining 2 activities (call_model, dispatch_tool) for up to 60s
    drained in 3.2s: 2 finished, 0 cancelled at the deadline

Design (why it looks like this): an activity inbound interceptor, as
`activities.store_errors` is, sees every activity of this worker start and end, sync
ones included (the SDK runs the interceptor chain on the worker's event loop and
only the activity's function in the thread pool), so the count needs no lock and
reads no SDK internals. An activity that ends with a cancellation after the drain
began was cut at the deadline (Temporal retries it on another worker); any other
end, a result or an error, means it finished on its own.

This module must not: change an activity's outcome, or log per activity (the
worker logs the totals).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import temporalio.exceptions
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

__all__ = ["DrainTally", "InFlightActivities"]


@dataclass(frozen=True)
class DrainTally:
    """How the activities running when the drain began ended."""

    finished: int
    cancelled: int


class InFlightActivities(Interceptor):
    """`Worker(interceptors=[InFlightActivities()])`; read by the worker's stop."""

    def __init__(self) -> None:
        self._running: Counter[str] = Counter()
        self._draining = False
        self._finished = 0
        self._cancelled = 0

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Inbound(next, self)

    def running(self) -> list[str]:
        """The types of the running activities, one entry per activity, sorted."""
        return sorted(self._running.elements())

    def drain_started(self) -> None:
        """From now on, count how running activities end."""
        self._draining = True

    def tally(self) -> DrainTally:
        return DrainTally(finished=self._finished, cancelled=self._cancelled)

    def started(self, kind: str) -> None:
        self._running[kind] += 1

    def ended(self, kind: str, *, cancelled: bool) -> None:
        self._running[kind] -= 1
        if self._running[kind] <= 0:
            del self._running[kind]
        if self._draining:
            if cancelled:
                self._cancelled += 1
            else:
                self._finished += 1


class _Inbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, tracker: InFlightActivities) -> None:
        super().__init__(next)
        self._tracker = tracker

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        # A local one (a tool call's first attempt) is named so: it ends with its budget.
        kind = f"{info.activity_type} (local)" if info.is_local else info.activity_type
        self._tracker.started(kind)
        cancelled = False
        try:
            return await super().execute_activity(input)
        except (asyncio.CancelledError, temporalio.exceptions.CancelledError):
            cancelled = True
            raise
        finally:
            self._tracker.ended(kind, cancelled=cancelled)
