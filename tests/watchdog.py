"""A per-test watchdog: a test that hangs fails with every stack printed, and the
suite goes on.

Without it, one test waiting forever (a worker shutdown waiting on an activity, a
server that never answers) holds CI until its overall limit and prints nothing
about where. With it, after `AGENTRUN_TEST_TIMEOUT` seconds (default 600, far above
the slowest test) the watchdog thread

* prints every thread's stack (`faulthandler`) and every pending asyncio task's
  stack of the session's event loop, then
* cancels the test's own task on that loop (found by the test function's name
  and file), so the test ends with `CancelledError`, its `async with` blocks unwind
  and the next test runs. A synchronous test cannot be interrupted from another
  thread: for those the stacks are printed and the test keeps running.

pytest-timeout was considered: its signal method raises inside whatever the event
loop is doing (often the selector), which leaves the session loop's test task
running; its thread method ends the whole process. Neither shows asyncio tasks.

tests/conftest.py registers this module as a plugin. PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

DEFAULT_SECONDS = 600.0


def _limit() -> float:
    return float(os.environ.get("AGENTRUN_TEST_TIMEOUT", DEFAULT_SECONDS))


_loop: asyncio.AbstractEventLoop | None = None
"""The session's event loop (every async test and fixture runs on it), once known."""


@pytest.fixture(scope="session", autouse=True)
async def _watchdog_knows_the_loop() -> None:
    global _loop
    _loop = asyncio.get_running_loop()


def _dump_and_cancel(item: pytest.Item, phase: str) -> None:
    """Runs in the watchdog thread when `item`'s `phase` overran its limit."""
    capman: Any = item.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n!!! watchdog: {item.nodeid} {phase} ran over {_limit():.0f} s", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    loop = _loop
    if loop is None or loop.is_closed():
        return
    # pytest-asyncio runs a wrapper of the test function: match by name and file.
    name = getattr(item, "originalname", item.name)
    path = str(item.path)

    def on_loop() -> None:
        with capman.global_and_fixture_disabled():
            for task in asyncio.all_tasks(loop):
                print(f"--- asyncio task {task.get_name()}:", file=sys.stderr)
                task.print_stack(file=sys.stderr)
            for task in asyncio.all_tasks(loop):
                code = getattr(task.get_coro(), "cr_code", None)
                if code is not None and (code.co_name, code.co_filename) == (name, path):
                    print(f"!!! watchdog: cancelling {item.nodeid}", file=sys.stderr)
                    task.cancel("watchdog: test ran over its time limit")
        sys.stderr.flush()

    loop.call_soon_threadsafe(on_loop)


@contextmanager
def _watched(item: pytest.Item, phase: str) -> Iterator[None]:
    timer = threading.Timer(_limit(), _dump_and_cancel, args=(item, phase))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _watched(item, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _watched(item, "call"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    with _watched(item, "teardown"):
        return (yield)
