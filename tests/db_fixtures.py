"""Fixtures for the accounts database: every store test runs on SQLite and PostgreSQL.

* ``postgres_server``: a throw-away PostgreSQL cluster for the session (`initdb -A
  trust` + `pg_ctl start` on a free 127.0.0.1 port, its socket in its own temp dir),
  from Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`;
  `scripts/setup.sh` installs it). It starts once per session (a few seconds) and is
  stopped and removed at the end. PostgreSQL refuses to run as root, so under root
  the cluster belongs to the `postgres` OS user the package creates.
* ``database_url``: parametrized ``sqlite`` (a file in the test's tmp dir) and
  ``postgresql`` (a fresh database per test, ``CREATE DATABASE``, dropped after);
  not migrated.
* ``database``: an :class:`accounts.db.Database` on it, upgraded to head.

tests/conftest.py registers this module as a plugin, so test modules request the
fixtures by name. PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from accounts.db import Database
from tests.model_fixtures import free_port

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_OS_USER = "postgres"


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian's layout)."""
    found = sorted(
        Path("/").glob(PG_BIN_GLOB.lstrip("/")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    found = [p for p in found if (p / "initdb").exists() and (p / "pg_ctl").exists()]
    if not found:
        pytest.fail(
            f"PostgreSQL is missing (no initdb/pg_ctl in {PG_BIN_GLOB}): "
            "apt-get install postgresql (scripts/setup.sh does)"
        )
    return found[-1]


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        )

    def create_database(self) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin()
    # Not under pytest's tmp dir: the postgres user must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="agentrun-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_OS_USER)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", PG_OS_USER, "--"]
    data, log = base / "data", base / "server.log"
    port = free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            logged = log.read_text() if log.exists() else ""
            pytest.fail(f"{' '.join(args[:2])} failed: {done.stderr}{done.stdout}\n{logged}")

    run(
        str(bin_dir / "initdb"),
        "-D", str(data), "-A", "trust", "-U", "postgres",
        "-E", "UTF8", "--locale=C", "--no-sync",
    )  # fmt: skip
    options = f"-k {base} -h 127.0.0.1 -p {port} -F"  # -F: no fsync, a throw-away cluster
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
    try:
        yield PostgresServer(host="127.0.0.1", port=port, user="postgres")
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty (not migrated) accounts database: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'accounts.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """An accounts :class:`Database` migrated to head, on SQLite and on PostgreSQL."""
    db = Database(database_url)
    db.upgrade()
    try:
        yield db
    finally:
        db.close()
