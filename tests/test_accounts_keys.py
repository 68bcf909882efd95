"""API keys, on SQLite and PostgreSQL: shown once, stored as a hash, refused for
every kind of wrong (malformed, unknown, wrong secret, revoked, expired)."""

from __future__ import annotations

import hashlib
import itertools
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from accounts.db import Database
from accounts.errors import InvalidInput, NotFound
from accounts.keys import ApiKeys
from accounts.principal import Principal
from accounts.roles import Role
from accounts.tenants import Tenants

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def acme(database: Database) -> Database:
    Tenants(database).create("acme")
    return database


def test_the_plaintext_is_returned_once_and_only_its_sha256_is_stored(acme: Database) -> None:
    record, plaintext = ApiKeys(acme).create("acme", Role.OPERATOR, "ci-bot")
    prefix, key_id, secret = plaintext.split("_", 2)
    assert prefix == "ar" and key_id == record.key_id
    assert len(key_id) == 12 and set(key_id) <= set("0123456789abcdef")
    assert len(secret) >= 43  # 32 random bytes, urlsafe base64
    with acme.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM api_keys")).mappings().one()
    assert row["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert all(secret not in str(value) for value in row.values())
    assert "secret" not in record.model_dump_json() and "sha256" not in record.model_dump_json()


def test_a_key_authenticates_as_its_tenant_role_and_subject(acme: Database) -> None:
    keys = ApiKeys(acme)
    record, plaintext = keys.create("acme", Role.APPROVER, "alice")
    assert keys.authenticate(plaintext) == Principal(
        tenant_id="acme",
        key_id=record.key_id,
        role=Role.APPROVER,
        subject="alice",
        may_act_for_users=False,
    )


def test_the_act_as_scope_is_kept(acme: Database) -> None:
    keys = ApiKeys(acme)
    record, plaintext = keys.create("acme", Role.OPERATOR, "portal", act_as=True)
    principal = keys.authenticate(plaintext)
    assert principal is not None and principal.may_act_for_users
    assert keys.get(record.key_id).act_as  # type: ignore[union-attr]


def test_each_role_is_kept(acme: Database) -> None:
    keys = ApiKeys(acme)
    for role in Role:
        _, plaintext = keys.create("acme", role, f"{role}-user")
        principal = keys.authenticate(plaintext)
        assert principal is not None and principal.role is role


def test_a_wrong_secret_an_unknown_key_id_or_a_malformed_key_is_refused(acme: Database) -> None:
    keys = ApiKeys(acme)
    record, plaintext = keys.create("acme", Role.ADMIN, "root")
    _, other = keys.create("acme", Role.ADMIN, "root2")
    wrong_secret = f"ar_{record.key_id}_{other.split('_', 2)[2]}"
    unknown_id = f"ar_{'0' * 12}_{plaintext.split('_', 2)[2]}"
    for candidate in [
        wrong_secret,
        unknown_id,
        "",
        "ar_",
        plaintext[:-1],
        plaintext + "x",
        plaintext.upper(),
        f"Bearer {plaintext}",
        "ar_" + record.key_id,
    ]:
        assert keys.authenticate(candidate) is None, candidate
    assert keys.authenticate(plaintext) is not None


def test_a_revoked_key_is_refused_and_revoking_needs_its_tenant(acme: Database) -> None:
    Tenants(acme).create("other")
    keys = ApiKeys(acme)
    record, plaintext = keys.create("acme", Role.OPERATOR, "bob")
    assert keys.revoke(record.key_id, tenant_id="other") is False  # not that tenant's key
    assert keys.authenticate(plaintext) is not None
    assert keys.revoke(record.key_id, tenant_id="acme") is True
    assert keys.authenticate(plaintext) is None
    revoked_at = keys.get(record.key_id).revoked_at  # type: ignore[union-attr]
    assert revoked_at is not None
    assert keys.revoke(record.key_id) is True  # again: a no-op
    assert keys.get(record.key_id).revoked_at == revoked_at  # type: ignore[union-attr]
    assert keys.revoke("0" * 12) is False


def test_an_expired_key_is_refused(acme: Database) -> None:
    clock = Clock()
    keys = ApiKeys(acme, clock=clock)
    _, plaintext = keys.create("acme", Role.VIEWER, "temp", expires_at=T0 + timedelta(hours=1))
    clock.now = T0 + timedelta(minutes=59)
    assert keys.authenticate(plaintext) is not None
    clock.now = T0 + timedelta(hours=1)
    assert keys.authenticate(plaintext) is None


def test_last_used_at_is_written_on_use_at_most_once_a_minute(acme: Database) -> None:
    clock = Clock()
    keys = ApiKeys(acme, clock=clock)
    record, plaintext = keys.create("acme", Role.VIEWER, "carol")
    assert record.last_used_at is None
    clock.now = T0 + timedelta(seconds=5)
    keys.authenticate(plaintext)
    assert keys.get(record.key_id).last_used_at == T0 + timedelta(seconds=5)  # type: ignore[union-attr]
    clock.now = T0 + timedelta(seconds=30)
    keys.authenticate(plaintext)
    assert keys.get(record.key_id).last_used_at == T0 + timedelta(seconds=5)  # type: ignore[union-attr]
    clock.now = T0 + timedelta(seconds=65)
    keys.authenticate(plaintext)
    assert keys.get(record.key_id).last_used_at == T0 + timedelta(seconds=65)  # type: ignore[union-attr]


def test_keys_are_listed_per_tenant_without_hashes(acme: Database) -> None:
    Tenants(acme).create("other")
    keys = ApiKeys(acme)
    mine = [keys.create("acme", Role.VIEWER, f"u{i}")[0] for i in range(3)]
    keys.create("other", Role.VIEWER, "them")
    listed = keys.list("acme")
    assert {k.key_id for k in listed} == {k.key_id for k in mine}
    assert all(k.tenant_id == "acme" for k in listed)
    assert keys.list("nobody") == []


def test_creating_a_key_checks_tenant_role_subject_and_expiry(acme: Database) -> None:
    keys = ApiKeys(acme, clock=Clock())
    with pytest.raises(NotFound):
        keys.create("nobody", Role.ADMIN, "x")
    with pytest.raises(InvalidInput, match="role"):
        keys.create("acme", "root", "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="subject"):
        keys.create("acme", Role.ADMIN, "")
    with pytest.raises(InvalidInput, match="subject"):
        keys.create("acme", Role.ADMIN, "evil\nname")
    with pytest.raises(InvalidInput, match="future"):
        keys.create("acme", Role.ADMIN, "x", expires_at=T0 - timedelta(seconds=1))
    assert keys.list("acme") == []


def test_a_burst_of_authentications_that_each_record_last_use_never_fails(
    acme: Database,
) -> None:
    # Each call is a minute after the last use, so each one writes: on SQLite a
    # read-then-write transaction failed with "database is locked" under a burst
    # (seen as HTTP 500s when 100 launches arrived at once).
    clock = Clock()
    keys = ApiKeys(acme, clock=lambda: clock.now)
    _, plaintext = keys.create("acme", Role.OPERATOR, "burst")
    ticks = itertools.count()

    def use(_: int) -> Principal | None:
        clock.now = T0 + timedelta(minutes=next(ticks))
        return keys.authenticate(plaintext)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(use, range(400)))
    assert all(a is not None and a.subject == "burst" for a in answers)
    assert keys.get(plaintext.split("_")[1]).last_used_at is not None  # type: ignore[union-attr]
