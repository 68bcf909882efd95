"""Roles and what each may do: the one table every route's check reads.

Design (why it looks like this):

* **Four roles, six permissions.** A route names the permission it needs
  (`Permission.CONTROL`), never a role, so adding a role is one row here and no
  route changes.
* **Admin is a superset**, approver is read + decide, viewer read only: the issue's
  four roles, each a strict subset of the one above it except approver, which may
  decide but not launch or steer.

This module must not: know about HTTP, tenants or keys.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    """Tenants, keys and the audit trail, and everything an operator may do."""
    OPERATOR = "operator"
    """Launch, control (pause/resume/cancel/message) and approve runs; store secrets."""
    APPROVER = "approver"
    """Read runs and approve or deny their tool calls; nothing else."""
    VIEWER = "viewer"
    """Read runs, events, artifacts and usage only."""


class Permission(StrEnum):
    READ = "read"
    """Runs, events, artifacts, usage."""
    LAUNCH = "launch"
    """Start a run."""
    CONTROL = "control"
    """Pause, resume, cancel, message a run."""
    DECIDE = "decide"
    """Approve or deny a tool call."""
    SECRETS = "secrets"
    """Store and delete the tenant's secrets (their names and metadata are READ; no
    role ever reads a value back through the API)."""
    ADMIN = "admin"
    """Tenants, keys, audit."""


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(
        {
            Permission.READ,
            Permission.LAUNCH,
            Permission.CONTROL,
            Permission.DECIDE,
            Permission.SECRETS,
        }
    ),
    Role.APPROVER: frozenset({Permission.READ, Permission.DECIDE}),
    Role.VIEWER: frozenset({Permission.READ}),
}
"""Role → the permissions it grants."""


def allows(role: Role, permission: Permission) -> bool:
    """Whether a key of `role` may do what `permission` covers."""
    return permission in PERMISSIONS[role]
