"""A spinner with the elapsed time while a followed run is silent, on terminals only.

          ⠹ model call, step 3 · 12s

While a model call has not streamed anything yet, or a tool call has not
answered, `agentrun run --follow` and `agentrun logs -f` would sit still with
nothing on the screen; like `gh run watch`, they show what is in flight and for
how long instead.

Design (why it looks like this): the spinner is redrawn by a daemon thread
(the stream blocks the main thread while the run is silent), on one line it
erases with ``\\r`` and ``ESC [K``. Those are control sequences, so it is drawn
only where they mean something: a TTY, never piped output, a file or `--json`
(`follow` decides; `enabled=False` makes every method a no-op). Everything the
follower writes goes through :meth:`Spinner.pause`, which holds the lock and
erases the spinner's line first, so the two threads never interleave a line.
The elapsed time counts from the event that opened the silence (its `at`), so
attaching to a run in the middle of a long tool call shows the real duration.

This module must not: read the stream or format events (`follow` and
`event_format` do), or draw anything unless it was enabled.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TextIO

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
INTERVAL_SECONDS = 0.1
"""Redraw period: smooth enough to look alive, cheap enough to ignore."""
ERASE = "\r\x1b[K"
"""Back to the start of the line and clear it."""


def elapsed_text(seconds: float) -> str:
    """``7s``, ``1m05s``, ``2h03m`` (as `gh run watch` shows durations)."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class Spinner:
    """Shows ``⠹ <what> · <elapsed>`` while something is in flight.

    `start` names what is in flight and since when, `stop` ends it, and every
    other write to `out` goes inside `with spinner.pause():`. `clock` is the
    wall clock (seconds since the epoch), `interval` the redraw period (None:
    no thread; `draw` is then called by hand).
    """

    def __init__(
        self,
        out: TextIO,
        *,
        enabled: bool,
        indent: str = "",
        clock: Callable[[], float] = time.time,
        interval: float | None = INTERVAL_SECONDS,
    ) -> None:
        self._out = out
        self.enabled = enabled
        self._indent = indent
        self._clock = clock
        self._lock = threading.RLock()  # `stop` may be called inside `pause`
        self._what: str | None = None
        self._since = 0.0
        self._frame = 0
        self._drawn = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if enabled and interval is not None:
            self._thread = threading.Thread(
                target=self._run, args=(interval,), name="agentrun-spinner", daemon=True
            )
            self._thread.start()

    def start(self, what: str, since: datetime | None = None) -> None:
        """Spin for `what`, counting from `since` (default: now)."""
        if not self.enabled:
            return
        with self._lock:
            self._what = what
            now = self._clock()
            self._since = min(now, since.timestamp()) if since is not None else now
            self._frame = 0

    def stop(self) -> None:
        """Nothing is in flight any more: erase the spinner's line."""
        if not self.enabled:
            return
        with self._lock:
            self._what = None
            self._erase()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Write to the stream inside this: the spinner's line is erased first."""
        if not self.enabled:
            yield
            return
        with self._lock:
            self._erase()
            yield

    def draw(self) -> None:
        """Redraw the spinner's line (the thread does, every `interval`)."""
        with self._lock:
            if self._what is None or self._closed.is_set():
                return
            frame = FRAMES[self._frame % len(FRAMES)]
            self._frame += 1
            elapsed = elapsed_text(self._clock() - self._since)
            self._out.write(f"{ERASE}{self._indent}{frame} {self._what} · {elapsed}")
            self._out.flush()
            self._drawn = True

    def close(self) -> None:
        """Erase the spinner and end its thread."""
        self.stop()
        self._closed.set()
        if self._thread is not None:
            self._thread.join()

    def _erase(self) -> None:
        if self._drawn:
            self._out.write(ERASE)
            self._out.flush()
            self._drawn = False

    def _run(self, interval: float) -> None:
        while not self._closed.wait(interval):
            self.draw()
