"""Problem answers that need no Temporal: the body-size limit and its 413, the 405's `Allow`.

The body-size middleware answers before any route (or dependency) runs, so these
tests drive the app in-process over httpx's ASGI transport; nothing connects to
Temporal. `test_api_runs.py` covers the same answers over real HTTP with a server.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from api.app import create_app
from api.errors import (
    PROBLEM_CONTENT_TYPE,
    PayloadTooLarge,
    install_error_handlers,
    render_problem,
)
from tests.api_fixtures import api_settings

LIMIT = 1024


def _client(tmp_path: Path) -> httpx.AsyncClient:
    settings = api_settings(tmp_path, "unused", api_max_body_bytes=LIMIT)
    transport = httpx.ASGITransport(app=create_app(settings))
    # A JSON body to a host the API answers to: the size is all these requests get wrong.
    return httpx.AsyncClient(
        transport=transport,
        base_url="http://127.0.0.1",
        headers={"Content-Type": "application/json"},
    )


async def test_an_oversized_body_gets_the_payload_too_large_problem_before_any_route(
    tmp_path: Path,
) -> None:
    async with _client(tmp_path) as http:
        resp = await http.post("/v1/runs", content=b"x" * (LIMIT + 1))
    assert resp.status_code == 413
    assert resp.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert resp.headers["connection"] == "close"
    assert resp.json() == {
        "type": "https://agentrun.dev/problems/payload-too-large",
        "title": "Payload too large",
        "status": 413,
        "detail": f"request bodies are limited to {LIMIT} bytes (AGENTRUN_API_MAX_BODY_BYTES)",
        "instance": "/v1/runs",
    }


async def test_a_chunked_body_is_counted_as_it_arrives_and_refused_past_the_limit(
    tmp_path: Path,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * (LIMIT // 2)

    async with _client(tmp_path) as http:
        resp = await http.post("/v1/runs", content=chunks())
    assert resp.status_code == 413
    assert resp.json()["type"].endswith("/payload-too-large")


def test_render_problem_writes_an_api_errors_status_title_kind_and_extras() -> None:
    error = PayloadTooLarge("too big", limit=10)
    resp = render_problem("/v1/runs", error, headers={"Connection": "close"})
    assert resp.status_code == 413
    assert resp.headers["connection"] == "close"
    assert resp.body == (
        b'{"type":"https://agentrun.dev/problems/payload-too-large","title":"Payload too large",'
        b'"status":413,"detail":"too big","instance":"/v1/runs","limit":10}'
    )


async def test_a_405_names_every_method_the_path_serves(tmp_path: Path) -> None:
    # `/v1/runs` is two routes (GET lists, POST launches); Starlette alone would name
    # the methods of the first one only.
    async with _client(tmp_path) as http:
        resp = await http.delete("/v1/runs")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET, POST"
    assert resp.json()["detail"] == "/v1/runs supports GET, POST, not DELETE"


async def test_a_locked_or_unreachable_accounts_database_is_503_with_retry_after() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/locked")
    async def locked() -> None:
        raise OperationalError(
            "UPDATE api_keys SET last_used_at=? WHERE key_id=?",
            ("2030-01-01", "0123456789ab"),
            sqlite3.OperationalError("database is locked"),
        )

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        resp = await http.get("/locked")
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "1"
    assert resp.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert "api_keys" not in resp.text and "0123456789ab" not in resp.text
