"""The HTTP round trips both remote providers make, with errors classified.

Kept separate so that the OpenAI-compatible and the Anthropic provider cannot
drift in how they treat timeouts, error statuses and unreadable bodies, whether
the reply comes as one JSON body (:func:`post_json`) or as a server-sent event
stream (:func:`stream_json`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from typing import Any, Protocol

import httpx

from activities.models.errors import (
    BadResponseError,
    IncompleteStreamError,
    model_error,
    stream_error,
)
from agentrun.contracts import Delta, DeltaSink
from agentrun.sse_wire import SseDecoder


def make_client(
    *,
    base_url: str,
    headers: dict[str, str],
    timeout: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An AsyncClient that never retries (Temporal does) and never follows redirects.

    Redirects are refused because following one would resend the API key header to
    wherever the redirect points. The connect timeout is capped at 10 s: a server
    that does not accept a connection in that time is down, however slow the model.
    """
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/",
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        follow_redirects=False,
        transport=transport,
    )


async def post_json(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    *,
    provider: str,
    secrets: Sequence[str | None],
) -> dict[str, Any]:
    """POST ``body`` and return the decoded JSON object, or raise a classified error."""
    try:
        response = await client.post(path, json=body)
    except httpx.HTTPError as exc:
        raise model_error(exc, provider=provider, secrets=secrets) from exc
    if not response.is_success:
        # 3xx lands here too: redirects are not followed, see make_client.
        raise model_error(response, provider=provider, secrets=secrets)
    try:
        data = response.json()
    except ValueError as exc:
        bad = BadResponseError(f"HTTP {response.status_code} body is not JSON")
        raise model_error(bad, provider=provider, secrets=secrets) from exc
    if not isinstance(data, dict):
        bad = BadResponseError(f"HTTP {response.status_code} body is not a JSON object")
        raise model_error(bad, provider=provider, secrets=secrets)
    return data


def bad_shape(provider: str, what: str, secrets: Sequence[str | None]) -> Exception:
    """The classified error for a JSON body that lacks what the API promises."""
    return model_error(BadResponseError(what), provider=provider, secrets=secrets)


async def parse_sse(lines: AsyncIterable[str]) -> AsyncGenerator[tuple[str, str], None]:
    """Server-sent events as ``(event name, data)`` pairs, from a response's lines
    (see :mod:`agentrun.sse_wire`). One leniency: an event still pending when the
    stream ends is dispatched, so a server that omits the blank line after its final
    ``data: [DONE]`` is not mistaken for a truncated stream.
    """
    decoder = SseDecoder()
    async for raw in lines:
        if (message := decoder.line(raw)) is not None:
            yield message.event, message.data
    if (message := decoder.end()) is not None:
        yield message.event, message.data


def _event_object(
    event: str, data: str, provider: str, secrets: Sequence[str | None]
) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if event == "error" or (isinstance(value, dict) and isinstance(value.get("error"), dict)):
        raise stream_error(data if value is None else value, provider=provider, secrets=secrets)
    if not isinstance(value, dict):
        raise bad_shape(provider, f"stream event {event!r} is not a JSON object", secrets)
    return value


class StreamFold(Protocol):
    """Folds a provider's stream events back into the JSON body of a non-streamed reply."""

    def add(self, event: str, data: dict[str, Any]) -> list[Delta]:
        """Take one event; return its fragments (raise KeyError & co. on a bad shape)."""
        ...

    def result(self) -> dict[str, Any]:
        """The body a non-streamed call for the same reply would have returned
        (raise :class:`~activities.models.errors.IncompleteStreamError` if the events
        seen do not make a whole reply)."""
        ...


async def stream_json(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    *,
    provider: str,
    secrets: Sequence[str | None],
    is_end: Callable[[str, str], bool],
    fold: StreamFold,
    sink: DeltaSink,
) -> dict[str, Any]:
    """:func:`post_json` for a streamed reply: fragments go to ``sink`` as they arrive.

    POSTs ``body`` (which asks for a stream), reads the server-sent events, hands
    each to ``fold`` and its fragments to ``sink``, and returns ``fold.result()``:
    the reply's body as :func:`post_json` would have returned it, so a provider
    builds its ``ModelReply`` from either the same way. ``is_end(event, data)``
    recognises the terminator (OpenAI's ``data: [DONE]``, Anthropic's
    ``message_stop``).

    Failures are classified like :func:`post_json`'s: an error status (its body
    read first, for the excerpt), transport errors and timeouts (also mid-stream),
    and, as retryable bad responses, a stream that ends incomplete (before its
    terminator, or with a terminator ``fold.result()`` refuses), an event that is
    not a JSON object or that ``fold`` cannot read. An error event
    inside the stream is classified by its type
    (:func:`~activities.models.errors.stream_error`).
    """
    try:
        async with client.stream("POST", path, json=body) as response:
            if not response.is_success:
                with contextlib.suppress(httpx.HTTPError):
                    await response.aread()  # the error body, for the excerpt
                raise model_error(response, provider=provider, secrets=secrets)
            async for event, data in parse_sse(response.aiter_lines()):
                if is_end(event, data):
                    try:
                        return fold.result()
                    except IncompleteStreamError as exc:
                        raise model_error(exc, provider=provider, secrets=secrets) from exc
                value = _event_object(event, data, provider, secrets)
                try:
                    deltas = fold.add(event, value)
                except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
                    what = f"unexpected shape of stream event {event!r} ({exc})"
                    raise bad_shape(provider, what, secrets) from exc
                for delta in deltas:
                    sink(delta)
    except httpx.HTTPError as exc:
        raise model_error(exc, provider=provider, secrets=secrets) from exc
    incomplete = IncompleteStreamError("the connection closed before the stream's terminator")
    raise model_error(incomplete, provider=provider, secrets=secrets)
