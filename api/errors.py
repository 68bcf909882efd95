"""One error shape for every 4xx/5xx answer: RFC 9457 problem details.

Exception hierarchy::

    ApiError                      (status, title, detail; rendered as a problem)
    ├── InvalidHeader             400  a header the API refuses (`host-not-allowed`,
    │                                  `actor-header-not-accepted`)
    ├── Unauthenticated           401  no key, a bad, revoked or expired key
    ├── Forbidden                 403  the key's role may not do this; a foreign Origin
    ├── NotFound                  404  unknown run, artifact or route
    ├── Conflict                  409  invalid transition, approval mismatch, key reuse
    ├── PayloadTooLarge           413  body over `api_max_body_bytes` (the body-size
    │                                  middleware renders it with `render_problem`)
    ├── UnsupportedMediaType      415  a request body that is not JSON
    ├── BadRequest                422  a filter, cursor or header the API refuses
    ├── TooManyRequests           429  rate limit, concurrent-run quota, spent budget
    ├── Unavailable               503  Temporal (or a worker) cannot be reached; the
    │                                  artifact store is down or refuses us
    └── UpstreamTimeout           504  a worker did not answer an update in time

Temporal's own errors are translated here too (`RPCError` NOT_FOUND → 404,
UNAVAILABLE/DEADLINE_EXCEEDED → 503), so routes only raise what they mean. The
catch-all handler logs the exception and answers a generic 500: a stack trace
never reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope
from temporalio.service import RPCError, RPCStatusCode

from store.artifacts import ArtifactStoreError

log = logging.getLogger("agentrun.api")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://agentrun.dev/problems/"


class Problem(BaseModel):
    """An RFC 9457 problem document (`application/problem+json`)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "https://agentrun.dev/problems/invalid-transition",
                    "title": "Invalid transition",
                    "detail": "cannot resume a run that is completed",
                    "status": 409,
                    "instance": "/v1/runs/01jbq0m3c8x2v7h9k4n6p8r0s/resume",
                    "run_status": "completed",
                }
            ]
        },
    )
    type: str = Field(description="A URI naming the kind of problem")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str = ""
    instance: str = Field(default="", description="The request path")
    run_status: str | None = Field(
        default=None, description="For conflicts: the run's current status"
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="For validation errors: one entry per invalid field"
    )


class ApiError(Exception):
    status = 500
    title = "Internal server error"
    kind = "internal"

    def __init__(
        self, detail: str = "", *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        """Response headers the problem needs (`WWW-Authenticate`, `Retry-After` …)."""
        self.extra = extra


class _Kinded(ApiError):
    """An error whose problem kind is chosen where it is raised."""

    def __init__(
        self,
        detail: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail, headers=headers, **extra)
        if kind is not None:
            self.kind = kind
            self.title = kind.replace("-", " ").capitalize()


class InvalidHeader(_Kinded):
    status = 400
    title = "Bad request"
    kind = "bad-request"


class Unauthenticated(ApiError):
    status = 401
    title = "Unauthenticated"
    kind = "unauthenticated"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="agentrun"'})


class Forbidden(_Kinded):
    status = 403
    title = "Forbidden"
    kind = "forbidden"


class UnsupportedMediaType(ApiError):
    status = 415
    title = "Unsupported media type"
    kind = "unsupported-media-type"


class TooManyRequests(_Kinded):
    """429 with `Retry-After` (seconds)."""

    status = 429
    title = "Too many requests"
    kind = "rate-limited"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(
            detail, kind=kind, headers={**(headers or {}), "Retry-After": str(retry_after)}, **extra
        )


class NotFound(ApiError):
    status = 404
    title = "Not found"
    kind = "not-found"


class Conflict(ApiError):
    status = 409
    title = "Conflict"
    kind = "conflict"

    def __init__(self, detail: str, *, kind: str = "conflict", **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.kind = kind
        self.title = kind.replace("-", " ").capitalize()


class BadRequest(ApiError):
    status = 422
    title = "Invalid request"
    kind = "validation-error"


class PayloadTooLarge(ApiError):
    status = 413
    title = "Payload too large"
    kind = "payload-too-large"


class Unavailable(ApiError):
    status = 503
    title = "Service unavailable"
    kind = "unavailable"


class UpstreamTimeout(ApiError):
    status = 504
    title = "Timed out"
    kind = "timeout"


def problem_response(
    request_path: str,
    status: int,
    title: str,
    detail: str = "",
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (kind or _kind_for(status)),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request_path,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers)


def render_problem(
    request_path: str, error: ApiError, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The problem document for `error` (also used where no exception handler runs)."""
    return problem_response(
        request_path,
        error.status,
        error.title,
        error.detail,
        kind=error.kind,
        headers={**(error.headers or {}), **(headers or {})} or None,
        **error.extra,
    )


def translate_rpc_error(err: RPCError, what: str = "the run") -> ApiError:
    """Map a Temporal RPC failure to what the client should see."""
    if err.status == RPCStatusCode.NOT_FOUND:
        return NotFound(f"{what} does not exist")
    if err.status in (
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
    ):
        return Unavailable("Temporal is not reachable or overloaded; retry shortly")
    if err.status == RPCStatusCode.INVALID_ARGUMENT:
        return BadRequest(f"Temporal rejected the request: {err.message}")
    log.error("unexpected Temporal error %s: %s", err.status, err.message)
    return ApiError("the request failed in Temporal; see the API logs")


_STATUS_KINDS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    500: "internal",
    503: "unavailable",
}


def _kind_for(status: int) -> str:
    return _STATUS_KINDS.get(status, "http-" + str(status))


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Validation errors without `input`/`ctx`, which may echo data or hold exceptions."""
    return [
        {
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(app: Starlette, scope: Scope) -> list[str]:
    """Every method some route of `app` serves at the path of `scope`, sorted.

    Asks each route whether it would take the request with another method (routes
    of included routers answer for themselves), so no route table is read here."""
    return [
        method
        for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.routes)
    ]


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return render_problem(request.url.path, exc)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else ""
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route matches {request.method} {request.url.path}"
        if exc.status_code == 405:
            # Starlette names the methods of the first route matching the path only
            # (`/v1/runs` is two routes: GET and POST); RFC 9110 wants all of them.
            allowed = allowed_methods(request.app, request.scope)
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.url.path} supports {', '.join(allowed)}, not {request.method}"
        return problem_response(
            request.url.path, exc.status_code, title, detail, headers=headers or None
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _field_errors(exc)
        summary = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
        return problem_response(
            request.url.path,
            422,
            "Invalid request",
            summary or "the request is invalid",
            errors=errors,
        )

    async def rpc_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RPCError)
        return await api_error(request, translate_rpc_error(exc))

    async def store_error(request: Request, exc: Exception) -> JSONResponse:
        # The S3 artifact store down or refusing us: 503 with the store's own message
        # (bucket and operation, never a credential), not a 500.
        log.error("artifact store error on %s %s: %s", request.method, request.url.path, exc)
        return await api_error(request, Unavailable(str(exc)))

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        # The accounts database locked or down (SQLite under a burst, PostgreSQL
        # restarting): a retry helps, so 503 with Retry-After rather than a 500. The
        # driver's message (statement, parameters, URL) stays in the log's type only.
        log.error(
            "accounts database error on %s %s: %s",
            request.method,
            request.url.path,
            type(getattr(exc, "orig", None) or exc).__name__,
        )
        return await api_error(
            request,
            Unavailable(
                "the accounts database is busy or unreachable; retry shortly",
                headers={"Retry-After": "1"},
            ),
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            request.url.path,
            500,
            "Internal server error",
            "an unexpected error occurred; it has been logged",
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(RPCError, rpc_error)
    app.add_exception_handler(ArtifactStoreError, store_error)
    app.add_exception_handler(OperationalError, database_error)
    app.add_exception_handler(Exception, unexpected)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_CONTENT_TYPE: {}}, "description": desc}
    for code, desc in {
        400: "A header the API refuses (a foreign `Host`, `X-Agentrun-Actor`)",
        401: "No API key, or a bad, revoked or expired one (`WWW-Authenticate: Bearer`)",
        403: "The key's role may not do this, or a state change from a foreign `Origin`",
        404: "Unknown run (or a run of another tenant)",
        409: "Invalid transition for the run's current status",
        413: "Request body too large",
        415: "The request body is not `application/json`",
        422: "Invalid request (the field errors are listed)",
        429: "Rate limit, concurrent-run quota or budget reached (see `Retry-After`)",
        503: "Temporal or the workers are unreachable",
        504: "No worker completed the update in time (it may still apply later)",
    }.items()
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entries for a route that can answer these problem codes."""
    return {c: PROBLEM_RESPONSES[c] for c in codes}
