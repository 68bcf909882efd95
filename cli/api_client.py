"""The CLI's HTTP client of the REST API, including its SSE event stream.

    api = ApiClient("http://127.0.0.1:8080", actor="dana")
    run = api.request("GET", f"/v1/runs/{run_id}")
    for item in api.stream_events(run_id, after=0):
        ...

Design (why it looks like this): the CLI is synchronous (httpx), one command per
process, so a plain blocking client is the simplest thing that works. Every
failure becomes a :class:`~cli.errors.CliError` whose message says how to fix
it (start the API, point `AGENTRUN_API_URL` elsewhere) or carries the API's
problem detail. The stream reconnects with `Last-Event-ID`, so a dropped
connection resumes where it stopped instead of replaying the run.

This module must not: print, format events for people, or talk to Temporal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from agentrun.contracts import DELTA_EVENT, ModelDelta, RunEvent
from agentrun.sse_wire import SseDecoder, SseMessage
from cli.errors import ApiRefused, CliError
from cli.event_json import read_delta, read_event

STREAM_RECONNECTS = 5
"""Consecutive failed reconnects before `stream_events` gives up."""


@dataclass(frozen=True)
class StreamedEvent:
    """A durable run event from the stream."""

    wire: dict[str, Any]
    """The event's JSON as sent (what `--json` prints)."""
    event: RunEvent | None
    """None when this CLI cannot read it (a newer server's event)."""


@dataclass(frozen=True)
class StreamedDelta:
    """A token delta from the stream: live output, not a durable event."""

    wire: dict[str, Any]
    """The delta's JSON as sent plus ``"type": "model.delta"`` (what `--json` prints)."""
    delta: ModelDelta | None
    """None when this CLI cannot read it (a newer server's delta)."""


StreamItem = StreamedEvent | StreamedDelta


class ApiClient:
    def __init__(self, base_url: str, actor: str | None, timeout: float = 30.0) -> None:
        headers = {"X-Agentrun-Actor": actor} if actor else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        ok: Sequence[int] = (200, 201),
        **kw: Any,
    ) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach the agentrun API at {self.base_url} ({type(exc).__name__}); "
                "is `agentrun api` running? (set AGENTRUN_API_URL to point elsewhere)"
            ) from None
        if resp.status_code not in ok:
            raise ApiRefused(_problem_text(resp), resp.status_code)
        return resp.json()

    def stream_events(self, run_id: str, after: int) -> Iterator[StreamItem]:
        """Follow the SSE stream, reconnecting with `Last-Event-ID` if it drops.

        Yields durable events and token deltas, in the order the API sent them,
        until the API ends the stream (the run is over).
        """
        cursor = str(after)
        failures = 0
        while True:
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/runs/{run_id}/events/stream",
                    headers={"Accept": "text/event-stream", "Last-Event-ID": cursor},
                    timeout=httpx.Timeout(30.0, read=None),
                ) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        raise ApiRefused(_problem_text(resp), resp.status_code)
                    failures = 0
                    for sse in _sse_messages(resp.iter_lines()):
                        if sse.event == "end":
                            return
                        if sse.id is not None:
                            cursor = sse.id
                        yield _stream_item(sse)
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                if failures > STREAM_RECONNECTS:
                    raise CliError(f"lost the event stream of {run_id}; retry later") from None
                time.sleep(min(2.0, 0.2 * 2**failures))


def _stream_item(sse: SseMessage) -> StreamItem:
    data = json.loads(sse.data)
    if sse.event == DELTA_EVENT:
        return StreamedDelta(wire={"type": DELTA_EVENT, **data}, delta=read_delta(data))
    return StreamedEvent(wire=data, event=read_event(data))


def _sse_messages(lines: Iterator[str]) -> Iterator[SseMessage]:
    decoder = SseDecoder()
    for line in lines:
        if (message := decoder.line(line)) is not None:
            yield message


def _problem_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:300]}"
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title") or ""
        text = f"HTTP {resp.status_code} {body.get('title', '')}: {detail}"
        if body.get("run_status"):
            text += f" (run status: {body['run_status']})"
        return text
    return f"HTTP {resp.status_code}: {body}"
