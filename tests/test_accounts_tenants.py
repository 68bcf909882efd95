"""Tenants and quotas, on SQLite and PostgreSQL; and the role table routes check."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from accounts.db import Database
from accounts.errors import Conflict, InvalidInput, NotFound
from accounts.roles import Permission, Role, allows
from accounts.tenants import Quota, Tenants


def test_a_tenant_is_created_read_back_and_listed(database: Database) -> None:
    tenants = Tenants(database)
    created = tenants.create("acme", name="Acme Corp", quota=Quota(max_concurrent_runs=3))
    tenants.create("beta")
    assert tenants.get("acme") == created
    assert created.name == "Acme Corp" and created.quota.max_concurrent_runs == 3
    assert tenants.get("beta") is not None and tenants.get("beta").name == "beta"  # type: ignore[union-attr]
    assert [t.tenant_id for t in tenants.list()] == ["acme", "beta"]
    assert tenants.get("nobody") is None


def test_creating_a_tenant_twice_is_a_conflict(database: Database) -> None:
    tenants = Tenants(database)
    tenants.create("acme")
    with pytest.raises(Conflict, match="acme"):
        tenants.create("acme", name="again")
    assert len(tenants.list()) == 1


@pytest.mark.parametrize("bad", ["", "-acme", "a/b", "a b", "x" * 64, "ünï"])
def test_a_tenant_id_outside_the_name_pattern_is_invalid_input(
    database: Database, bad: str
) -> None:
    with pytest.raises(InvalidInput, match="invalid tenant id"):
        Tenants(database).create(bad)
    assert Tenants(database).list() == []


def test_a_quota_is_set_and_read_back_whole(database: Database) -> None:
    tenants = Tenants(database)
    tenants.create("acme")
    assert tenants.get("acme").quota == Quota()  # type: ignore[union-attr]
    quota = Quota(
        max_concurrent_runs=2,
        max_steps_per_run=50,
        max_tokens_per_run=10_000,
        token_budget=1_000_000,
        cost_budget_usd=12.5,
        budget_period="day",
        queue_when_busy=True,
    )
    assert tenants.set_quota("acme", quota).quota == quota
    assert tenants.get("acme").quota == quota  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        tenants.set_quota("nobody", quota)


def test_a_quota_refuses_nonsense_limits() -> None:
    with pytest.raises(ValidationError):
        Quota(max_concurrent_runs=0)
    with pytest.raises(ValidationError):
        Quota(cost_budget_usd=-1)
    with pytest.raises(ValidationError):
        Quota.model_validate({"max_runs": 3})  # a typo is not silently "no limit"


@pytest.mark.parametrize(
    ("role", "granted"),
    [
        (Role.ADMIN, set(Permission)),
        (
            Role.OPERATOR,
            {
                Permission.READ,
                Permission.LAUNCH,
                Permission.CONTROL,
                Permission.DECIDE,
                Permission.SECRETS,
            },
        ),
        (Role.APPROVER, {Permission.READ, Permission.DECIDE}),
        (Role.VIEWER, {Permission.READ}),
    ],
)
def test_each_role_allows_exactly_its_permissions(role: Role, granted: set[Permission]) -> None:
    assert {p for p in Permission if allows(role, p)} == granted
