"""The secret store's contract, on every backend: embedded on SQLite and on
PostgreSQL, and a real OpenBao server with token auth and with AppRole auth.

Each test states one promise of `secretstore.SecretStore`; the `store` fixture runs
it against all four. Nothing is faked: the databases and the OpenBao server are
real processes on 127.0.0.1 (tests/db_fixtures.py, tests/vault_fixtures.py).
"""

from __future__ import annotations

import pickle
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from accounts.db import Database
from agentrun.config import Settings, load_settings
from secretstore import (
    KEEP_VERSIONS,
    MIN_VALUE_CHARS,
    InvalidSecret,
    SecretNotFound,
    SecretStore,
    SecretValue,
    open_secret_store,
)
from tests.db_fixtures import PostgresServer
from tests.vault_fixtures import OpenBao

BACKENDS = ["embedded-sqlite", "embedded-postgresql", "openbao-token", "openbao-approle"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SecretStore]:
    backend: str = request.param
    if backend.startswith("openbao"):
        bao: OpenBao = request.getfixturevalue("openbao")
        settings = bao.settings(tmp_path, approle=backend.endswith("approle"))
        opened = open_secret_store(settings)
        try:
            yield opened
        finally:
            opened.close()
        return
    if backend == "embedded-sqlite":
        url, drop = f"sqlite:///{tmp_path / 'accounts.db'}", None
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url, drop = server.create_database(), server
    settings = _embedded_settings(tmp_path, url)
    opened = open_secret_store(settings)
    try:
        yield opened
    finally:
        opened.close()
        if drop is not None:
            drop.drop_database(url)


def _embedded_settings(tmp_path: Path, url: str) -> Settings:
    return load_settings(state_dir=tmp_path / "state", database_url=url)


def tenant() -> str:
    """A fresh tenant per test (the OpenBao server is shared by the session)."""
    return f"t-{uuid.uuid4().hex[:10]}"


VALUE = "sk-test-0123456789abcdef"


def test_a_stored_value_reads_back_and_its_metadata_never_holds_it(store: SecretStore) -> None:
    t = tenant()
    meta = store.put(t, "API_TOKEN", VALUE)
    assert (meta.name, meta.version) == ("API_TOKEN", 1)
    assert meta.created_at <= meta.updated_at
    assert VALUE not in meta.model_dump_json()
    got = store.get(t, "API_TOKEN")
    assert got.reveal() == VALUE
    assert (got.name, got.version) == ("API_TOKEN", 1)


def test_each_put_adds_a_version_and_old_versions_stay_readable(store: SecretStore) -> None:
    t = tenant()
    for i in range(1, 4):
        assert store.put(t, "ROTATED", f"{VALUE}-v{i}").version == i
    assert store.get(t, "ROTATED").reveal() == f"{VALUE}-v3"
    assert store.get(t, "ROTATED", version=1).reveal() == f"{VALUE}-v1"
    assert store.get(t, "ROTATED", version=2).version == 2
    with pytest.raises(SecretNotFound):
        store.get(t, "ROTATED", version=9)
    [meta] = store.list(t)
    assert meta.version == 3
    assert meta.created_at < meta.updated_at


def test_only_the_newest_versions_are_kept(store: SecretStore) -> None:
    t = tenant()
    for i in range(KEEP_VERSIONS + 2):
        store.put(t, "MANY", f"{VALUE}-{i}")
    assert (
        store.get(t, "MANY", version=KEEP_VERSIONS + 2).reveal() == f"{VALUE}-{KEEP_VERSIONS + 1}"
    )
    assert store.get(t, "MANY", version=3).reveal() == f"{VALUE}-2"
    with pytest.raises(SecretNotFound):
        store.get(t, "MANY", version=1)


def test_list_names_the_tenants_secrets_in_order_and_only_its_own(store: SecretStore) -> None:
    mine, theirs = tenant(), tenant()
    assert store.list(mine) == []
    store.put(mine, "b_second", VALUE)
    store.put(mine, "A-first", VALUE)
    store.put(theirs, "THEIRS", VALUE)
    assert [m.name for m in store.list(mine)] == ["A-first", "b_second"]
    assert [m.name for m in store.list(theirs)] == ["THEIRS"]


def test_another_tenants_secret_is_not_found(store: SecretStore) -> None:
    mine, theirs = tenant(), tenant()
    store.put(theirs, "SHARED_NAME", VALUE)
    with pytest.raises(SecretNotFound):
        store.get(mine, "SHARED_NAME")
    with pytest.raises(SecretNotFound):
        store.delete(mine, "SHARED_NAME")
    assert store.exists(mine, ["SHARED_NAME"]) == ["SHARED_NAME"]
    assert store.get(theirs, "SHARED_NAME").reveal() == VALUE


def test_delete_removes_every_version_and_a_second_delete_is_not_found(
    store: SecretStore,
) -> None:
    t = tenant()
    store.put(t, "GONE", VALUE)
    store.put(t, "GONE", VALUE + "2")
    store.delete(t, "GONE")
    for version in (None, 1, 2):
        with pytest.raises(SecretNotFound):
            store.get(t, "GONE", version=version)
    assert store.list(t) == []
    with pytest.raises(SecretNotFound):
        store.delete(t, "GONE")
    assert store.put(t, "GONE", VALUE).version == 1  # a new secret, from version 1


def test_exists_returns_the_missing_names_once_each_in_order(store: SecretStore) -> None:
    t = tenant()
    store.put(t, "PRESENT", VALUE)
    assert store.exists(t, []) == []
    assert store.exists(t, ["PRESENT"]) == []
    assert store.exists(t, ["NOPE", "PRESENT", "ALSO/NOT", "NOPE"]) == ["NOPE", "ALSO/NOT"]


def test_an_unknown_secret_is_not_found(store: SecretStore) -> None:
    with pytest.raises(SecretNotFound, match="NEVER_STORED"):
        store.get(tenant(), "NEVER_STORED")


@pytest.mark.parametrize("name", ["", "1starts-with-digit", "has/slash", "sp ace", "x" * 129])
def test_bad_names_are_refused(store: SecretStore, name: str) -> None:
    with pytest.raises(InvalidSecret, match="secret name"):
        store.put(tenant(), name, VALUE)


def test_values_too_short_to_redact_are_refused_without_echoing_them(store: SecretStore) -> None:
    short = "x" * (MIN_VALUE_CHARS - 1)
    with pytest.raises(InvalidSecret, match="at least 8") as refused:
        store.put(tenant(), "SHORT", short)
    assert short not in str(refused.value)
    assert store.put(tenant(), "LONG_ENOUGH", "y" * MIN_VALUE_CHARS).version == 1


def test_values_keep_every_character(store: SecretStore) -> None:
    t = tenant()
    value = "pä$$wörd\n\t\"'{}%s\\ 🔑 -----BEGIN KEY-----"
    store.put(t, "UNICODE", value)
    assert store.get(t, "UNICODE").reveal() == value


def test_concurrent_puts_get_distinct_versions(store: SecretStore) -> None:
    t = tenant()
    versions: list[int] = []
    errors: list[BaseException] = []

    def put(i: int) -> None:
        try:
            versions.append(store.put(t, "RACED", f"{VALUE}-{i}").version)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(versions) == [1, 2, 3, 4]


# ------------------------------------------------------------- SecretValue


def test_a_secret_value_never_shows_itself() -> None:
    value = SecretValue(VALUE, name="API_TOKEN", version=1)
    for shown in (repr(value), str(value), f"{value}", f"{value!r}", "%s" % value):  # noqa: UP031
        assert VALUE not in shown
        assert "hidden" in shown
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(value)
    with pytest.raises(TypeError, match="pydantic"):

        class Leaky(BaseModel):
            value: SecretValue

    assert value.reveal() == VALUE


def test_the_embedded_store_accepts_the_api_s_database(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'shared.db'}")
    db.upgrade()
    try:
        settings = _embedded_settings(tmp_path, "sqlite:///unused.db")
        store = open_secret_store(settings, database=db)
        store.put("acme", "SHARED_DB", VALUE)
        store.close()  # the caller keeps its database open
        assert open_secret_store(settings, database=db).get("acme", "SHARED_DB").reveal() == VALUE
    finally:
        db.close()
