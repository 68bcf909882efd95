"""Recording every state-changing call in the audit log, whatever its outcome.

    app.add_middleware(CallTrail, accounts=accounts)

Each request gets a :class:`~api.auth.CallRecord` (its request id, then what
`api.deps.authorize` learned: the rule, the caller, the rate decision). When the
answer starts, this middleware

* appends one `AuditEntry` for a state-changing operation (a rule with an
  `action`) whose caller was identified: who (the key's subject, the user it acted
  for, the key id), the tenant, the action, the target (the run, key or tenant the
  path names, or what the route set), the time, the outcome (`ok`, or the status
  code) and the request id; a 403, 404, 409 or 429 is recorded like a success;
* adds `X-Request-Id` to every answer, and `RateLimit-Limit`, `RateLimit-Remaining`
  and `RateLimit-Reset` to every answer of an authenticated call.

Design (why it looks like this):

* **Appended before the answer is sent**, so a client that reads the audit log
  right after its call finds the entry. A failed append is logged as an error; the
  call itself already happened and cannot be undone.
* **Unauthenticated calls are not audited**: they have no tenant and changed
  nothing (the 401 happens before any route runs); they are in the access log.

This module must not: read request or response bodies, or record a key's secret.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from accounts.audit import AuditEntry
from api.accounts_conn import AccountsConnection
from api.auth import CALL_RECORD, CallRecord

__all__ = ["CallTrail", "audit_target"]

log = logging.getLogger("agentrun.api")

REQUEST_ID_HEADER = "X-Request-Id"


def audit_target(record: CallRecord, path_params: dict[str, str]) -> str:
    """What the call acted on: the route's choice, else what its path names."""
    if record.target:
        return record.target
    if "run_id" in path_params:
        run = path_params["run_id"]
        approval = path_params.get("approval_id")
        return f"{run}/approvals/{approval}" if approval else run
    for name in ("key_id", "tenant"):
        if name in path_params:
            return path_params[name]
    return ""


class CallTrail:
    """Audit entries and the per-call headers (see the module docstring)."""

    def __init__(self, app: ASGIApp, accounts: AccountsConnection) -> None:
        self.app = app
        self.accounts = accounts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = CallRecord()
        scope[CALL_RECORD] = record

        async def send_with_trail(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = record.request_id
                if record.rate is not None:
                    headers["RateLimit-Limit"] = str(record.rate.limit)
                    headers["RateLimit-Remaining"] = str(record.rate.remaining)
                    headers["RateLimit-Reset"] = str(record.rate.reset_seconds)
                await self._audit(scope, record, int(message["status"]))
            await send(message)

        await self.app(scope, receive, send_with_trail)

    async def _audit(self, scope: Scope, record: CallRecord, status: int) -> None:
        rule, principal = record.rule, record.principal
        if rule is None or rule.action is None or principal is None:
            return
        entry = AuditEntry(
            at=datetime.now(UTC),
            tenant_id=principal.tenant_id,
            actor=principal.subject,
            on_behalf_of=record.on_behalf_of,
            key_id=principal.key_id or None,
            action=record.action or rule.action,
            target=audit_target(record, dict(scope.get("path_params") or {})),
            outcome="ok" if status < 400 else str(status),
            request_id=record.request_id,
        )
        try:
            await asyncio.to_thread(self.accounts.audit.append, entry)
        except Exception:
            log.exception(
                "could not append the audit entry for %s %s (request %s)",
                entry.action,
                entry.target,
                entry.request_id,
            )
