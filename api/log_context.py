"""The run and tenant of every log line a request writes (its access line included).

Installed outermost by `api.app`: while a request runs, `telemetry.logs` asks this
request's scope for the run and tenant when a line is written, so a line knows them
as soon as the request does: the tenant once `api.deps.authorize` found the key,
the run once the router matched `{run_id}` (or the launcher named the new run,
`CallRecord.target`). uvicorn's access line is written while the response starts,
inside this middleware, so it names both too.

This module must not: read a header, a body or a key; it reads what the request's
own checks already established.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import CALL_RECORD, CallRecord
from telemetry.logs import bind_lookup

__all__ = ["LogContext"]

LAUNCH_PATH = "/v1/runs"


class LogContext:
    """Binds each HTTP request's run and tenant to the log lines it writes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        def lookup() -> tuple[str | None, str | None]:
            record = scope.get(CALL_RECORD)
            params = scope.get("path_params") or {}
            run_id = params.get("run_id")
            tenant = None
            if isinstance(record, CallRecord):
                if record.principal is not None:
                    tenant = record.principal.tenant_id
                if run_id is None and getattr(scope.get("route"), "path", None) == LAUNCH_PATH:
                    run_id = record.target  # the run a launch created
            return (run_id if isinstance(run_id, str) else None), tenant

        with bind_lookup(lookup):
            await self.app(scope, receive, send)
