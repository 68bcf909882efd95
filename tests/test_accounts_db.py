"""The accounts database: the migrations build exactly the ORM's schema, on SQLite
and PostgreSQL, from an empty database; upgrading again is a no-op."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from accounts.db import Database, default_database_url
from accounts.models import GENESIS_HASH, Base


def test_migrations_take_an_empty_database_to_head_matching_the_orm(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert inspect(db.engine).get_table_names() == []
        db.upgrade()
        with db.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
            assert diff == [], f"the migrations and accounts/models.py disagree: {diff}"
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
            head = conn.execute(text("SELECT id, seq, hash FROM audit_head")).one()
            assert tuple(head) == (1, 0, GENESIS_HASH)
        db.upgrade()  # a second start migrates nothing and keeps the head row single
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_head")).scalar() == 1
    finally:
        db.close()


def test_sqlite_runs_in_wal_mode_with_foreign_keys_on(tmp_path: Path) -> None:
    db = Database(default_database_url(tmp_path / "state"))
    try:
        db.upgrade()
        assert (tmp_path / "state" / "agentrun.db").exists()
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        db.close()


def test_a_session_rolls_back_when_its_block_raises(database: Database) -> None:
    class Boom(Exception):
        pass

    try:
        with database.session() as session:
            session.execute(text("UPDATE audit_head SET seq = 99"))
            raise Boom
    except Boom:
        pass
    with database.session() as session:
        assert session.execute(text("SELECT seq FROM audit_head")).scalar() == 0


def test_a_postgresql_url_without_a_driver_means_psycopg_3() -> None:
    db = Database("postgresql://user:pw@127.0.0.1:1/x")
    try:
        assert db.engine.url.drivername == "postgresql+psycopg"
        assert db.dialect == "postgresql"
    finally:
        db.close()


def test_two_threads_migrating_two_databases_at_once_both_succeed(tmp_path: Path) -> None:
    # Alembic's `context` is process-global: the API's start-up and a worker opening
    # the secret store in the same process once tore it from under each other.
    dbs = [Database(f"sqlite:///{tmp_path / f'{i}.db'}") for i in range(8)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda db: db.upgrade(), dbs))
        for db in dbs:
            with db.engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        for db in dbs:
            db.close()
