"""The one HTTP round trip both remote providers make, with errors classified.

Kept separate so that the OpenAI-compatible and the Anthropic provider cannot
drift in how they treat timeouts, error statuses and unreadable bodies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from activities.models.errors import BadResponseError, model_error


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
