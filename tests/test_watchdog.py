"""The per-test watchdog (tests/watchdog.py): a hanging async test is cancelled
with every stack printed, and the tests after it still run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HANGING = """
import asyncio
import time

pytestmark = []


async def test_hangs_forever():
    await asyncio.Event().wait()


async def test_after_the_hang_still_runs():
    await asyncio.sleep(0)


def test_sync_overrun_is_reported_but_not_interrupted():
    time.sleep(2.5)
"""


def test_a_hanging_async_test_is_cancelled_with_its_stacks_printed(tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text(HANGING)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = session\n"
        "asyncio_default_test_loop_scope = session\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.watchdog", "-q", "-p", "no:cacheprovider",
         str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "AGENTRUN_TEST_TIMEOUT": "1.5", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "test_hangs_forever call ran over 2 s" in out, out
    assert "--- asyncio task" in out and "in test_hangs_forever" in out, out
    assert "cancelling test_hang.py::test_hangs_forever" in out, out
    assert "test_sync_overrun_is_reported_but_not_interrupted call ran over" in out, out
    assert "1 failed, 2 passed" in out, out
