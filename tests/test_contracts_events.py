"""Typed run events: one payload model per event type, the wire format unchanged.

Events recorded before payloads were typed (dicts, optional fields left out)
must still parse, and docs/api.md's table of event types must match the models.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from pydantic import TypeAdapter, ValidationError

from agentrun.contracts import (
    ErrorKind,
    EventPayload,
    EventsPage,
    EventType,
    LimitKind,
    RunEvent,
    RunFinishedPayload,
    RunStatus,
    StatusChangedEvent,
    TerminalReason,
    ToolResultEvent,
    ToolResultPayload,
    new_event,
)
from tests.conftest import ROOT

EVENTS: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def payload_models() -> list[type[EventPayload]]:
    seen: list[type[EventPayload]] = []
    stack = list(EventPayload.__subclasses__())
    while stack:
        model = stack.pop()
        seen.append(model)
        stack.extend(model.__subclasses__())
    return seen


def test_every_event_type_has_exactly_one_payload_model() -> None:
    types = sorted(m.event_type.value for m in payload_models())
    assert types == sorted(e.value for e in EventType)


def test_an_untyped_event_of_the_dict_era_parses_into_its_typed_model() -> None:
    # A `tool.result` as recorded before payloads were typed: optional keys absent.
    wire = (
        '{"seq":7,"type":"tool.result","at":"2026-01-02T03:04:05Z","attempt":2,'
        '"payload":{"call_id":"s1-c0","tool":"shell","ok":false,"summary":"x",'
        '"error_type":"disk"}}'
    )
    event = EVENTS.validate_json(wire)
    assert isinstance(event, ToolResultEvent)
    assert event.payload.error_type is ErrorKind.DISK
    assert event.payload.exit_code is None
    assert event.attempt == 2


def test_new_event_keeps_the_wire_field_order_and_the_payload_type() -> None:
    payload = ToolResultPayload(call_id="s1-c0", tool="shell", ok=True, summary="hi")
    event = new_event(3, AT, payload, attempt=1)
    assert isinstance(event, ToolResultEvent)
    assert list(event.model_dump()) == ["seq", "type", "at", "attempt", "payload"]
    assert EVENTS.validate_json(event.model_dump_json()) == event


def test_a_payload_that_does_not_match_its_type_is_refused() -> None:
    wire = '{"seq":1,"type":"run.finished","at":"2026-01-02T03:04:05Z","payload":{"step":1}}'
    with pytest.raises(ValidationError):
        EVENTS.validate_json(wire)


def test_events_page_round_trips_a_mixed_list_of_events() -> None:
    events = [
        new_event(1, AT, RunFinishedPayload(status=RunStatus.FAILED, reason=TerminalReason.BUDGET)),
        EVENTS.validate_python(
            {
                "seq": 2,
                "type": "run.status_changed",
                "at": AT,
                "payload": {"action": "pause", "status": "paused", "actor": "a", "reason": None},
            }
        ),
    ]
    page = EventsPage.model_validate_json(EventsPage(events=events).model_dump_json())
    assert [type(e) for e in page.events] == [type(events[0]), StatusChangedEvent]


def test_every_limit_kind_is_an_error_kind() -> None:
    assert {ErrorKind.from_limit(limit).value for limit in LimitKind} == {
        limit.value for limit in LimitKind
    }


def test_the_event_table_in_the_api_docs_matches_the_payload_models() -> None:
    docs = (ROOT / "docs" / "api.md").read_text()
    rows = re.findall(r"^\| `([a-z_.]+)` \| `(\w+Payload)` \| (.*) \|$", docs, flags=re.M)
    documented = {kind: (name, fields) for kind, name, fields in rows}
    for model in payload_models():
        fields = ", ".join(
            f"`{name}{'' if info.is_required() else '?'}`"
            for name, info in model.model_fields.items()
        )
        assert documented.get(model.event_type.value) == (model.__name__, fields)
