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

from agentrun.contracts import RunFinishedEvent, RunStatus
from cli.api_client import ApiClient, StreamedDelta, StreamedEvent
from cli.errors import EXIT_OK, EXIT_RUN_FAILED
from cli.event_format import LiveLine, format_event


def follow(api: ApiClient, run_id: str, after: int, out: TextIO, as_json: bool) -> int:
    """Stream the events after seq `after`; `as_json` prints each message's JSON as sent."""
    status: str | None = None
    live = LiveLine(out)
    for item in api.stream_events(run_id, after):
        if as_json:
            out.write(json.dumps(item.wire, sort_keys=True) + "\n")
        elif isinstance(item, StreamedDelta):
            # A delta this CLI cannot read is skipped: deltas are only a preview,
            # and the step's `model.called` event carries the reply.
            if item.delta is not None:
                live.delta(item.delta)
        else:
            live.end()
            out.write(format_event(item.wire if item.event is None else item.event) + "\n")
        out.flush()
        if isinstance(item, StreamedEvent) and isinstance(item.event, RunFinishedEvent):
            status = item.event.payload.status
    live.end()
    if status is None:
        status = api.request("GET", f"/v1/runs/{run_id}")["status"]
    return EXIT_OK if status == RunStatus.COMPLETED else EXIT_RUN_FAILED
