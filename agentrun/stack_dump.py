"""What a stuck process is waiting for: every thread's stack and every asyncio task's.

`kill -USR1 <worker pid>` writes both to the worker's stderr (`worker.Signals`) and
the worker goes on. Thread stacks alone (py-spy, faulthandler) show an asyncio
process as one idle event loop; the await an activity is stuck in is only in its
task's coroutine stack, which nothing outside the process can read.

This module must not: stop, slow or change the process beyond the time it takes to
write (it reads stacks; it never cancels or resumes anything), or print locals
(they may hold a granted secret value).
"""

from __future__ import annotations

import asyncio
import faulthandler
import io
from typing import TextIO


def dump_stacks(loop: asyncio.AbstractEventLoop, out: TextIO) -> None:
    """Write the stacks of every thread, then of every task of `loop`, to `out`."""
    out.write("=== stack dump: threads\n")
    out.flush()
    try:
        faulthandler.dump_traceback(file=out, all_threads=True)
    except (io.UnsupportedOperation, AttributeError, ValueError):
        out.write("(no file descriptor to write thread stacks to)\n")
    tasks = asyncio.all_tasks(loop)
    out.write(f"=== stack dump: {len(tasks)} asyncio tasks\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.write(f"--- {task.get_name()}: {task.get_coro()!r}\n")
        task.print_stack(file=out)
    out.write("=== end of stack dump\n")
    out.flush()
