"""The dev stack's Temporal server dispatches tasks without the transfer queue's wait.

`history.transferProcessorMaxPollRPS` defaults to 20 polls per second and shard; on
the dev server's single shard that delays every workflow and activity task by up
to ~50 ms (issue 14). The dev stack raises it on the server's command line.
"""

from __future__ import annotations

from pathlib import Path

from agentrun.config import load_settings
from cli.devstack import DevStack

TEMPORAL_DEFAULT_RPS = 20


def test_the_dev_server_starts_with_the_transfer_queue_poll_rate_raised(tmp_path: Path) -> None:
    stack = DevStack(load_settings(state_dir=tmp_path))
    command = next(s for s in stack.services() if s.name == "temporal").command
    assert command[1:3] == ["server", "start-dev"]
    values = [
        command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--dynamic-config-value"
    ]
    settings = dict(value.split("=", 1) for value in values)
    assert int(settings["history.transferProcessorMaxPollRPS"]) >= 50 * TEMPORAL_DEFAULT_RPS
