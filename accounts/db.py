"""The accounts database: one SQLAlchemy engine, sessions, and the migrations.

A SQLite file in the state directory is the embedded default; PostgreSQL
(`postgresql+psycopg://…`) is for production. The same code and the same Alembic
migrations serve both, and the test suite runs every store test against both.

Design (why it looks like this):

* **Synchronous SQLAlchemy.** Every query is short; the API calls the stores through
  `asyncio.to_thread`, so no async driver is needed for either database.
* **SQLite is made a well-behaved concurrent database**: WAL (readers never wait for
  the writer), foreign keys on, a busy timeout (a writer waits for the lock instead
  of failing), and transactions that really begin at `BEGIN` (pysqlite's own
  handling would run the first reads outside the transaction). A session opened
  with `write_lock=True` begins with `BEGIN IMMEDIATE`, so it holds the write lock
  from its first read: what PostgreSQL's `SELECT … FOR UPDATE` gives the audit
  chain there.
* **Migrations run programmatically** (`upgrade`): the Alembic scripts ship inside
  the package (`accounts/migrations`) and the config is built in code, so no
  `alembic.ini` is needed at runtime. Concurrent upgrades (API and worker starting
  together) are serialised: a transaction-scoped advisory lock on PostgreSQL, the
  write lock on SQLite.
* `postgresql://` and `postgres://` URLs are taken to mean psycopg 3, the driver
  agentrun installs (SQLAlchemy's default for them, psycopg2, is not installed).

This module must not: know about tenants, keys or the API; log a URL (it may hold
a password).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""The Alembic script directory, shipped with the package."""

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the write lock before failing."""

_MIGRATION_LOCK = 0x61676E74
"""PostgreSQL advisory lock key serialising `upgrade` across processes ("agnt")."""

_UPGRADE_IN_PROCESS = threading.Lock()
"""Alembic's `context` is one module-level proxy per process: two threads migrating
at once (the API's lifespan and a worker opening the secret store) would swap it
under each other, whatever database each migrates."""

_IMMEDIATE = "agentrun_sqlite_immediate"
"""Connection execution option: begin the transaction with `BEGIN IMMEDIATE`."""


def default_database_url(state_dir: Path) -> str:
    """The embedded default: a SQLite file in the state directory."""
    return f"sqlite:///{Path(state_dir).resolve() / 'agentrun.db'}"


def _normalise(url: str) -> URL:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


class Database:
    """An engine on `url`, sessions on it, and its migrations.

    >>> db = Database("sqlite:///.state/agentrun.db")
    >>> db.upgrade()
    >>> with db.session() as s:
    ...     s.scalars(select(TenantRow)).all()
    """

    def __init__(self, url: str) -> None:
        parsed = _normalise(url)
        self.dialect = parsed.get_backend_name()
        """`sqlite` or `postgresql`."""
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                parsed,
                connect_args={
                    "check_same_thread": False,  # pooled; to_thread moves it between threads
                    "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                },
            )
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(parsed, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self, *, write_lock: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error.

        `write_lock=True` takes SQLite's write lock at the start (`BEGIN IMMEDIATE`),
        for read-then-write sequences that must not interleave with another
        process's; on PostgreSQL, lock the rows read with `with_for_update()`.
        """
        with self._sessions() as session:
            if write_lock and self.dialect == "sqlite":
                session.connection(execution_options={_IMMEDIATE: True})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def upgrade(self, revision: str = "head") -> None:
        """Run the Alembic migrations up to `revision` (all of them by default)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with _UPGRADE_IN_PROCESS, self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = conn.execution_options(**{_IMMEDIATE: True})
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
                config.attributes["connection"] = conn
                command.upgrade(config, revision)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
    # Leave transactions to the "begin" listener below (pysqlite would otherwise
    # begin late, after a transaction's first reads).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    options: dict[str, Any] = dict(conn.get_execution_options())
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_IMMEDIATE) else "BEGIN")
