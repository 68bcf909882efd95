"""Helpers for API tests: a real uvicorn server on 127.0.0.1 plus a real worker.

The server runs in the test session's event loop (the Temporal client and the
worker live there too), listening on a free loopback port, so tests talk real
HTTP, SSE included. The scripted model is the only test double.

Authentication is on, as in production: the API bootstraps its system tenant
(`apitest`) and admin key into the state directory's SQLite database at start-up;
`api_stack` then creates one key per role through the admin API, and its `http`
client sends the operator's key (`Stack.keys`, `Stack.auth(role)` for the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import TypeAdapter
from temporalio.client import Client

from accounts.roles import Role
from agentrun.config import Settings, load_settings
from agentrun.contracts import DELTA_EVENT, RunEvent
from agentrun.temporal import connect
from api.app import create_app
from api.schemas import EventsResponse
from api.server import uvicorn_config
from tests.model_fixtures import free_port
from worker import build_worker

WEBHOOK_SECRET = "api-test-webhook-secret"  # a test key, not a credential


def api_settings(state_dir: Path, task_queue: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "task_queue": task_queue,
        "default_provider": "scripted",
        "webhook_secret": WEBHOOK_SECRET,
        # Test receivers listen on loopback, which webhooks may reach only when allowed.
        "webhook_allow_networks": ["127.0.0.1/32"],
        # Tests stop their workers mid-call on purpose (a worker that goes away); the
        # drain on SIGTERM is tests/test_worker_drain.py's.
        "worker_drain_seconds": 0,
        "sandbox_pool_size": 0,
        "dev_tenant": "apitest",
        "api_sse_poll_seconds": 0.1,
        "api_sse_keepalive_seconds": 1.0,
        "api_query_timeout_seconds": 3.0,
        "api_update_timeout_seconds": 15.0,
    }
    values.update(overrides)
    return load_settings(**values)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Tests own the process's signals; the server is stopped via should_exit.
        yield


@contextlib.asynccontextmanager
async def serve_api(
    settings: Settings, client: Client | None, app: FastAPI | None = None
) -> AsyncIterator[str]:
    """Serve `app` (default: `create_app(settings, client)`) on 127.0.0.1; yields the base URL.

    The server config is production's (`api.server.uvicorn_config`), keep-alive included."""
    port = free_port()
    config = uvicorn_config(
        app or create_app(settings, client=client),
        settings,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 10s")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


DEFAULT_ROLE = Role.OPERATOR
"""The role of the key `Stack.http` sends: launch, control, approve and read."""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def admin_headers(settings: Settings) -> dict[str, str]:
    """The bootstrap admin key of a served API's state directory, as headers."""
    return bearer(settings.admin_key_path.read_text().strip())


@dataclass
class Stack:
    """A worker and an API server sharing one task queue and one state directory."""

    settings: Settings
    url: str
    http: httpx.AsyncClient
    """Sends the `DEFAULT_ROLE` key of the stack's tenant."""
    client: Client
    state_dir: Path
    keys: dict[Role, str] = field(default_factory=dict)
    """One key per role of the stack's tenant (`settings.dev_tenant`, the system
    tenant); the admin's is the bootstrap key. Each key's subject is its role's name."""

    @property
    def tenant(self) -> str:
        return self.settings.dev_tenant

    def auth(self, role: Role) -> dict[str, str]:
        """Headers that authenticate as the stack tenant's `role` key."""
        return bearer(self.keys[role])

    async def new_key(
        self, subject: str, role: Role = DEFAULT_ROLE, *, tenant: str | None = None, **extra: Any
    ) -> str:
        """A new key (of the stack's tenant unless named), created by the admin."""
        resp = await self.http.post(
            f"/v1/admin/tenants/{tenant or self.tenant}/keys",
            json={"role": role.value, "subject": subject, **extra},
            headers=self.auth(Role.ADMIN),
        )
        assert resp.status_code == 201, resp.text
        key: str = resp.json()["api_key"]
        return key

    async def new_tenant(self, tenant: str, **quota: Any) -> str:
        """A new tenant (with `quota`) and the plaintext of an admin key of it."""
        resp = await self.http.post(
            "/v1/admin/tenants",
            json={"tenant_id": tenant, "quota": quota or None},
            headers=self.auth(Role.ADMIN),
        )
        assert resp.status_code == 201, resp.text
        return await self.new_key(f"{tenant}-admin", Role.ADMIN, tenant=tenant)


async def role_keys(url: str, settings: Settings) -> dict[Role, str]:
    """The bootstrap admin key (from its file) and a new key for every other role."""
    admin = settings.admin_key_path.read_text().strip()
    keys = {Role.ADMIN: admin}
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=bearer(admin)) as http:
        for role in Role:
            if role == Role.ADMIN:
                continue
            resp = await http.post(
                f"/v1/admin/tenants/{settings.dev_tenant}/keys",
                json={"role": role.value, "subject": role.value},
            )
            assert resp.status_code == 201, resp.text
            keys[role] = resp.json()["api_key"]
    return keys


@contextlib.asynccontextmanager
async def api_stack(
    client: Client, state_dir: Path, *, encrypted: bool = False, **overrides: Any
) -> AsyncIterator[Stack]:
    """A worker and the API on `client`; with `encrypted`, on production's client
    instead (`agentrun.temporal.connect` to `client`'s server: payloads encrypted with
    the state directory's key file), which becomes `Stack.client`."""
    task_queue = f"tq-api-{uuid.uuid4().hex[:10]}"
    settings = api_settings(state_dir, task_queue, **overrides)
    if encrypted:
        settings = settings.model_copy(
            update={
                "temporal_address": client.service_client.config.target_host,
                "temporal_namespace": client.namespace,
            }
        )
        client = await connect(settings)
    async with (
        build_worker(client, settings, task_queue=task_queue),
        serve_api(settings, client) as url,
    ):
        keys = await role_keys(url, settings) if settings.auth == "keys" else {}
        headers = bearer(keys[DEFAULT_ROLE]) if keys else {}
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
            yield Stack(settings, url, http, client, state_dir, keys)


def scripted(*turns: dict[str, Any], goal: str = "api test goal", **extra: Any) -> dict[str, Any]:
    """A RunSpec body (JSON) for the scripted model."""
    return {"goal": goal, "model": {"provider": "scripted", "script": list(turns)}, **extra}


NOOP_TURN: dict[str, Any] = {"tool_calls": [{"name": "finish", "arguments": {}}]}
"""A step that touches no sandbox: `finish` without its `answer` is a bad-arguments
tool result, so the loop goes on to the next turn."""


def finish_turn(answer: str = "done", **kw: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": "finish", "arguments": {"answer": answer}}], **kw}


def tool_turn(name: str, **arguments: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


DELTA = DELTA_EVENT
RUN_EVENT: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)


def events_in(body: Any) -> list[RunEvent]:
    """The typed events of a `GET …/events` answer (read by attribute, never by key)."""
    return EventsResponse.model_validate(body).events


@dataclass
class SseMessage:
    id: str | None
    """The resume cursor: `<seq>` or `<seq>.<step>.<n>`."""
    event: str
    data: str
    received: float
    """`time.time()` when the message was parsed (for latency measurement)."""

    def json(self) -> Any:
        return json.loads(self.data)

    def run_event(self) -> RunEvent:
        """The durable event this message carries, typed."""
        return RUN_EVENT.validate_json(self.data)

    @property
    def durable(self) -> bool:
        """A run event (not a token delta, not the closing `end`)."""
        return self.event not in (DELTA, "end")

    @property
    def cursor_seq(self) -> int:
        """The durable seq part of the cursor."""
        assert self.id is not None
        return int(self.id.split(".")[0])


@dataclass
class SseReader:
    """Parses an SSE response incrementally; keeps comments for keep-alive checks."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    async def messages(self) -> AsyncIterator[SseMessage]:
        ident: str | None = None
        event = "message"
        data: list[str] = []
        async for line in self.response.aiter_lines():
            if line == "":
                if data:
                    yield SseMessage(ident, event, "\n".join(data), time.time())
                ident, event, data = None, "message", []
            elif line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif line.startswith("retry:"):
                self.retry = int(line[6:].strip())


async def read_body(receive: Any) -> bytes:
    """The whole body of an ASGI request (for the webhook receivers tests serve)."""
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


async def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Await `predicate()` (sync or async) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)
