"""Who is calling and what they may do: API keys, roles, and the route → permission table.

Every route of the app runs `api.deps.authorize` first (an app-wide dependency):
it finds the route's :class:`Rule` in :data:`RULES`, and unless the rule is public
it authenticates the `Authorization: Bearer ar_<key_id>_<secret>` key
(:func:`bearer_key`), applies the key's rate limit (:func:`check_rate`) and checks
the key's role (:func:`check_permission`). Routes then read the caller as
`PrincipalDep`, `TenantDep` and `ActorDep` (`api.deps`, which derive from it).
This module holds the rules and the checks; `api.deps` the lookups.

    RULES[("POST", "/v1/runs")]      # Rule(permission=LAUNCH, action="run.create")
    rule_for_route("GET", "/healthz")  # PUBLIC

Design (why it looks like this):

* **One explicit table, failing closed.** Each operation has a row (method, path
  template): the permission it needs and, for a state change, the audit action. A
  route without a row answers 500 and is logged, never served; a test compares
  the table with the OpenAPI document both ways, so a new route without a rule
  (or a rule for a route that is gone) fails CI.
* **Identity from the key only.** The subject, tenant and role come from the key
  store; `X-Agentrun-Actor` is refused while keys are on. A key with the `act_as`
  scope may name an end user (`X-Agentrun-On-Behalf-Of`, read in `api.deps`).
* **`AGENTRUN_AUTH=off`** (loopback-only development, see `api.server`) keeps the
  old behaviour: every caller is an admin of `settings.dev_tenant`, named by
  `X-Agentrun-Actor`.
* **Key checks run in a thread** (`asyncio.to_thread`): the key store is synchronous
  SQLAlchemy; a short query must not block the event loop.

This module must not: read a key's secret anywhere but in the `Authorization`
header, log it, or decide tenancy any other way than from the key.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from fastapi import Request

from accounts.principal import Principal
from accounts.ratelimit import RateDecision
from accounts.roles import Permission, Role, allows
from agentrun.config import Settings
from api.errors import BadRequest, Forbidden, InvalidHeader, TooManyRequests, Unauthenticated

__all__ = [
    "ACTOR_HEADER",
    "ACTOR_PATTERN",
    "ANONYMOUS",
    "METRICS",
    "PUBLIC",
    "RULES",
    "CallRecord",
    "Rule",
    "bearer_key",
    "call_record",
    "check_permission",
    "check_rate",
    "dev_principal",
    "presented_key_id",
    "rule_for_route",
]

ACTOR_HEADER = "X-Agentrun-Actor"
ANONYMOUS = "anonymous"
ACTOR_PATTERN = "^[A-Za-z0-9_.@+:-]{1,200}$"
"""An actor name: ASCII only, so it reads alike in Python and in the OpenAPI
document (Python's `\\w` would also take any Unicode letter); `re.fullmatch`."""
BEARER = re.compile(r"^Bearer +(\S+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    """What an operation needs: a permission (None: public) and, for a state change,
    the action its audit entry records."""

    permission: Permission | None
    action: str | None = None
    rate_limited: bool = True
    """Counted against the key's rate limit. Not for the codec server, which the
    `temporal` CLI calls several times per run step it shows (`api.routes.codec`)."""


PUBLIC = Rule(None)
_READ = Rule(Permission.READ)
_ADMIN_READ = Rule(Permission.ADMIN)
_CODEC = Rule(Permission.ADMIN, rate_limited=False)
METRICS = Rule(Permission.ADMIN, rate_limited=False)
"""`/metrics`: the deployment's totals, for system admins, or for anyone with
`AGENTRUN_METRICS_PUBLIC=true` (`api.deps.authorize` lets it through then)."""

RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("POST", "/v1/runs"): Rule(Permission.LAUNCH, "run.create"),
    ("GET", "/v1/runs"): _READ,
    ("GET", "/v1/runs/{run_id}"): _READ,
    ("GET", "/v1/runs/{run_id}/events"): _READ,
    ("GET", "/v1/runs/{run_id}/events/stream"): _READ,
    ("POST", "/v1/runs/{run_id}/pause"): Rule(Permission.CONTROL, "run.pause"),
    ("POST", "/v1/runs/{run_id}/resume"): Rule(Permission.CONTROL, "run.resume"),
    ("POST", "/v1/runs/{run_id}/cancel"): Rule(Permission.CONTROL, "run.cancel"),
    ("POST", "/v1/runs/{run_id}/approvals/{approval_id}"): Rule(
        Permission.DECIDE, "approval.decide"
    ),
    ("POST", "/v1/runs/{run_id}/messages"): Rule(Permission.CONTROL, "run.message"),
    ("GET", "/v1/runs/{run_id}/artifacts"): _READ,
    ("GET", "/v1/runs/{run_id}/artifacts/{digest}"): _READ,
    ("GET", "/v1/usage"): _READ,
    ("PUT", "/v1/secrets/{name}"): Rule(Permission.SECRETS, "secret.put"),
    ("GET", "/v1/secrets"): _READ,
    ("DELETE", "/v1/secrets/{name}"): Rule(Permission.SECRETS, "secret.delete"),
    ("POST", "/v1/admin/tenants"): Rule(Permission.ADMIN, "tenant.create"),
    ("GET", "/v1/admin/tenants"): _ADMIN_READ,
    ("PUT", "/v1/admin/tenants/{tenant}/quota"): Rule(Permission.ADMIN, "tenant.quota"),
    ("POST", "/v1/admin/tenants/{tenant}/keys"): Rule(Permission.ADMIN, "key.create"),
    ("GET", "/v1/admin/tenants/{tenant}/keys"): _ADMIN_READ,
    ("DELETE", "/v1/admin/keys/{key_id}"): Rule(Permission.ADMIN, "key.revoke"),
    ("GET", "/v1/audit"): _ADMIN_READ,
    ("GET", "/v1/audit/verify"): _ADMIN_READ,
    # The codec server (`api.routes.codec`): system-tenant admins only, checked there.
    # POSTs by protocol, but they change nothing: not audited, like other reads.
    ("POST", "/codec/decode"): _CODEC,
    ("POST", "/codec/encode"): _CODEC,
    # Prometheus scrapes (`api.routes.metrics`): system-tenant admins, checked there,
    # or anyone with `AGENTRUN_METRICS_PUBLIC=true`; a scraper is not rate limited.
    ("GET", "/metrics"): METRICS,
}
"""Every operation of the OpenAPI document → its rule (tests/test_api_auth_rules.py
checks that both sides list the same operations)."""

DOCS = Rule(Permission.READ)
"""The documentation (`/docs`, its OAuth2 redirect, `/redoc`, `/openapi.json`):
outside the document (`api.docs_page`); any key reads them, or anyone with
`AGENTRUN_API_PUBLIC_DOCS=true` (a browser cannot send a key)."""

UNDOCUMENTED: dict[tuple[str, str], Rule] = {
    ("GET", "/docs"): DOCS,
    ("GET", "/docs/oauth2-redirect"): DOCS,
    ("GET", "/redoc"): DOCS,
    ("GET", "/openapi.json"): DOCS,
}


def rule_for_route(method: str, path: str) -> Rule | None:
    """The rule of an operation (HEAD is read as GET); None when it has none."""
    method = "GET" if method == "HEAD" else method
    return UNDOCUMENTED.get((method, path)) or RULES.get((method, path))


@dataclass
class CallRecord:
    """What one request learned about its caller, for the audit trail and the
    rate-limit headers (`api.audit_trail` reads it after the route answered)."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    rule: Rule | None = None
    principal: Principal | None = None
    on_behalf_of: str | None = None
    rate: RateDecision | None = None
    action: str | None = None
    """Overrides the rule's action (`approval.approve` / `approval.deny`)."""
    target: str | None = None
    """What the call acted on when the path does not say (a new run's id)."""
    refused: str | None = None
    """Why the call was refused before its caller was known (the problem kind:
    `unauthenticated`, `origin-not-allowed`, ...): audited as an attempt."""
    presented_key_id: str | None = None
    """The key id of a refused key (`ar_<key_id>_…`), so the attempt is recorded
    in the tenant of the key it named."""


CALL_RECORD = "agentrun.call"


def call_record(request: Request) -> CallRecord:
    """This request's record (created by the audit middleware, or here)."""
    record = request.scope.get(CALL_RECORD)
    if not isinstance(record, CallRecord):
        record = CallRecord()
        request.scope[CALL_RECORD] = record
    return record


def dev_principal(settings: Settings, actor_header: str | None) -> Principal:
    """`AGENTRUN_AUTH=off`: the dev tenant's admin, named by `X-Agentrun-Actor`."""
    # No `strip()`: HTTP already drops the spaces around a header value.
    subject = actor_header or ANONYMOUS
    if not re.fullmatch(ACTOR_PATTERN, subject):
        raise BadRequest(
            f"{ACTOR_HEADER} must be 1-200 characters of ASCII letters, digits and ._@+-:"
        )
    return Principal(
        tenant_id=settings.dev_tenant,
        key_id="",
        role=Role.ADMIN,
        subject=subject,
        may_act_for_users=True,
    )


KEY_ID_IN_KEY = re.compile(r"^ar_([0-9a-f]{12})_")


def presented_key_id(headers: Mapping[str, str]) -> str | None:
    """The key id a (possibly bad) `Authorization` header names, if it names one."""
    match = BEARER.match(headers.get("authorization", ""))
    key_id = KEY_ID_IN_KEY.match(match.group(1)) if match else None
    return key_id.group(1) if key_id else None


def bearer_key(headers: Mapping[str, str]) -> str:
    """The key of an `Authorization: Bearer …` header; 400/401 problems otherwise."""
    if ACTOR_HEADER.lower() in {name.lower() for name in headers}:
        raise InvalidHeader(
            f"{ACTOR_HEADER} is not accepted: the caller's identity comes from its API key "
            "(a key with the act_as scope may name an end user in X-Agentrun-On-Behalf-Of)",
            kind="actor-header-not-accepted",
        )
    header = headers.get("authorization")
    if not header:
        raise Unauthenticated(
            "this route needs an API key: send `Authorization: Bearer ar_…` (an admin "
            "creates keys; the first one is in the state directory's admin.key)"
        )
    match = BEARER.match(header)
    if match is None:
        raise Unauthenticated("the Authorization header must be `Bearer ar_<key_id>_<secret>`")
    return match.group(1)


def check_rate(decision: RateDecision) -> None:
    """429 when the key's bucket is empty."""
    if not decision.allowed:
        retry = max(1, decision.retry_after or 1)
        raise TooManyRequests(
            f"rate limit of {decision.limit} requests per minute for this key reached; "
            f"retry in {retry} s",
            retry_after=retry,
        )


def check_permission(principal: Principal, rule: Rule) -> None:
    """403 when the key's role lacks the rule's permission."""
    if rule.permission is not None and not allows(principal.role, rule.permission):
        raise Forbidden(
            f"a key with role {principal.role.value!r} may not do this "
            f"(it needs the {rule.permission.value!r} permission)"
        )
