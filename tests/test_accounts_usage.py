"""Usage per run and per tenant, on SQLite and PostgreSQL: recording a run twice
counts it once, totals are the sum of the runs listed, cost comes from the price
table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from accounts.db import Database
from accounts.errors import InvalidInput
from accounts.usage import PriceTable, UsageLedger, period_start
from agentrun.contracts import Usage

T0 = datetime(2030, 3, 15, 10, 30, tzinfo=UTC)


def record(ledger: UsageLedger, tenant: str, run: str, i: int, **overrides: object) -> None:
    values: dict[str, object] = {
        "input_tokens": 100 * i,
        "output_tokens": 10 * i,
        "cost_usd": 0.01 * i,
        "tool_seconds": 1.5 * i,
        "sandbox_seconds": 2.0 * i,
        "finished_at": T0 + timedelta(hours=i),
    }
    ledger.record_run(tenant, run, **{**values, **overrides})  # type: ignore[arg-type]


def test_recording_a_run_again_replaces_it_instead_of_counting_twice(database: Database) -> None:
    ledger = UsageLedger(database)
    record(ledger, "acme", "r1", 1)
    record(ledger, "acme", "r1", 1)
    assert ledger.totals("acme").runs == 1
    assert ledger.totals("acme").input_tokens == 100
    record(ledger, "acme", "r1", 3)  # a later, fuller record of the same run wins
    totals = ledger.totals("acme")
    assert (totals.runs, totals.input_tokens, totals.output_tokens) == (1, 300, 30)


def test_totals_add_up_across_runs_and_match_the_runs_listed(database: Database) -> None:
    ledger = UsageLedger(database)
    for i in range(1, 5):
        record(ledger, "acme", f"r{i}", i)
    record(ledger, "beta", "r1", 50)  # another tenant's run, same run id
    totals = ledger.totals("acme")
    runs = ledger.by_run("acme")
    assert [r.run_id for r in runs] == ["r4", "r3", "r2", "r1"]  # newest first
    assert totals.runs == len(runs) == 4
    assert totals.input_tokens == sum(r.input_tokens for r in runs) == 1000
    assert totals.output_tokens == sum(r.output_tokens for r in runs) == 100
    assert totals.tokens == 1100
    assert totals.cost_usd == pytest.approx(sum(r.cost_usd for r in runs)) == pytest.approx(0.1)
    assert totals.tool_seconds == pytest.approx(15.0)
    assert totals.sandbox_seconds == pytest.approx(20.0)
    assert ledger.totals("beta").runs == 1


def test_a_period_counts_the_runs_finished_in_it(database: Database) -> None:
    ledger = UsageLedger(database)
    for i in range(1, 5):
        record(ledger, "acme", f"r{i}", i)
    since, until = T0 + timedelta(hours=2), T0 + timedelta(hours=4)
    totals = ledger.totals("acme", since=since, until=until)
    assert (totals.runs, totals.input_tokens) == (2, 500)  # r2 and r3; until is exclusive
    assert [r.run_id for r in ledger.by_run("acme", since, until)] == ["r3", "r2"]
    assert ledger.totals("nobody").runs == 0
    assert ledger.totals("nobody").cost_usd == 0.0


def test_negative_usage_or_a_bad_tenant_is_refused(database: Database) -> None:
    ledger = UsageLedger(database)
    with pytest.raises(InvalidInput, match="input_tokens"):
        record(ledger, "acme", "r1", 1, input_tokens=-1)
    with pytest.raises(InvalidInput, match="tenant"):
        record(ledger, "a/b", "r1", 1)
    assert ledger.totals("acme").runs == 0


def test_cost_comes_from_the_price_table_and_unknown_models_cost_nothing() -> None:
    table = PriceTable.from_json('{"gpt-4o": {"input": 2.5, "output": 10}}')
    usage = Usage(input_tokens=2_000_000, output_tokens=500_000)
    assert table.cost("gpt-4o", usage) == pytest.approx(5.0 + 5.0)
    assert table.cost("smollm2-135m-instruct", usage) == 0.0
    assert PriceTable.from_json(None).cost("gpt-4o", usage) == 0.0


@pytest.mark.parametrize(
    "bad", ["not json", '{"m": {"input": -1, "output": 1}}', '{"m": {"input": 1}}', "[1]"]
)
def test_a_bad_price_table_says_what_it_should_look_like(bad: str) -> None:
    with pytest.raises(InvalidInput, match="USD per million tokens"):
        PriceTable.from_json(bad)


def test_budget_periods_start_at_the_utc_day_or_month() -> None:
    assert period_start("day", T0) == datetime(2030, 3, 15, tzinfo=UTC)
    assert period_start("month", T0) == datetime(2030, 3, 1, tzinfo=UTC)
