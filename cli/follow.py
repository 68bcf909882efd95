"""Following a run live: print its events and model output until it ends.

Used by `agentrun run --follow`, `agentrun logs -f` and the dev stack's demo.
The exit code says how the run ended, so a script can wait on a run:
`EXIT_OK` when it completed, `EXIT_RUN_FAILED` when it failed or was cancelled.

This module must not: talk HTTP itself (`ApiClient` does), or format an event
(`event_format` does).
"""

from __future__ import annotations

import json
from typing import TextIO

from agentrun.contracts import (
    ModelStartedEvent,
    RunEvent,
    RunFinishedEvent,
    RunStatus,
    ToolCalledEvent,
)
from cli.api_client import ApiClient, StreamedDelta, StreamedEvent
from cli.errors import EXIT_OK, EXIT_RUN_FAILED
from cli.event_format import LIVE_INDENT, LiveLine, format_event
from cli.spinner import Spinner


def follow(
    api: ApiClient,
    run_id: str,
    after: int,
    out: TextIO,
    as_json: bool,
    *,
    spinner: bool | None = None,
) -> int:
    """Stream the events after seq `after`; `as_json` prints each message's JSON as sent.

    `spinner`: show what is in flight while the run is silent (`cli.spinner`);
    None shows it when `out` is a terminal, and never with `as_json`.
    """
    status: str | None = None
    live = LiveLine(out)
    enabled = not as_json and (_is_terminal(out) if spinner is None else spinner)
    busy = Spinner(out, enabled=enabled, indent=LIVE_INDENT)
    try:
        for item in api.stream_events(run_id, after):
            with busy.pause():
                if as_json:
                    out.write(json.dumps(item.wire, sort_keys=True) + "\n")
                elif isinstance(item, StreamedDelta):
                    # A delta this CLI cannot read is skipped: deltas are only a preview,
                    # and the step's `model.called` event carries the reply.
                    if item.delta is not None:
                        busy.stop()
                        live.delta(item.delta)
                else:
                    live.end()
                    shown = item.wire if item.event is None else item.event
                    out.write(format_event(shown, run_id) + "\n")
                out.flush()
            if isinstance(item, StreamedEvent):
                _spin_for(busy, item.event)
                if isinstance(item.event, RunFinishedEvent):
                    status = item.event.payload.status
    finally:
        busy.close()
    live.end()
    if status is None:
        status = api.request("GET", f"/v1/runs/{run_id}")["status"]
    return EXIT_OK if status == RunStatus.COMPLETED else EXIT_RUN_FAILED


def _spin_for(busy: Spinner, event: RunEvent | None) -> None:
    """After `event`, is the run silently busy? A model call that has not streamed
    yet, or a tool call that has not answered."""
    if isinstance(event, ModelStartedEvent):
        busy.start(f"model call, step {event.payload.step}", since=event.at)
    elif isinstance(event, ToolCalledEvent):
        busy.start(f"{event.payload.tool} running", since=event.at)
    else:
        busy.stop()


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # a closed or a file-like stream
        return False
