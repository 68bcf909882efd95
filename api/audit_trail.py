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
* **Refused attempts are audited too**: a state-changing call refused before its
  caller was known (no key, a bad, revoked or expired key, a forged
  `X-Agentrun-Actor`, a cross-site origin, a foreign `Host`, a non-JSON body) is
  recorded with actor `anonymous` and outcome `<status> <problem kind>`, in the
  tenant of the key it named (its admins see someone tried it), else in the system
  tenant's log. At most `ATTEMPTS_PER_MINUTE` per client address: a flood cannot
  grow the log without bound (the excess is logged). Reads refused are not audited.
* **A 500 is audited**: an exception no handler answered is recorded with outcome
  `500` before the server answers it.

This module must not: read request or response bodies, or record a key's secret.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from accounts.audit import AuditEntry
from accounts.ratelimit import RateLimiter
from api.accounts_conn import AccountsConnection
from api.auth import ANONYMOUS, CALL_RECORD, CallRecord
from api.browser import STATE_CHANGING

__all__ = ["CallTrail", "audit_target"]

log = logging.getLogger("agentrun.api")

REQUEST_ID_HEADER = "X-Request-Id"
ATTEMPTS_PER_MINUTE = 60
"""Refused attempts audited per client address and minute (the rest are logged)."""


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
    if "name" in path_params:  # `/v1/secrets/{name}`: the secret's name, never its value
        return f"secret/{path_params['name']}"
    return ""


class CallTrail:
    """Audit entries and the per-call headers (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        accounts: AccountsConnection,
        system_tenant: str,
        attempts_per_minute: int = ATTEMPTS_PER_MINUTE,
    ) -> None:
        self.app = app
        self.accounts = accounts
        self.system_tenant = system_tenant
        # Refused attempts are recorded per client address up to this rate, so a
        # flood of bad requests cannot grow the audit log without bound.
        self.attempts = RateLimiter(attempts_per_minute, attempts_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = CallRecord()
        scope[CALL_RECORD] = record
        started = False

        async def send_with_trail(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = record.request_id
                if record.rate is not None:
                    headers["RateLimit-Limit"] = str(record.rate.limit)
                    headers["RateLimit-Remaining"] = str(record.rate.remaining)
                    headers["RateLimit-Reset"] = str(record.rate.reset_seconds)
                await self._audit(scope, record, int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_with_trail)
        except Exception:
            if not started:  # the 500 the server answers is recorded too
                await self._audit(scope, record, 500)
            raise

    async def _audit(self, scope: Scope, record: CallRecord, status: int) -> None:
        entry = self._entry(scope, record, status)
        if entry is None and record.principal is None and record.refused is not None:
            entry = await self._attempt(scope, record, status)
        if entry is None:
            return
        try:
            await asyncio.to_thread(self.accounts.audit.append, entry)
        except Exception:
            log.exception(
                "could not append the audit entry for %s %s (request %s)",
                entry.action,
                entry.target,
                entry.request_id,
            )

    def _entry(self, scope: Scope, record: CallRecord, status: int) -> AuditEntry | None:
        """A state change by an identified caller, whatever its outcome."""
        rule, principal = record.rule, record.principal
        if rule is None or rule.action is None or principal is None:
            return None
        return AuditEntry(
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

    async def _attempt(self, scope: Scope, record: CallRecord, status: int) -> AuditEntry | None:
        """A state change refused before its caller was known (bad or missing key, a
        forged actor header, a cross-site or foreign-host request): recorded as an
        `anonymous` attempt in the tenant of the key it named, else the system
        tenant's log."""
        method = str(scope.get("method", ""))
        if method not in STATE_CHANGING:
            return None
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        if not self.attempts.check(address).allowed:
            log.warning("refused %s from %s not audited: attempt rate exceeded", method, address)
            return None
        tenant = self.system_tenant
        key_id = record.presented_key_id
        if key_id is not None:
            key = await asyncio.to_thread(self.accounts.keys.get, key_id)
            tenant = key.tenant_id if key is not None else tenant
        rule = record.rule
        return AuditEntry(
            at=datetime.now(UTC),
            tenant_id=tenant,
            actor=ANONYMOUS,
            key_id=key_id,
            action=rule.action if rule is not None and rule.action else "request.refused",
            target=f"{method} {scope.get('path', '')}"[:2000],
            outcome=f"{status} {record.refused}",
            request_id=record.request_id,
        )
