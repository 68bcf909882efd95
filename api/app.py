"""The agentrun REST API: a thin FastAPI facade over the Temporal client.

    app = create_app(load_settings())          # connects to Temporal on startup
    app = create_app(settings, client=client)  # tests: reuse an existing client

The lifespan holds the one Temporal client (pydantic data converter and the
encrypting payload codec, `agentrun.temporal`), the
artifact store the event segments and artifacts are read from, and the accounts
database (opened, migrated and bootstrapped at start-up: `api.accounts_conn`);
all are injected into routes through `api.deps`. The API never changes run state
itself: it starts workflows, sends updates and runs queries.

Every request passes, outermost first: `api.browser.BrowserGuard` (Host
allow-list, Origin check, JSON-only bodies), the codec routes' CORS for the
Temporal Web UI (`api.routes.codec.CodecCors`), CORS (only for configured origins),
the body-size limit, `api.audit_trail.CallTrail` (request id, rate-limit headers,
an audit entry per state change), then `api.deps.authorize` (an app-wide
dependency: the route's rule in `api.auth.RULES`, the key, its rate, its role).
Around all of them, `api.log_context.LogContext` names the request's run and tenant
on every log line it writes (uvicorn's access line included).

Serve it with `python -m api.server` (`api.server` holds the uvicorn settings,
keep-alive included). `uvicorn --factory api.app:app_from_env` works too, but then
pass `--timeout-keep-alive` yourself: uvicorn's 5 s default races client pools.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from accounts.ratelimit import RateLimiter
from agentrun.config import Settings, load_settings
from api.accounts_conn import AccountsConnection
from api.admission import document as document_admission
from api.audit_trail import REQUEST_ID_HEADER, CallTrail
from api.auth import rule_for_route
from api.browser import BrowserGuard
from api.deps import (
    ON_BEHALF_HEADER,
    ApiState,
    PayloadCodecSource,
    TemporalConnection,
    authorize,
    set_api_state,
)
from api.docs_page import install_docs_pages
from api.errors import (
    PROBLEM_CONTENT_TYPE,
    PayloadTooLarge,
    Problem,
    install_error_handlers,
    render_problem,
)
from api.feed import RunFeeds
from api.log_context import LogContext
from api.routes import (
    admin,
    artifacts,
    audit,
    codec,
    control,
    events,
    health,
    metrics,
    runs,
    secrets,
    usage,
)
from api.routes.codec import CODEC_PATH_PREFIX, CodecCors
from api.schemas import SseMessage
from api.service import SegmentReader
from store.backends import open_tenant_stores
from store.delta_log import open_delta_store
from telemetry import setup_telemetry
from telemetry.tracing import instrument_app

log = logging.getLogger("agentrun.api")

API_VERSION = "1.0.0"
BEARER_SCHEME = "apiKey"
DESCRIPTION = """\
Launch, follow and control durable AI agent runs. Each run is a Temporal
workflow; this API starts it, queries it and sends it updates.

Errors are `application/problem+json` documents (RFC 9457) with `type`, `title`,
`status`, `detail` and `instance`. See `docs/api.md` for a curl session.
"""


class BodySizeLimit:
    """Refuse request bodies over `limit` bytes with a 413 problem, before any route
    reads them (checks `Content-Length`, and counts chunked bodies as they arrive)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._reject(scope, receive, send)
            return
        if declared is None and b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, send)
            return
        # Buffer the (bounded) body, then replay it to the app.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > self.limit:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Rendered here, not raised: the middleware runs outside the app's
        # exception handlers. `Connection: close` because the rest of the body
        # is never read.
        error = PayloadTooLarge(
            f"request bodies are limited to {self.limit} bytes (AGENTRUN_API_MAX_BODY_BYTES)"
        )
        response = render_problem(scope.get("path", ""), error, headers={"Connection": "close"})
        await response(scope, receive, send)


def create_app(settings: Settings, client: Client | None = None) -> FastAPI:
    conn = TemporalConnection(settings, client)
    accounts = AccountsConnection(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auth == "off":
            log.warning(
                "AGENTRUN_AUTH=off: THE API HAS NO AUTHENTICATION. Every caller is an admin "
                "of tenant %r. Use it on a loopback address for development only.",
                settings.dev_tenant,
            )
        await asyncio.to_thread(accounts.open)
        if client is None:
            try:
                await conn.get()
            except Exception:  # keep serving: /readyz says 503 until Temporal is back
                log.warning("Temporal unreachable at startup; will retry on demand")
        try:
            yield
        finally:
            accounts.close()
            if deltas is not None:
                await deltas.aclose()

    app = FastAPI(
        title="agentrun",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by `api.docs_page` from the installation: the defaults load from a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by `api.docs_page`, behind the access check
        # Every route: its rule, then (unless public) the key, its rate and its role.
        dependencies=[Depends(authorize)],
    )
    store = open_tenant_stores(settings)
    segments = SegmentReader(store)
    deltas = open_delta_store(settings)  # local files, or Redis shared with the workers
    state = ApiState(
        settings=settings,
        temporal=conn,
        store=store,
        segments=segments,
        feeds=RunFeeds(segments, settings, shared=settings.api_sse_shared_feed),
        deltas=deltas,
        accounts=accounts,
        rate_limiter=RateLimiter(settings.api_rate_limit_per_minute, settings.api_rate_limit_burst),
        codec=PayloadCodecSource(settings),
    )
    set_api_state(app, state)
    install_error_handlers(app)
    app.include_router(health.router)
    # The order of the routers is the order of the operations in /openapi.json.
    for router in (
        runs.router,
        events.router,
        control.router,
        artifacts.router,
        usage.router,
        secrets.router,
        admin.router,
        audit.router,
        codec.router,
        metrics.router,
    ):
        app.include_router(router)
    install_docs_pages(app)
    # Added innermost first: the last one added sees a request first.
    app.add_middleware(BodySizeLimit, limit=settings.api_max_body_bytes)
    if settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api_cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Last-Event-ID",
                ON_BEHALF_HEADER,
            ],
            expose_headers=[
                "Location",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                REQUEST_ID_HEADER,
            ],
        )
    # The codec routes' own CORS, for the Temporal Web UI (`api.routes.codec`).
    app.add_middleware(
        CodecCors, origins=[*settings.codec_cors_origins, *settings.api_cors_origins]
    )
    app.add_middleware(
        BrowserGuard,
        allowed_hosts=settings.api_allowed_hosts,
        cors_origins=settings.api_cors_origins,
        path_origins={CODEC_PATH_PREFIX: settings.codec_cors_origins},
    )
    # Outermost: every answer, the browser guard's refusals too, gets a request id,
    # and refused state changes are audited as attempts.
    app.add_middleware(CallTrail, accounts=accounts, system_tenant=settings.dev_tenant)
    # Around everything: each log line a request writes names its run and tenant.
    app.add_middleware(LogContext)
    # Outside even that (the instrumentation wraps the whole stack): the request's
    # server span, the root of the trace of a run it launches (`telemetry.tracing`).
    if setup_telemetry("agentrun-api", settings).tracing.enabled:
        instrument_app(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = _openapi(app)
            document_admission(schema, settings)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every error answer as `application/problem+json`, the
    422/500/503 answers every route can give listed on every operation, and the
    bearer-key scheme (with its 401/403/429 answers) on every operation that needs a
    key."""
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    generic = {
        "422": "Invalid request (the field errors are listed)",
        "500": "Unexpected error (logged; no details are exposed)",
        "503": "Temporal or the workers are unreachable",
    }
    keyed = {
        "400": "A header the API refuses (a foreign `Host`, `X-Agentrun-Actor`)",
        "401": "No API key, or a bad, revoked or expired one",
        "403": "The key's role may not do this",
        "429": "Rate limit of the key reached (see `Retry-After`)",
    }
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            rule = rule_for_route(method.upper(), path)
            if rule is None or rule.permission is not None:
                op["security"] = [{BEARER_SCHEME: []}]
                for code, desc in keyed.items():
                    responses.setdefault(code, {"description": desc})
                if method.upper() in ("POST", "PUT", "PATCH", "DELETE"):
                    responses["403"]["description"] += ", or a state change from a foreign `Origin`"
            if "requestBody" in op:
                responses.setdefault("400", {"description": "The body is not parseable JSON"})
                responses.setdefault("413", {"description": "Request body too large"})
                responses.setdefault("415", {"description": "The body is not JSON"})
            for code, desc in generic.items():
                if path in ("/healthz",) and code != "500":
                    continue
                responses.setdefault(code, {"description": desc})
            for code, resp in responses.items():
                if code.isdigit() and int(code) >= 400:
                    resp["content"] = {PROBLEM_CONTENT_TYPE: {"schema": problem_ref}}
            op.setdefault("operationId", f"{method}_{path}")
    schema.setdefault("components", {}).setdefault("schemas", {})
    schema["components"]["securitySchemes"] = {
        BEARER_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key, `ar_<key_id>_<secret>` (docs/api.md, Authentication)",
        }
    }
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    schema["components"]["schemas"]["Problem"] = Problem.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    _add_sse_messages(schema["components"]["schemas"])
    return schema


def _add_sse_messages(components: dict[str, Any]) -> None:
    """`SseMessage` and what it refers to (`ModelDelta`, `StreamEnd` …), which no route
    names as a JSON model: the event-stream contents refer to them. In validation mode,
    so each `data` is a string whose `contentSchema` is the JSON it holds; the models
    FastAPI already listed (the `RunEvent` union and its events) are kept as they are."""
    message = TypeAdapter(SseMessage).json_schema(
        mode="validation", ref_template="#/components/schemas/{model}"
    )
    for name, definition in message.pop("$defs", {}).items():
        components.setdefault(name, definition)
    if "$ref" not in message:
        components["SseMessage"] = message


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory api.app:app_from_env` (reads AGENTRUN_* now)."""
    return create_app(load_settings())
