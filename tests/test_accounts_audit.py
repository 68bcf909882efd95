"""The audit trail, on SQLite and PostgreSQL: the hash chain verifies, and altering,
deleting or truncating entries makes `verify` name where it breaks; concurrent
appends (separate engines, as separate API processes) never fork it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from accounts.audit import AuditEntry, AuditLog, entry_hash
from accounts.db import Database
from accounts.models import GENESIS_HASH

T0 = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def entry(
    i: int, *, tenant: str = "acme", actor: str = "alice", action: str = "run.create"
) -> AuditEntry:
    return AuditEntry(
        at=T0 + timedelta(seconds=i),
        tenant_id=tenant,
        actor=actor,
        on_behalf_of="end-user" if i % 2 else None,
        key_id="0123456789ab",
        action=action,
        target=f"run-{i}",
        outcome="ok",
        request_id=f"req-{i}",
    )


def fill(log: AuditLog, n: int) -> None:
    for i in range(1, n + 1):
        log.append(entry(i))


def test_appended_entries_form_a_chain_that_verifies(database: Database) -> None:
    log = AuditLog(database)
    records = [log.append(entry(i)) for i in range(1, 4)]
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]
    assert records[1].hash == entry_hash(records[0].hash, 2, entry(2))
    assert log.query("acme") == records  # read back exactly as written (times included)
    assert log.verify() is None


def test_an_empty_log_verifies(database: Database) -> None:
    assert AuditLog(database).verify() is None


def test_altering_one_entry_in_the_database_names_that_entry(database: Database) -> None:
    log = AuditLog(database)
    fill(log, 5)
    with database.session() as session:
        session.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3"))
    assert log.verify() == 3


def test_altering_an_entrys_time_is_caught(database: Database) -> None:
    log = AuditLog(database)
    fill(log, 3)
    with database.session() as session:
        session.execute(
            text("UPDATE audit_log SET at = :at WHERE seq = 2"), {"at": T0 - timedelta(days=1)}
        )
    assert log.verify() == 2


def test_rewriting_an_entry_with_a_matching_hash_breaks_the_next_link(database: Database) -> None:
    log = AuditLog(database)
    fill(log, 4)
    forged = entry(2).model_copy(update={"actor": "mallory"})
    prev = log.query(None)[0].hash
    with database.session() as session:
        session.execute(
            text("UPDATE audit_log SET actor = 'mallory', hash = :h WHERE seq = 2"),
            {"h": entry_hash(prev, 2, forged)},
        )
    assert log.verify() == 3


def test_deleting_an_entry_names_the_entry_after_the_gap(database: Database) -> None:
    log = AuditLog(database)
    fill(log, 5)
    with database.session() as session:
        session.execute(text("DELETE FROM audit_log WHERE seq = 3"))
    assert log.verify() == 4


def test_deleting_the_newest_entry_names_it(database: Database) -> None:
    log = AuditLog(database)
    fill(log, 5)
    with database.session() as session:
        session.execute(text("DELETE FROM audit_log WHERE seq = 5"))
    assert log.verify() == 5


def test_concurrent_appends_from_several_processes_never_fork_the_chain(
    database_url: str, database: Database
) -> None:
    threads, per_thread = 4, 10
    engines = [Database(database_url) for _ in range(threads)]  # one per "API process"
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def append_many(db: Database, t: int) -> None:
        try:
            start.wait()
            log = AuditLog(db)
            for i in range(per_thread):
                log.append(entry(i, actor=f"proc-{t}"))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=append_many, args=(db, t)) for t, db in enumerate(engines)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for db in engines:
        db.close()
    assert errors == []
    log = AuditLog(database)
    records = log.query(None, limit=1000)
    assert [r.seq for r in records] == list(range(1, threads * per_thread + 1))
    assert len({r.prev_hash for r in records}) == len(records)  # no two entries share a parent
    assert log.verify() is None


def test_query_filters_by_tenant_action_actor_time_and_pages(database: Database) -> None:
    log = AuditLog(database)
    log.append(entry(1, tenant="acme", actor="alice", action="run.create"))
    log.append(entry(2, tenant="beta", actor="bob", action="run.create"))
    log.append(entry(3, tenant="acme", actor="bob", action="run.cancel"))
    log.append(entry(4, tenant="acme", actor="alice", action="run.cancel"))

    def seqs(**filters: object) -> list[int]:
        tenant = filters.pop("tenant_id", "acme")
        return [r.seq for r in log.query(tenant, **filters)]  # type: ignore[arg-type]

    assert seqs() == [1, 3, 4]
    assert seqs(tenant_id=None) == [1, 2, 3, 4]
    assert seqs(tenant_id="beta") == [2]
    assert seqs(action="run.cancel") == [3, 4]
    assert seqs(actor="alice") == [1, 4]
    assert seqs(since=T0 + timedelta(seconds=3)) == [3, 4]
    assert seqs(until=T0 + timedelta(seconds=3)) == [1]
    assert seqs(after_seq=1, limit=1) == [3]
    assert seqs(after_seq=3, limit=1) == [4]


def test_a_naive_time_is_taken_as_utc() -> None:
    naive = entry(1).model_copy(update={"at": T0.replace(tzinfo=None)})
    assert AuditEntry.model_validate(naive.model_dump()).at == T0
