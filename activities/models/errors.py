"""Provider failures translated into Temporal retry postures, in one place.

Every model provider (and the scripted test double, so that tests see exactly
what production sees) turns its failures into an ``ApplicationError`` here:

==========================================  ==================  =============
failure                                     type                retryable
==========================================  ==================  =============
HTTP 429                                    ModelRateLimited    yes
HTTP 408, 409, 5xx, 529 (overloaded)        ModelUnavailable    yes
connection refused/reset, bad 2xx body      ModelUnavailable    yes
a stream that ends incomplete               ModelUnavailable    yes
HTTP 500 again on attempt >= 3              ModelServerError    no
httpx timeouts (connect, read, write, pool) ModelTimeout        yes
HTTP 3xx (redirects are never followed)     ModelConfigError    no
HTTP 401, 403                               ModelAuthError      no
HTTP 404                                    ModelNotFound       no
any other 4xx                               ModelBadRequest     no
bad configuration (URL, key, model, script) ModelConfigError    no
an error event inside a 2xx stream          as its status       as its status
==========================================  ==================  =============

An error event in a stream (Anthropic's ``overloaded_error``, say) is classified
as the HTTP status its type stands for (see ``STREAM_ERROR_STATUS``).

A plain HTTP 500 is retryable at first, but servers also answer 500 to a request
they cannot process (llama-cpp-python does for a message shape or a tool choice it
does not support), and the same body fails again however often it is sent; so
:func:`bounded_attempts` turns a 500 on attempt ``SERVER_ERROR_ATTEMPTS`` or later
into non-retryable ``ModelServerError`` instead of retrying it for minutes. 502,
503 and 504 (a gateway, a server that is starting or overloaded) stay retryable.

Retryable errors carry ``next_retry_delay`` when the server sent ``Retry-After``
(or OpenAI's ``retry-after-ms``), so Temporal waits as long as the provider asked.

This module must never put request headers or API keys into a message: a message
lands in workflow history, in the Web UI and in logs. It only quotes the status
and a short excerpt of the provider's error *body*, and it scrubs that excerpt of
the caller's secrets and of anything shaped like an API key (providers do echo
keys back, e.g. "Incorrect API key provided: sk-...").
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import httpx
from temporalio.exceptions import ApplicationError

__all__ = [
    "EXCERPT_CHARS",
    "SERVER_ERROR_ATTEMPTS",
    "STREAM_ERROR_STATUS",
    "BadResponseError",
    "IncompleteStreamError",
    "bounded_attempts",
    "config_error",
    "error_for_status",
    "model_error",
    "retry_after",
    "stream_error",
]

EXCERPT_CHARS = 300
"""How much of a provider's error body a message may quote."""

_KEY_SHAPES = re.compile(
    r"(?:sk|pk|rk)-[A-Za-z0-9_\-*]{8,}"  # OpenAI / Anthropic style keys ("sk-ant-...")
    r"|(?i:bearer)\s+[A-Za-z0-9._\-~+/=]{8,}"  # an Authorization header echoed back
)


class BadResponseError(Exception):
    """A provider answered 2xx with a body we cannot read (not JSON, missing fields).

    Raised inside the providers and classified as retryable ``ModelUnavailable``:
    garbage from a successful status is almost always a proxy or an overloaded
    server, and if it persists Temporal's retry policy gives up.
    """


class IncompleteStreamError(BadResponseError):
    """A 2xx stream that ended before the reply did: the connection closed before the
    terminator, or the terminator came without a finish reason (llama-cpp-python ends
    a stream it abandons for a newer request with ``[DONE]``). Retryable: the same
    request, asked again, gets the whole reply."""


SERVER_ERROR_ATTEMPTS = 3
"""The activity attempt from which an HTTP 500 is taken for a request the server will
never accept (see :func:`bounded_attempts`)."""


def bounded_attempts(error: ApplicationError, attempt: int) -> ApplicationError:
    """``error``, or non-retryable ``ModelServerError`` for a repeated HTTP 500.

    A 500 on attempt ``SERVER_ERROR_ATTEMPTS`` or later has failed every time the
    same body was sent: a request-validation failure on the server's side, not an
    outage (those answer 502/503/504, or fail to connect).
    """
    details = error.details[0] if error.details else None
    status = details.get("status") if isinstance(details, dict) else None
    if status != 500 or error.non_retryable or attempt < SERVER_ERROR_ATTEMPTS:
        return error
    return ApplicationError(
        f"{error.message} (the server failed this request on {attempt} attempts in a row, "
        "so it will not accept it: check that the server supports this request, e.g. "
        "native tool calling or AGENTRUN_TOOL_CHOICE, and its log)",
        *error.details,
        type="ModelServerError",
        non_retryable=True,
    )


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove the given secrets and key-shaped tokens from ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEY_SHAPES.sub("[redacted]", text)


def body_excerpt(body: str, secrets: Iterable[str | None] = ()) -> str:
    """A one-line, ≤ EXCERPT_CHARS summary of an error body, scrubbed of secrets.

    OpenAI-style (``{"error": {"message": ...}}``) and Anthropic-style
    (``{"type": "error", "error": {"type": ..., "message": ...}}``) bodies are
    reduced to their message; anything else is quoted as text.
    """
    text = body
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error", parsed)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            kind = err.get("type")
            text = f"{kind}: {err['message']}" if isinstance(kind, str) else err["message"]
        elif isinstance(err, str):
            text = err
        elif isinstance(parsed.get("message"), str):
            text = parsed["message"]
    # Scrub before truncating, so a key cut in half by the limit cannot survive.
    text = scrub(" ".join(text.split()), secrets)
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 1] + "…"
    return text


def retry_after(headers: httpx.Headers | None, *, now: datetime | None = None) -> timedelta | None:
    """How long the server asked us to wait: ``retry-after-ms``, then ``Retry-After``.

    ``Retry-After`` may be delta-seconds or an HTTP date. Unparseable or negative
    values are ignored (Temporal's own backoff applies).
    """
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = -1
        if value >= 0:
            return timedelta(seconds=value)
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds < 0:
        return None
    return timedelta(seconds=seconds)


def _classify(status: int) -> tuple[str, bool, str]:
    """THE classification table for HTTP statuses: ``(type, retryable, hint)``."""
    if status == 429:
        return "ModelRateLimited", True, "rate limited"
    if status in (408, 409) or status >= 500:
        return "ModelUnavailable", True, "provider unavailable"
    if status in (401, 403):
        return (
            "ModelAuthError",
            False,
            "authentication failed: check the provider's API key setting",
        )
    if status == 404:
        return "ModelNotFound", False, "not found: check the model name and the provider's base URL"
    if 400 <= status < 500:
        return "ModelBadRequest", False, "request rejected"
    if 300 <= status < 400:
        # Redirects are never followed (that would resend the key elsewhere).
        return (
            "ModelConfigError",
            False,
            "redirected: set the provider's base URL to the final address",
        )
    return "ModelUnavailable", True, "unexpected status"


def error_for_status(
    status: int,
    *,
    provider: str,
    excerpt: str = "",
    retry_delay: timedelta | None = None,
) -> ApplicationError:
    """An HTTP error status, classified (see the module docstring).

    The scripted provider calls this too, so a simulated 503 is indistinguishable
    from a real one.
    """
    kind, retryable, hint = _classify(status)
    message = f"{provider}: HTTP {status} {hint}"
    if excerpt:
        message += f": {excerpt}"
    return ApplicationError(
        message,
        {"status": status},
        type=kind,
        non_retryable=not retryable,
        next_retry_delay=retry_delay if retryable else None,
    )


STREAM_ERROR_STATUS = {
    # Anthropic's error types (https://docs.anthropic.com/en/api/errors)
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
    # OpenAI-compatible servers
    "rate_limit_exceeded": 429,
    "server_error": 500,
}
"""The HTTP status each error type stands for when a server reports it *inside* a
2xx event stream (the status line was sent before the failure)."""


def stream_error(
    payload: object, *, provider: str, secrets: Iterable[str | None] = ()
) -> ApplicationError:
    """An error event inside a streamed response, classified like the status it stands for.

    Anthropic sends ``{"type": "error", "error": {"type": "overloaded_error", ...}}``;
    OpenAI-compatible servers send ``{"error": {"message": ..., "type": ..., "code": ...}}``
    (llama.cpp puts the HTTP status in ``code``). A numeric ``code`` wins, then the
    type; an unknown error is retryable ``ModelUnavailable`` (the server failed
    mid-reply, which is what a 5xx means).
    """
    error = payload.get("error") if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else {}
    code, kind = error.get("code"), error.get("type")
    if isinstance(code, int) and 400 <= code <= 599:
        status = code
    else:
        named = kind if isinstance(kind, str) and kind in STREAM_ERROR_STATUS else code
        status = STREAM_ERROR_STATUS.get(named, 500) if isinstance(named, str) else 500
    error_type, retryable, hint = _classify(status)
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return ApplicationError(
        f"{provider}: error in the response stream, {hint}: {body_excerpt(text, secrets)}",
        {"status": status, "stream_error": kind if isinstance(kind, str) else None},
        type=error_type,
        non_retryable=not retryable,
    )


def config_error(provider: str, message: str) -> ApplicationError:
    """A permanent configuration problem; ``message`` says how to fix it."""
    return ApplicationError(f"{provider}: {message}", type="ModelConfigError", non_retryable=True)


def model_error(
    source: httpx.Response | BaseException,
    *,
    provider: str,
    secrets: Iterable[str | None] = (),
) -> ApplicationError:
    """Classify an error response or a client-side exception from a provider call.

    ``secrets`` are the values the provider was configured with (API keys); they
    are scrubbed from everything quoted. Raise the result ``from`` the original
    exception so the cause stays in the worker's logs (the cause's message is
    quoted only after scrubbing).
    """
    secrets = list(secrets)
    if isinstance(source, httpx.Response):
        try:
            body = source.text
        except (httpx.ResponseNotRead, UnicodeDecodeError):
            body = ""
        return error_for_status(
            source.status_code,
            provider=provider,
            excerpt=body_excerpt(body, secrets),
            retry_delay=retry_after(source.headers),
        )
    detail = scrub(f"{type(source).__name__}: {source}", secrets)[:EXCERPT_CHARS]
    if isinstance(source, httpx.TimeoutException):
        return ApplicationError(
            f"{provider}: model call timed out ({detail}); raise "
            "AGENTRUN_MODEL_TIMEOUT_SECONDS if the model is just slow",
            type="ModelTimeout",
        )
    if isinstance(source, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return config_error(provider, f"invalid base URL ({detail})")
    if isinstance(source, httpx.TransportError):
        return ApplicationError(
            f"{provider}: cannot reach the model server ({detail})", type="ModelUnavailable"
        )
    if isinstance(source, IncompleteStreamError):
        return ApplicationError(
            f"{provider}: the response stream ended incomplete ({detail}); retrying",
            type="ModelUnavailable",
        )
    if isinstance(source, BadResponseError):
        return ApplicationError(
            f"{provider}: unreadable response ({detail}); check the provider's base URL",
            type="ModelUnavailable",
        )
    # Anything else is a bug on our side, not the provider's: let Temporal retry it
    # (a deploy can fix a bug) but make the type obvious in the UI.
    return ApplicationError(f"{provider}: unexpected error ({detail})", type="ModelUnavailable")
