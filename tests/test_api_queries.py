"""The run listing's visibility query and cursor (`api.queries`): pure, no server.

The end-to-end listing tests (`test_api_runs.py`) prove that Temporal answers these
queries; these pin down what is sent, so a change to a clause or to a search
attribute's name shows up here as a changed string.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import TypeAdapter, ValidationError

from agentrun.contracts import RunStatus
from agentrun.search_attributes import SA_AGENT, SA_LABELS, SA_STATUS, SA_TENANT, WORKFLOW_TYPE
from api.queries import (
    CURSOR_VERSION,
    InvalidListing,
    Timestamp,
    UnknownCursor,
    build_list_query,
    decode_cursor,
    encode_cursor,
)

BASE = (
    "AgentRunTenant = 'acme' AND WorkflowType = 'AgentRunWorkflow' "
    "AND ExecutionStatus != 'ContinuedAsNew'"
)


def test_an_unfiltered_listing_asks_for_the_tenants_runs_and_not_their_continued_executions() -> (
    None
):
    assert build_list_query("acme", [], None, [], None, None) == BASE


def test_every_filter_becomes_one_quoted_clause_in_a_fixed_order() -> None:
    query = build_list_query(
        "acme",
        [RunStatus.RUNNING, RunStatus.COMPLETED],
        "default",
        ["team=docs", "env=prod"],
        datetime(2025, 1, 1, tzinfo=UTC),
        datetime(2025, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=1))),
    )
    assert query == (
        BASE
        + " AND ((AgentRunStatus = 'running' AND ExecutionStatus = 'Running')"
        + " OR AgentRunStatus = 'completed')"
        + " AND AgentRunAgent = 'default'"
        + " AND AgentRunLabels = 'team=docs' AND AgentRunLabels = 'env=prod'"
        + " AND StartTime >= '2025-01-01T00:00:00.000000Z'"
        + " AND StartTime < '2025-01-02T00:00:00.000000Z'"
    )


def test_the_query_names_the_search_attributes_from_their_one_definition() -> None:
    query = build_list_query("acme", [RunStatus.QUEUED], "a", ["k=v"], None, None)
    for name in (SA_TENANT.name, SA_STATUS.name, SA_AGENT.name, SA_LABELS.name):
        assert f"{name} = " in query
    assert f"WorkflowType = '{WORKFLOW_TYPE}'" in query


@pytest.mark.parametrize(
    ("status", "clause"),
    [
        (
            RunStatus.FAILED,
            "(AgentRunStatus = 'failed'"
            " OR ExecutionStatus IN ('Failed', 'Terminated', 'TimedOut'))",
        ),
        (RunStatus.CANCELLED, "(AgentRunStatus = 'cancelled' OR ExecutionStatus = 'Canceled')"),
        (RunStatus.COMPLETED, "AgentRunStatus = 'completed'"),
        (RunStatus.PAUSED, "(AgentRunStatus = 'paused' AND ExecutionStatus = 'Running')"),
    ],
)
def test_ended_statuses_include_executions_temporal_ended_itself(
    status: RunStatus, clause: str
) -> None:
    assert build_list_query("acme", [status], None, [], None, None) == f"{BASE} AND ({clause})"


def test_repeated_statuses_and_labels_are_sent_once() -> None:
    query = build_list_query("acme", [RunStatus.COMPLETED] * 3, None, ["k=v", "k=v"], None, None)
    assert query.count("AgentRunStatus") == 1
    assert query.count("AgentRunLabels") == 1


def test_a_naive_timestamp_is_taken_as_utc() -> None:
    naive = build_list_query("acme", [], None, [], datetime(2025, 3, 4, 5, 6, 7), None)
    aware = build_list_query("acme", [], None, [], datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC), None)
    assert naive == aware
    assert naive.endswith("StartTime >= '2025-03-04T05:06:07.000000Z'")


@pytest.mark.parametrize(
    "label",
    [
        "team='x' OR 1=1",
        'team="x"',
        "team=a\\b",
        "team=a\nb",
        "=value",
        "no-equals",
        "k" * 64 + "=v",
    ],
)
def test_a_label_that_could_break_out_of_its_literal_or_is_not_key_value_is_refused(
    label: str,
) -> None:
    with pytest.raises(InvalidListing, match="must be key=value"):
        build_list_query("acme", [], None, ["ok=1", label], None, None)


@pytest.mark.parametrize("agent", ["x' OR 'a'='a", 'x"', "x\\", "x\x00"])
def test_any_value_with_a_quote_backslash_or_control_character_is_refused(agent: str) -> None:
    with pytest.raises(InvalidListing, match="may not contain quotes"):
        build_list_query("acme", [], agent, [], None, None)


def test_a_cursor_round_trips_the_page_token_of_its_own_query() -> None:
    query = build_list_query("acme", [], None, [], None, None)
    token = bytes(range(256))
    cursor = encode_cursor(query, token)
    assert cursor.isascii() and "=" not in cursor and "+" not in cursor and "/" not in cursor
    assert decode_cursor(query, cursor) == token


def test_a_cursor_is_refused_with_other_filters() -> None:
    first = build_list_query("acme", [], None, ["team=a"], None, None)
    other = build_list_query("acme", [], None, ["team=b"], None, None)
    cursor = encode_cursor(first, b"page-2")
    with pytest.raises(InvalidListing, match="these same filters"):
        decode_cursor(other, cursor)


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-real-cursor",
        "",
        "Yz",  # the version alone
        encode_cursor(BASE, b"")[:-1],  # a tag with no token
        encode_cursor(BASE, b"x").replace("Yz", "Yj", 1),  # another version
    ],
)
def test_a_made_up_or_truncated_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidListing):
        decode_cursor(BASE, cursor)


def test_the_cursor_starts_with_its_format_version() -> None:
    assert encode_cursor(BASE, b"t").startswith("YzE")  # base64 of b"c1"
    assert CURSOR_VERSION == b"c1"


def test_timestamp_filters_take_rfc3339_strings_only() -> None:
    adapter: TypeAdapter[datetime] = TypeAdapter(Timestamp)
    assert adapter.validate_python("2025-01-01T00:00:00Z") == datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationError, match="RFC 3339"):
        adapter.validate_python("0.5")


@pytest.mark.parametrize("label", ["team=docs\n", "team\n=docs"])
def test_a_label_with_a_final_newline_is_refused(label: str) -> None:
    # Python's `$` matches before a final newline; the document's pattern does not.
    with pytest.raises(InvalidListing, match="must be key=value"):
        build_list_query("acme", [], None, [label], None, None)


def test_timestamps_of_the_first_years_keep_four_digits() -> None:
    query = build_list_query("acme", [], None, [], datetime(1, 1, 3, 0, 1), None)
    assert query.endswith("StartTime >= '0001-01-03T00:01:00.000000Z'")


def test_timestamps_whose_utc_falls_off_the_calendar_bound_at_its_ends() -> None:
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    late = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-3)))
    query = build_list_query("acme", [], None, [], early, late)
    assert "StartTime >= '0001-01-01T00:00:00.000000Z'" in query
    assert query.endswith("StartTime < '9999-12-31T23:59:59.999999Z'")


def test_a_foreign_cursor_is_an_unknown_cursor_not_a_malformed_one() -> None:
    other = build_list_query("acme", [], None, ["team=b"], None, None)
    with pytest.raises(UnknownCursor):
        decode_cursor(other, encode_cursor(BASE, b"page-2"))
