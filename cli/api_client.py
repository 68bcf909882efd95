"""The CLI's HTTP client of the REST API, including its SSE event stream.

    api = ApiClient("http://127.0.0.1:8080", resolve_credentials(None, url))
    run = api.request("GET", f"/v1/runs/{run_id}")
    for item in api.stream_events(run_id, after=0):
        ...

Design (why it looks like this): the CLI is synchronous (httpx), one command per
process, so a plain blocking client is the simplest thing that works. Every
failure becomes a :class:`~cli.errors.CliError` whose message says how to fix
it (start the API, point `AGENTRUN_API_URL` elsewhere) or carries the API's
problem detail. The stream reconnects with `Last-Event-ID`, so a dropped
connection resumes where it stopped instead of replaying the run.

Identity comes from the key (`Authorization: Bearer`, see `cli.credentials`):
with a key the client names an end user only through `X-Agentrun-On-Behalf-Of`
(keys with the `act_as` scope), never `X-Agentrun-Actor`, which an API with
authentication refuses; without a key (an API with `AGENTRUN_AUTH=off`) it
still names the actor as before. A 401 says where the CLI looked for a key and
how to get one; a 403 names the role the API asked for.

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
from cli.credentials import Credentials
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
    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None = None,
        *,
        on_behalf_of: str | None = None,
        actor: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        """`on_behalf_of`: the end user a key with `act_as` acts for; `actor`: who is
        acting when there is no key (an API without authentication)."""
        self.credentials = credentials or Credentials(None, None)
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=auth_headers(self.credentials.api_key, on_behalf_of, actor),
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        ok: Sequence[int] = (200, 201, 204),
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
            raise self._refused(resp)
        return resp.json() if resp.content else None

    def _refused(self, resp: httpx.Response) -> ApiRefused:
        text = _problem_text(resp) + refusal_hint(resp, self.credentials)
        return ApiRefused(text, resp.status_code)

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
                        raise self._refused(resp)
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


def auth_headers(
    api_key: str | None, on_behalf_of: str | None, actor: str | None
) -> dict[str, str]:
    """The identity headers of every request: the key (and the end user it acts for),
    or, without a key, the actor an API without authentication records."""
    if api_key:
        headers = {"Authorization": f"Bearer {api_key}"}
        if on_behalf_of:
            headers["X-Agentrun-On-Behalf-Of"] = on_behalf_of
        return headers
    name = on_behalf_of or actor
    return {"X-Agentrun-Actor": name} if name else {}


UNAUTHENTICATED = 401
FORBIDDEN = 403
ACTOR_HEADER_REFUSED = "actor-header-not-accepted"
"""The problem type of a 400 for `X-Agentrun-Actor` sent to an API that wants a key."""
HOW_TO_GET_A_KEY = (
    "get one with `agentrun keys create --tenant T --role operator --subject NAME` "
    "(run with an admin key), or use the dev stack's admin key in .state/admin.key"
)


def refusal_hint(resp: httpx.Response, credentials: Credentials) -> str:
    """A line to add to the API's refusal: how to authenticate, or the role needed."""
    body = _problem_body(resp)
    problem = str(body.get("type", "")).rstrip("/").rsplit("/", 1)[-1]
    if resp.status_code == UNAUTHENTICATED or (
        credentials.api_key is None and problem == ACTOR_HEADER_REFUSED
    ):
        if credentials.api_key is None:
            looked = ", ".join(credentials.looked_at) or "nowhere"
            return f"\nhint: no API key found (looked at {looked}); {HOW_TO_GET_A_KEY}"
        return (
            f"\nhint: the API refused the key from {credentials.source} (unknown, revoked "
            f"or expired); {HOW_TO_GET_A_KEY}"
        )
    if resp.status_code == FORBIDDEN:
        return _role_hint(body)
    return ""


def _role_hint(problem: dict[str, Any]) -> str:
    """The role a 403 asks for: `required_role`, or the roles that hold its
    `required_permission` (the table in `accounts.roles`)."""
    if role := problem.get("required_role"):
        return f"\nhint: this needs a key with the role {role}"
    # Here, not at the top: importing `accounts` loads SQLAlchemy (~1 s), which
    # every command would otherwise pay at start-up for the sake of a 403.
    from accounts.roles import Permission, Role, allows

    try:
        permission = Permission(str(problem.get("required_permission", "")))
    except ValueError:
        return ""
    roles = [role.value for role in Role if allows(role, permission)]
    return f"\nhint: this needs a key with the role {' or '.join(roles)}"


def _problem_body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


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
