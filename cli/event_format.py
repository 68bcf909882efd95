"""How the CLI shows a run's events and live model output to a person.

    #3    12:04:11  tool.result            shell ok: exit 0
                                           total 8
                                           -rw-r--r-- 1 agent agent 5 hello.txt
          ▸ I will write the file now.
          → write_file {"path": "hello.txt", "content": "hello"}

One line per durable event (`format_event`), whose further lines (a tool's
multi-line output, a reply's text) stay indented under its summary; a reply's
token deltas live on indented lines (`LiveLine`): its text on a `▸` line, each
tool call it makes on a `→ name {arguments}` line. Nothing from a model or a
tool reaches the terminal unescaped (`printable`).

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
    ControlRejectedEvent,
    EgressRequestEvent,
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


LIVE_INDENT = " " * 6
"""Where a live line (`▸` text, `→` tool call) starts."""
SUMMARY_COLUMN = len(f"#{'':<4} {'00:00:00'}  {'':<22} ")
"""Where an event's summary starts; its further lines are indented to it."""


def format_event(event: RunEvent | Mapping[str, Any], run_id: str | None = None) -> str:
    """An event as `#seq  HH:MM:SS  type  summary`, further lines indented under summary.

    `event` is a typed event or an event's JSON; JSON this CLI cannot read is
    shown as its fields, ``key=value``. `run_id` completes the command an
    `approval.requested` event suggests (left out when unknown).
    """
    if isinstance(event, Mapping):
        typed = read_event(event)
        if typed is None:
            return _format_unreadable(event)
        event = typed
    at = event.at.strftime("%H:%M:%S")
    return _line(event.seq, at, event.type.value, _summary(event, run_id))


def tokens(count: int, estimated: bool) -> str:
    """A token count; ``~114`` when it is agentrun's estimate, not the server's."""
    return f"~{count}" if estimated else str(count)


def _summary(event: RunEvent, run_id: str | None) -> str:
    if isinstance(event, RunStartedEvent):
        return f"goal: {event.payload.goal}"
    if isinstance(event, ModelCalledEvent):
        called = event.payload
        tools = ", ".join(called.tool_calls) or "-"
        used = (
            f"{tokens(called.input_tokens, called.usage_estimated)}→"
            f"{tokens(called.output_tokens, called.usage_estimated)} tokens"
        )
        summary = f"step {called.step} · {used} · tools: {tools}"
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
        summary = f"{asked.tool} needs approval: {asked.arguments}"
        if run_id is None:
            return summary
        return (
            f"{summary}\napprove: agentrun approve {run_id} {asked.approval_id} "
            f"--digest {asked.arguments_digest}   (or deny)"
        )
    if isinstance(event, ApprovalResolvedEvent):
        resolved = event.payload
        verdict = "approved" if resolved.approved else "denied"
        on_behalf = f" for {resolved.on_behalf_of}" if resolved.on_behalf_of else ""
        return f"{resolved.approval_id} {verdict} by {resolved.actor}{on_behalf}"
    if isinstance(event, ControlRejectedEvent):
        rejected = event.payload
        return f"{rejected.action} by {rejected.actor} changed nothing: {rejected.reason}"
    if isinstance(event, EgressRequestEvent):
        egress = event.payload
        where = f"{egress.method} {egress.host}" + (f":{egress.port}" if egress.port else "")
        secret = f" with {egress.secret}" if egress.secret else ""
        if not egress.allowed:
            return f"{egress.tool} {where} refused: {egress.error}"
        outcome = str(egress.status) if egress.status is not None else f"failed: {egress.error}"
        return f"{egress.tool} {where}{secret} → {outcome}"
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
    first, *rest = summary.split("\n")
    lines = [f"#{seq!s:<4} {at}  {kind:<22} {first}"]
    lines += [" " * SUMMARY_COLUMN + line for line in rest]
    return "\n".join(printable(line.rstrip()) for line in lines)


class LiveLine:
    """Prints a model call's token deltas as they arrive, on indented lines.

    The reply's text goes on a `▸` line and each tool call it makes on a line of
    its own, `→ name {arguments}`, so text and arguments never run together.
    A retried model call streams again from the start, so a delta of a new
    attempt opens a line that says the previous attempt failed.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._attempt: int | None = None
        self._part: tuple[str, int] | None = None
        """What the open line shows: (`kind`, tool call `index`); None: a note."""

    @property
    def open(self) -> bool:
        """A live line is open (whatever comes next must start a new line)."""
        return self._attempt is not None

    def delta(self, delta: ModelDelta) -> None:
        if self._attempt is not None and delta.attempt != self._attempt:
            self._out.write(f"\n{LIVE_INDENT}▸ (attempt {delta.attempt}, the previous one failed)")
            self._part = None
        part = (delta.kind, delta.index if delta.kind == "tool_call" else 0)
        if part != self._part:
            if self._attempt is not None:
                self._out.write("\n")
            if delta.kind == "tool_call":
                self._out.write(f"{LIVE_INDENT}→ {printable(delta.name or 'tool')} ")
            else:
                self._out.write(f"{LIVE_INDENT}▸ ")
            self._part = part
        self._attempt = delta.attempt
        # The reply's own line breaks stay inside the layout, under the live line.
        self._out.write(printable(delta.text).replace("\n", "\n" + LIVE_INDENT + "  "))

    def end(self) -> None:
        if self._attempt is not None:
            self._out.write("\n")
            self._attempt = None
            self._part = None
