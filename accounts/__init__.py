"""Accounts: tenants, API keys, roles, usage, the audit trail and rate limits.

A floor of its own (it imports `agentrun` only; `api/`, `cli/` and `worker.py` may
import it), backed by one SQL database through SQLAlchemy 2 with Alembic
migrations: a SQLite file in the state directory by default, PostgreSQL in
production, with the same code and migrations.

    db = Database(settings.database_url or default_database_url(settings.state_dir))
    db.upgrade()
    principal = ApiKeys(db).authenticate(bearer_token)   # None → 401
    if not allows(principal.role, Permission.LAUNCH): ...  # → 403

This package must not: import the API, workflows or activities, or log a key.
"""

from accounts.audit import AuditEntry, AuditLog, AuditRecord
from accounts.bootstrap import bootstrap_admin
from accounts.db import Database, default_database_url
from accounts.errors import AccountsError, Conflict, InvalidInput, NotFound
from accounts.keys import ApiKeys, KeyRecord
from accounts.principal import Principal
from accounts.ratelimit import RateDecision, RateLimiter
from accounts.roles import Permission, Role, allows
from accounts.tenants import Quota, TenantRecord, Tenants
from accounts.usage import ModelPrice, PriceTable, RunUsage, UsageLedger, UsageTotals, period_start

__all__ = [
    "AccountsError",
    "ApiKeys",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "Conflict",
    "Database",
    "InvalidInput",
    "KeyRecord",
    "ModelPrice",
    "NotFound",
    "Permission",
    "PriceTable",
    "Principal",
    "Quota",
    "RateDecision",
    "RateLimiter",
    "Role",
    "RunUsage",
    "TenantRecord",
    "Tenants",
    "UsageLedger",
    "UsageTotals",
    "allows",
    "bootstrap_admin",
    "default_database_url",
    "period_start",
]
