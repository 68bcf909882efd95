"""Reading the server-sent events wire format, for every SSE client in the project.

The model providers read their vendors' streams with it and the CLI reads the
API's. It follows the WHATWG event-stream rules: `data:` lines accumulate (joined
with newlines), `event:` names the event (default `message`), `id:` is kept with
the event it belongs to, a blank line dispatches, `:` lines are comments, one
space after the colon is dropped, a leading BOM is ignored, and an event without
data is not dispatched. `retry:` and unknown fields are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SseDecoder", "SseMessage"]


@dataclass(frozen=True)
class SseMessage:
    event: str
    data: str
    id: str | None = None
    """The `id:` sent with this event, if any (not carried over from earlier ones)."""


class SseDecoder:
    """Feed it a stream's lines one by one; it returns each event as it completes.

    >>> decoder = SseDecoder()
    >>> [decoder.line(x) for x in ["id: 7", "data: hi", ""]][-1]
    SseMessage(event='message', data='hi', id='7')
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._first = True

    def line(self, raw: str) -> SseMessage | None:
        line = raw.removeprefix("\ufeff") if self._first else raw
        self._first = False
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None

    def end(self) -> SseMessage | None:
        """The event still pending when the stream ended, if any. The spec drops it;
        a reader that knows its server may omit the final blank line can take it."""
        return self._dispatch()

    def _dispatch(self) -> SseMessage | None:
        message = (
            SseMessage(self._event or "message", "\n".join(self._data), self._id)
            if self._data
            else None
        )
        self._event, self._data, self._id = "", [], None
        return message
