"""What docs/api.md shows a client matches what the API does, checked against a real
stack (worker, API, Temporal) so the guide cannot drift from the behaviour again.

What they guard (issue 10): the guide said an unparseable body is a 400 (it is a 422
`json_invalid`), and showed `run.status_changed` as every run's second event (it is
`model.started`).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client

from tests.api_fixtures import Stack, api_stack, events_in, finish_turn, scripted, wait_until
from tests.conftest import ROOT

GUIDE = ROOT / "docs" / "api.md"


@pytest.fixture(scope="module")
async def stack(client: Client, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with api_stack(client, tmp_path_factory.mktemp("docs-claims")) as stack:
        yield stack


def documented_status(when: str) -> int:
    """The status the guide's error table gives for the row whose text has `when`."""
    rows = re.findall(r"^\| (\d{3}) \| (.+) \|$", GUIDE.read_text(), flags=re.M)
    return next(int(code) for code, text in rows if when in text)


def documented_stream_events() -> list[tuple[str, str]]:
    """(event name, data) of the guide's first event-stream example, in order."""
    section = GUIDE.read_text().split("## Following a run: server-sent events", 1)[1]
    example = section.split("```text", 1)[1].split("```", 1)[0]
    return re.findall(r"^event: (\S+)\ndata: (.*)$", example, flags=re.M)


async def test_an_unparseable_body_gets_the_status_the_guide_gives(stack: Stack) -> None:
    response = await stack.http.post(
        "/v1/runs", content=b'{"goal": "x",', headers={"content-type": "application/json"}
    )
    assert response.status_code == documented_status("not parseable"), response.text
    assert response.json()["errors"][0]["type"] == "json_invalid"


async def test_the_guide_shows_the_first_events_of_a_run_in_their_real_order(stack: Stack) -> None:
    run_id = (await stack.http.post("/v1/runs", json=scripted(finish_turn("ok")))).json()["run_id"]

    async def ended() -> bool:
        body = (await stack.http.get(f"/v1/runs/{run_id}")).json()
        return bool(body["status"] == "completed")

    await wait_until(ended, timeout=60)
    body = (await stack.http.get(f"/v1/runs/{run_id}/events")).json()
    events = [str(event.type.value) for event in events_in(body)]
    shown = documented_stream_events()
    # The example shows the first two events, a keep-alive, then the run's end.
    assert [name for name, _ in shown[:2]] == events[:2], (shown, events)
    assert [name for name, _ in shown[-2:]] == [events[-1], "end"], (shown, events)
    second = body["events"][1]
    assert json.loads(shown[1][1])["payload"] == second["payload"], (shown[1], second)
