"""Real answers about a real run match the OpenAPI document the API serves.

The fuzzer (`test_api_fuzz.py`) never gets a run to read: its runs stay queued
and its generated run ids name nothing. Here a worker runs a scripted run to the
end (model deltas streamed), and every read of it (the run, its event pages, its
artifacts, its event stream) is checked against the served document by
Schemathesis' response checks; each event-stream message is also read back into
the `SseMessage` schemas with the JSON its `data` holds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import schemathesis
from pydantic import TypeAdapter
from schemathesis.specs.openapi.checks import ignored_auth
from temporalio.client import Client

from api.schemas import SseEnd, SseMessage, SseModelDelta, SseRunEvent
from tests.api_fixtures import NOOP_TURN, Stack, api_stack, finish_turn, scripted, wait_until

SSE_MESSAGE: TypeAdapter[SseRunEvent | SseModelDelta | SseEnd] = TypeAdapter(SseMessage)


@pytest.fixture(scope="module")
async def finished(
    client: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Stack, str, Any]]:
    """A stack, a run it finished, and the document it serves."""
    async with api_stack(client, tmp_path_factory.mktemp("openapi-state")) as stack:
        spec = scripted({"content": "thinking it over " * 8, **NOOP_TURN}, finish_turn("all done"))
        run_id = (await stack.http.post("/v1/runs", json=spec)).json()["run_id"]

        async def ended() -> bool:
            body = (await stack.http.get(f"/v1/runs/{run_id}")).json()
            return bool(body["status"] == "completed")

        await wait_until(ended, timeout=60)
        document = schemathesis.openapi.from_dict((await stack.http.get("/openapi.json")).json())
        yield stack, run_id, document


def _conforms(document: Any, path: str, run_id: str, response: httpx.Response) -> None:
    """Schemathesis' response checks (status, content type, headers, schema) on `response`
    (the case carries the key the request was sent with: the operations need one).

    `ignored_auth` is left to the fuzzer (`test_api_fuzz.py`): it sends the request
    again without the key, synchronously, to a server that runs on this test's loop."""
    auth = {"Authorization": response.request.headers["authorization"]}
    case = document[path]["GET"].Case(path_parameters={"run_id": run_id}, headers=auth)
    case.validate_response(response, excluded_checks=[ignored_auth])


@pytest.mark.parametrize(
    "path",
    ["/v1/runs/{run_id}", "/v1/runs/{run_id}/events", "/v1/runs/{run_id}/artifacts"],
)
async def test_json_reads_of_a_finished_run_match_the_document(
    finished: tuple[Stack, str, Any], path: str
) -> None:
    stack, run_id, document = finished
    response = await stack.http.get(path.format(run_id=run_id))
    assert response.status_code == 200, response.text
    _conforms(document, path, run_id, response)


async def test_the_event_stream_of_a_finished_run_matches_the_document(
    finished: tuple[Stack, str, Any],
) -> None:
    stack, run_id, document = finished
    path = "/v1/runs/{run_id}/events/stream"
    response = await stack.http.get(path.format(run_id=run_id), timeout=60)
    assert response.status_code == 200, response.text
    _conforms(document, path, run_id, response)

    messages = [
        SSE_MESSAGE.validate_python(_fields(block))
        for block in response.text.split("\n\n")
        if "\ndata:" in f"\n{block}"
    ]
    kinds = {type(m) for m in messages}
    assert kinds == {SseRunEvent, SseModelDelta, SseEnd}, kinds
    for message in messages:
        if isinstance(message, SseRunEvent):
            assert message.event == message.data.type
    assert isinstance(messages[-1], SseEnd) and messages[-1].data.reason == "terminal"


def _fields(block: str) -> dict[str, Any]:
    """One SSE message as `{id, event, data}` (the shape the document gives it)."""
    fields: dict[str, Any] = {}
    for line in block.splitlines():
        name, _, value = line.partition(":")
        if name in ("id", "event", "data"):
            fields[name] = value.removeprefix(" ")
    json.loads(fields["data"])  # every `data:` is one JSON document
    return fields
