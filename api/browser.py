"""Browser safety: what a web page on another site can make a browser send us, refused.

    app.add_middleware(BrowserGuard, allowed_hosts=[...], cors_origins=[...],
                       path_origins={"/codec/": [...]})

A browser will send requests to `http://127.0.0.1:8080` on behalf of any site it
visits. Three rules keep such requests from doing anything:

* **Host allow-list** (`AGENTRUN_API_ALLOWED_HOSTS`, ports ignored; `*` allows
  any): a DNS-rebinding page reaches the API under its own host name, which is not
  on the list → 400 `host-not-allowed`.
* **Origin check**: a state-changing request (POST, PUT, PATCH, DELETE) whose
  `Origin` is neither the API's own (same host and port) nor a configured CORS
  origin (`AGENTRUN_API_CORS_ORIGINS`) → 403 `origin-not-allowed`. CORS itself is
  Starlette's `CORSMiddleware`, installed only when origins are configured: closed
  by default, so no `Access-Control-Allow-Origin` is ever sent. Some origins are
  allowed under one path prefix only (`path_origins`): the Temporal Web UI's
  (`AGENTRUN_CODEC_CORS_ORIGINS`) on the codec routes, `/codec/…`.
* **JSON-only bodies**: a request body, or any declared `Content-Type`, that is not
  JSON → 415. An HTML form can only send `application/x-www-form-urlencoded`,
  `multipart/form-data` or `text/plain`, none of which is accepted, so a "simple"
  cross-site request (one without a CORS preflight) can never change state.

This module must not: authenticate (`api.deps`) or read a request body.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import CALL_RECORD, CallRecord
from api.errors import ApiError, Forbidden, InvalidHeader, UnsupportedMediaType, render_problem

__all__ = ["STATE_CHANGING", "BrowserGuard", "host_name", "is_json"]

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def host_name(host_header: str) -> str:
    """The host of a `Host` header without its port (`[::1]:80` → `[::1]`), lowercased."""
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end >= 0 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_json(content_type: str) -> bool:
    """`application/json` or any `application/*+json`, parameters ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BrowserGuard:
    """The three rules above, before any route (or authentication) runs."""

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: list[str],
        cors_origins: list[str],
        path_origins: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed_hosts = {host_name(h) for h in allowed_hosts if h != "*"}
        # `[::1]` and `::1` name the same host; a Host header always brackets it.
        self.allowed_hosts |= {f"[{h}]" for h in self.allowed_hosts if ":" in h and "[" not in h}
        self.cors_origins = {o.rstrip("/").lower() for o in cors_origins}
        self.path_origins = {
            prefix: {o.rstrip("/").lower() for o in origins}
            for prefix, origins in (path_origins or {}).items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        error = self._refusal(scope["method"], headers, str(scope.get("path", "")))
        if error is not None:
            record = scope.get(CALL_RECORD)
            if isinstance(record, CallRecord):  # audited as an attempt (api.audit_trail)
                record.refused = error.kind
            response = render_problem(scope.get("path", ""), error)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, method: str, headers: dict[str, str], path: str) -> ApiError | None:
        host = headers.get("host", "")
        if not self.any_host and host_name(host) not in self.allowed_hosts:
            return InvalidHeader(
                f"Host {host!r} is not one this API answers to; operators list the names "
                "it is reached by in AGENTRUN_API_ALLOWED_HOSTS",
                kind="host-not-allowed",
            )
        if method not in STATE_CHANGING:
            return None
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, host, path):
            return Forbidden(
                f"state-changing requests from the web origin {origin!r} are refused; "
                "operators allow browser front ends in AGENTRUN_API_CORS_ORIGINS",
                kind="origin-not-allowed",
            )
        content_type = headers.get("content-type")
        has_body = headers.get("content-length", "0") not in ("", "0") or (
            "transfer-encoding" in headers
        )
        if (content_type is not None and not is_json(content_type)) or (
            has_body and content_type is None
        ):
            return UnsupportedMediaType(
                "request bodies must be JSON: send `Content-Type: application/json`"
            )
        return None

    def _origin_allowed(self, origin: str, host: str, path: str) -> bool:
        normalised = origin.rstrip("/").lower()
        if normalised in self.cors_origins:
            return True
        if any(
            path.startswith(prefix) and normalised in origins
            for prefix, origins in self.path_origins.items()
        ):
            return True
        # The API's own pages (the docs' "Try it out"): same host and port.
        return urlsplit(normalised).netloc == host.lower() and normalised != "null"
