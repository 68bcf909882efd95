"""Who is calling: what an authenticated API key stands for.

The API derives every identity from this object, never from a header: the tenant
scopes what the caller sees, the role what it may do, the subject is the actor
recorded in events and the audit trail.

This module must not: hold the key's secret or hash.
"""

from __future__ import annotations

from dataclasses import dataclass

from accounts.roles import Role


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    """The tenant the key belongs to; the caller sees only its runs."""
    key_id: str
    """The key's public id (the part after `ar_`), for the audit trail and rate limit."""
    role: Role
    """What the key may do (`accounts.roles.allows`)."""
    subject: str
    """The key's owner, e.g. `ci-bot` or `alice`: the actor recorded for its calls."""
    may_act_for_users: bool
    """Scope `act_as`: the key may name an end user it acts for
    (`X-Agentrun-On-Behalf-Of`); both are recorded."""
