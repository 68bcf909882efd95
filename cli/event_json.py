"""Reading the API's event JSON into the typed contracts, tolerantly.

The API sends each run event as a `RunEvent` and each token delta as a
`ModelDelta` (see `agentrun.contracts`); the CLI reads them back into those
models and reads payloads by attribute, never by string key.

Design (why it looks like this): the CLI may be older than the server it talks
to. A server that has grown a new event type, or a new delta `kind`, must not
crash `agentrun logs`, so a reader returns ``None`` for JSON it cannot read and
the caller prints the raw JSON instead (see `event_format.format_event`).

This module must not: print, or do I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agentrun.contracts import ModelDelta, RunEvent

_RUN_EVENT: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)


def read_event(data: Mapping[str, Any]) -> RunEvent | None:
    """The typed event, or None when this CLI cannot read it (a newer server's event)."""
    try:
        return _RUN_EVENT.validate_python(data)
    except ValidationError:
        return None


def read_delta(data: Mapping[str, Any]) -> ModelDelta | None:
    """The typed delta, or None when this CLI cannot read it (a newer server's delta)."""
    try:
        return ModelDelta.model_validate(data)
    except ValidationError:
        return None
