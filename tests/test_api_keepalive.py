"""The API keeps an idle connection open for longer than its clients' pools keep it.

A client pool reuses an idle keep-alive connection until its own expiry (httpx:
5 s). A server that closes idle connections at the same age (uvicorn's default
`timeout_keep_alive` is 5 s too) races every such reuse: the request goes out on
a socket the server is closing, and the client reads nothing back
(`httpx.ReadError`). These tests hold a raw socket idle past the client's expiry,
so the outcome does not depend on timing: it is answered only if the server still
keeps the connection.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from temporalio.client import Client

from agentrun.config import Settings
from api.app import create_app
from api.server import uvicorn_config
from tests.api_fixtures import api_settings, serve_api

CLIENT_POOL_EXPIRY = httpx.Limits().keepalive_expiry
"""How long httpx (the CLI, the tests) keeps an idle connection for reuse."""
LOAD_BALANCER_IDLE = 60
"""The idle timeout of nginx upstream keep-alive and of the common cloud load balancers."""
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"


async def _status_line(reader: asyncio.StreamReader) -> bytes:
    """The status line of one response, its body read to the end (Content-Length)."""
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def test_the_default_keep_alive_outlasts_client_pools_and_load_balancers() -> None:
    default = Settings.model_fields["api_keep_alive_seconds"].default
    assert CLIENT_POOL_EXPIRY is not None
    assert default > max(CLIENT_POOL_EXPIRY, LOAD_BALANCER_IDLE)


def test_the_api_is_served_with_the_configured_keep_alive(tmp_path: Path) -> None:
    settings = api_settings(tmp_path, "unused", api_keep_alive_seconds=90)
    config = uvicorn_config(create_app(settings), settings)
    assert config.timeout_keep_alive == 90


async def test_a_connection_idle_past_the_client_pool_expiry_is_still_answered(
    client: Client, tmp_path: Path
) -> None:
    assert CLIENT_POOL_EXPIRY is not None
    settings = api_settings(tmp_path, "tq-keepalive")
    async with serve_api(settings, client) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(REQUEST)
            assert (await _status_line(reader)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(CLIENT_POOL_EXPIRY + 1.0)
            # A pool past its expiry would have opened a new connection; this one is
            # reused anyway, as a pool that outlives the server's keep-alive would.
            writer.write(REQUEST)
            await writer.drain()
            second = await asyncio.wait_for(_status_line(reader), timeout=10)
            assert second.startswith(b"HTTP/1.1 200"), second
        finally:
            writer.close()
