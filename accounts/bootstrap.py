"""The first admin key, so a fresh install is locked by default and still usable.

On the first start (no API key at all in the database), :func:`bootstrap_admin`
creates the system tenant and an admin key in it, writes the key to a file only
its owner can read (the CLI reads it from there), and returns it so the process
can print it once. Every later start finds a key and does nothing.

Design (why it looks like this):

* **"No key at all" is the trigger**, not "no admin key": revoking every admin key
  must not mint a new one on the next restart.
* **The file is written before the transaction commits**, atomically (temp file
  with mode 0600, then rename), so a crash leaves either no key in the database or
  a file holding it: never a committed key nobody can read.
* **Concurrent first starts** (API and CLI together) are serialised: SQLite's write
  lock, or a self-conflicting lock on the keys table on PostgreSQL; the second
  finds the first's key and returns None.

This module must not: print or log the key (the caller decides how to show it once).
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, text

from accounts.db import Database
from accounts.keys import mint_key
from accounts.models import ApiKeyRow, TenantRow
from accounts.roles import Role
from accounts.tenants import Quota, check_tenant_id

BOOTSTRAP_SUBJECT = "admin"
"""The subject (actor name) of the bootstrap admin key."""


def bootstrap_admin(db: Database, tenant_id: str, key_file: Path) -> str | None:
    """Create tenant `tenant_id` and an admin key on first start; else return None.

    The key is written to `key_file` (mode 0600; a parent directory it creates is
    0700) and returned, to be shown once.
    """
    check_tenant_id(tenant_id)
    key_file = Path(key_file)
    with db.session(write_lock=True) as session:
        if db.dialect == "postgresql":
            session.execute(text("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE"))
        if session.scalars(select(ApiKeyRow.key_id).limit(1)).first() is not None:
            return None
        now = datetime.now(UTC)
        if session.get(TenantRow, tenant_id) is None:
            session.add(
                TenantRow(
                    tenant_id=tenant_id,
                    name=tenant_id,
                    quota=Quota().model_dump(mode="json"),
                    created_at=now,
                )
            )
            session.flush()
        row, plaintext = mint_key(tenant_id, Role.ADMIN, BOOTSTRAP_SUBJECT, now)
        session.add(row)
        session.flush()
        write_secret_file(key_file, plaintext + "\n")
    return plaintext


def write_secret_file(path: Path, content: str) -> None:
    """Write `content` to `path` atomically, readable by its owner only (0600)."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
