"""How the CLI shows a run's events and live model output to a person.

    #3    12:04:11  tool.result            write_file ok: wrote 5 bytes
          ▸ streamed words arrive

One line per durable event (`format_event`), token deltas on one indented live
line (`LiveLine`), and nothing from a model or a tool reaches the terminal
unescaped (`printable`).

Design (why it looks like this): events are read into the typed `RunEvent`
union and their payloads by attribute, so a renamed field fails the type check
here instead of printing ``None``. An event this CLI cannot read (a newer
server's) is printed field by field from its JSON rather than dropped.

This module must not: do I/O other than writing to the stream it is given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, TextIO

from agentrun.contracts import (
    ApprovalRequestedEvent,
    ApprovalResolvedEvent,
    ModelCalledEvent,
    ModelDelta,
    RunEvent,
    RunFinishedEvent,
    RunStartedEvent,
    ToolCalledEvent,
    ToolResultEvent,
)
from cli.event_json import read_event

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")


def printable(text: str) -> str:
    """Model and tool output is hostile: no escape sequences reach the terminal."""
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", text)


def print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def format_event(event: RunEvent | Mapping[str, Any]) -> str:
    """One line per event: `#seq  HH:MM:SS  type  summary`.

    `event` is a typed event or an event's JSON; JSON this CLI cannot read is
    shown as its fields, ``key=value``.
    """
    if isinstance(event, Mapping):
        typed = read_event(event)
        if typed is None:
            return _format_unreadable(event)
        event = typed
    at = event.at.strftime("%H:%M:%S")
    return _line(event.seq, at, event.type.value, _summary(event))


def _summary(event: RunEvent) -> str:
    if isinstance(event, RunStartedEvent):
        return f"goal: {event.payload.goal}"
    if isinstance(event, ModelCalledEvent):
        called = event.payload
        tools = ", ".join(called.tool_calls) or "-"
        summary = (
            f"step {called.step} · {called.input_tokens}→{called.output_tokens} tokens"
            f" · tools: {tools}"
        )
        return summary + (f" · {called.text}" if called.text else "")
    if isinstance(event, ToolCalledEvent):
        return f"{event.payload.tool} {event.payload.arguments}"
    if isinstance(event, ToolResultEvent):
        result = event.payload
        error = result.error_type.value if result.error_type is not None else "error"
        mark = "ok" if result.ok else f"failed ({error})"
        return f"{result.tool} {mark}: {result.summary}"
    if isinstance(event, ApprovalRequestedEvent):
        asked = event.payload
        return (
            f"{asked.tool} needs approval: {asked.arguments}\n"
            f"      approve: agentrun approve <run> {asked.approval_id} "
            f"--digest {asked.arguments_digest}"
        )
    if isinstance(event, ApprovalResolvedEvent):
        resolved = event.payload
        verdict = "approved" if resolved.approved else "denied"
        return f"{resolved.approval_id} {verdict} by {resolved.actor}"
    if isinstance(event, RunFinishedEvent):
        finished = event.payload
        summary = f"{finished.status.value} ({finished.reason.value})"
        if finished.final_answer:
            summary += f": {finished.final_answer}"
        if finished.error:
            summary += f": {finished.error}"
        return summary
    return _fields(event.payload.model_dump(mode="json"))


def _format_unreadable(event: Mapping[str, Any]) -> str:
    payload = event.get("payload")
    fields = _fields(payload) if isinstance(payload, Mapping) else ""
    at = str(event.get("at", ""))[11:19]
    return _line(event.get("seq", "?"), at, str(event.get("type", "?")), fields)


def _fields(payload: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in payload.items() if value is not None)


def _line(seq: object, at: str, kind: str, summary: str) -> str:
    return printable(f"#{seq!s:<4} {at}  {kind:<22} {summary}".rstrip())


class LiveLine:
    """Prints a model call's token deltas as they arrive, on one indented line.

    A retried model call streams again from the start, so a delta of a new
    attempt opens a new line that says the previous attempt failed.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._attempt: int | None = None

    def delta(self, delta: ModelDelta) -> None:
        if self._attempt is None:
            self._out.write("      ▸ ")
        elif delta.attempt != self._attempt:
            self._out.write(f"\n      ▸ (attempt {delta.attempt}, the previous one failed) ")
        self._attempt = delta.attempt
        self._out.write(printable(delta.text))

    def end(self) -> None:
        if self._attempt is not None:
            self._out.write("\n")
            self._attempt = None
