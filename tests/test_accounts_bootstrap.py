"""The first start mints an admin key (tenant, key, a 0600 file); later starts do
nothing and leave the file alone. On SQLite and PostgreSQL."""

from __future__ import annotations

import stat
from pathlib import Path

from accounts.bootstrap import bootstrap_admin
from accounts.db import Database
from accounts.keys import ApiKeys
from accounts.roles import Role
from accounts.tenants import Tenants


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_first_start_creates_the_tenant_an_admin_key_and_a_private_file(
    database: Database, tmp_path: Path
) -> None:
    key_file = tmp_path / "state" / "admin.key"
    plaintext = bootstrap_admin(database, "default", key_file)
    assert plaintext is not None
    assert key_file.read_text().strip() == plaintext
    assert mode(key_file) == 0o600
    assert mode(key_file.parent) == 0o700
    principal = ApiKeys(database).authenticate(plaintext)
    assert principal is not None
    assert (principal.tenant_id, principal.role) == ("default", Role.ADMIN)
    assert Tenants(database).get("default") is not None


def test_a_later_start_returns_none_and_leaves_the_file(database: Database, tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    first = bootstrap_admin(database, "default", key_file)
    assert bootstrap_admin(database, "default", key_file) is None
    assert key_file.read_text().strip() == first
    assert len(ApiKeys(database).list("default")) == 1


def test_no_admin_key_is_minted_while_any_key_exists(database: Database, tmp_path: Path) -> None:
    Tenants(database).create("acme")
    record, _ = ApiKeys(database).create("acme", Role.VIEWER, "v")
    ApiKeys(database).revoke(record.key_id)
    assert bootstrap_admin(database, "default", tmp_path / "admin.key") is None
    assert not (tmp_path / "admin.key").exists()
    assert Tenants(database).get("default") is None
