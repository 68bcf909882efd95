"""A worker and an API that share only Temporal, the accounts database and S3.

The worker and the API server each get their own state directory, as if on two
hosts; the API's is empty. With `AGENTRUN_ARTIFACT_STORE=s3` the API still serves
the run's artifacts, and the events the run flushed as segments when it continued
as new, because all of it lives in the bucket (SeaweedFS, tests/s3_fixtures.py).
The model is the scripted one; the worker, the sandbox and the API are real.

Also here: refused S3 credentials fail a run at once (non-retryable, through
`activities.store_errors`) and make the API answer 503, never leaking the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from temporalio.client import Client

from accounts.roles import Role
from agentrun.config import Settings
from agentrun.contracts import ContinuedAsNewEvent, RunEvent, RunFinishedEvent
from api.errors import install_error_handlers
from store.backends import open_tenant_stores
from tests.api_fixtures import (
    api_settings,
    bearer,
    events_in,
    finish_turn,
    role_keys,
    scripted,
    serve_api,
    tool_turn,
    wait_until,
)
from tests.s3_fixtures import SeaweedS3
from tests.workflow_harness import finish, outcome, running_worker, scripted_spec, start_run
from worker import build_worker


def _s3_fields(settings: Settings) -> dict[str, Any]:
    """The artifact store settings alone, to pass on to another process's settings."""
    return {
        k: v for k, v in settings.model_dump().items() if k.startswith(("artifact_store", "s3_"))
    }


def _keys(s3: SeaweedS3, prefix: str) -> list[str]:
    """Every key under `prefix` in the bucket, as an operator's listing shows them."""
    pages = s3.client().get_paginator("list_objects_v2")
    return [
        obj["Key"]
        for page in pages.paginate(Bucket=s3.bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]


@dataclass
class _Deployment:
    """A worker's and an API's settings: separate state directories, one bucket prefix."""

    prefix: str
    on_worker: Settings
    on_api: Settings
    task_queue: str


def _deployment(seaweedfs: SeaweedS3, tmp_path: Path) -> _Deployment:
    task_queue = f"tq-s3-{uuid.uuid4().hex[:10]}"
    prefix = f"deploy-{uuid.uuid4().hex[:10]}/"
    shared: dict[str, Any] = {
        **_s3_fields(seaweedfs.settings(tmp_path, prefix=prefix)),
        # The accounts database is a server in production; here one SQLite file both use.
        "database_url": f"sqlite:///{tmp_path / 'accounts.db'}",
        # Continue as new after every step, so events are flushed to S3 as segments.
        "continue_as_new_after_steps": 1,
    }
    return _Deployment(
        prefix=prefix,
        on_worker=api_settings(tmp_path / "worker-state", task_queue, **shared),
        on_api=api_settings(tmp_path / "api-state", task_queue, **shared),
        task_queue=task_queue,
    )


CONTENT = "written on the worker's host\n"


async def _completed_run(http: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    """Launch a run writing `report.txt`, wait for it; its id and the file's artifact."""
    spec = scripted(tool_turn("write_file", path="report.txt", content=CONTENT), finish_turn("ok"))
    resp = await http.post("/v1/runs", json=spec)
    assert resp.status_code == 201, resp.text
    run_id = str(resp.json()["run_id"])

    async def completed() -> Any:
        body = (await http.get(f"/v1/runs/{run_id}")).json()
        return body if body.get("status") == "completed" else None

    view = await wait_until(completed, timeout=120)
    assert view["final_answer"] == "ok"
    listing = (await http.get(f"/v1/runs/{run_id}/artifacts")).json()["artifacts"]
    ref: dict[str, Any] = next(a for a in listing if a["name"].endswith("report.txt"))
    assert ref["digest"] == hashlib.sha256(CONTENT.encode()).hexdigest()
    return run_id, ref


async def _served(http: httpx.AsyncClient, run_id: str, digest: str) -> list[RunEvent]:
    """Check the API serves the artifact; every event of the run, from seq 1 on."""
    download = await http.get(f"/v1/runs/{run_id}/artifacts/{digest}")
    assert download.status_code == 200, download.text
    assert download.content == CONTENT.encode()
    body = (await http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
    events = events_in(body)
    # Every event from seq 1 on, across the continue-as-new: the ones before it
    # could only come from segments in the bucket.
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert any(isinstance(e, ContinuedAsNewEvent) for e in events)
    assert isinstance(events[-1], RunFinishedEvent)
    return events


@pytest.mark.docker
async def test_an_api_with_an_empty_state_dir_serves_artifacts_and_events_a_worker_wrote_to_s3(
    client: Client, seaweedfs: SeaweedS3, sandbox_image: str, tmp_path: Path
) -> None:
    dep = _deployment(seaweedfs, tmp_path)
    async with (
        build_worker(client, dep.on_worker, task_queue=dep.task_queue),
        serve_api(dep.on_api, client) as url,
    ):
        keys = await role_keys(url, dep.on_api)
        async with httpx.AsyncClient(
            base_url=url, timeout=30, headers=bearer(keys[Role.OPERATOR])
        ) as http:
            run_id, ref = await _completed_run(http)
            await _served(http, run_id, ref["digest"])

    # Everything the run stored (its conversation, tool arguments, event segments and
    # artifacts) is under its tenant's prefix, and nothing where keys went before.
    tenant = dep.on_api.dev_tenant  # the keys' tenant, so the run's
    scoped = f"{dep.prefix}tenants/{tenant}/blobs/"
    keys_stored = _keys(seaweedfs, dep.prefix)
    assert len(keys_stored) > 5 and all(k.startswith(scoped) for k in keys_stored), keys_stored
    digest = ref["digest"]
    assert f"{scoped}{digest[:2]}/{digest[2:4]}/{digest}" in keys_stored
    # Neither process made (let alone read) a local artifact directory.
    assert not dep.on_api.artifacts_path.exists()
    assert not dep.on_worker.artifacts_path.exists()


@pytest.mark.docker
async def test_an_api_serves_a_run_whose_blobs_were_stored_before_tenant_prefixes(
    client: Client, seaweedfs: SeaweedS3, sandbox_image: str, tmp_path: Path
) -> None:
    """The legacy fallback end to end: the run's blobs are moved to the unscoped keys
    an older worker wrote (`<prefix>blobs/…`), and a freshly started API (no cached
    segment) still serves its artifact and every event."""
    dep = _deployment(seaweedfs, tmp_path)
    async with build_worker(client, dep.on_worker, task_queue=dep.task_queue):
        async with serve_api(dep.on_api, client) as url:
            keys = await role_keys(url, dep.on_api)
            async with httpx.AsyncClient(
                base_url=url, timeout=30, headers=bearer(keys[Role.OPERATOR])
            ) as http:
                run_id, ref = await _completed_run(http)

        s3 = seaweedfs.client()
        scoped = f"{dep.prefix}tenants/{dep.on_api.dev_tenant}/"
        moved = _keys(seaweedfs, scoped)
        for key in moved:
            legacy = dep.prefix + key.removeprefix(scoped)
            s3.copy_object(
                Bucket=seaweedfs.bucket,
                Key=legacy,
                CopySource={"Bucket": seaweedfs.bucket, "Key": key},
            )
            s3.delete_object(Bucket=seaweedfs.bucket, Key=key)
        assert moved and not _keys(seaweedfs, scoped)

        async with (
            serve_api(dep.on_api, client) as url,
            httpx.AsyncClient(
                base_url=url, timeout=30, headers=bearer(keys[Role.OPERATOR])
            ) as http,
        ):
            await _served(http, run_id, ref["digest"])
        # Reads fall back; nothing was written back under the tenant's prefix.
        assert not _keys(seaweedfs, scoped)


@pytest.mark.docker
async def test_refused_s3_credentials_fail_the_run_at_once_instead_of_retrying(
    client: Client, seaweedfs: SeaweedS3, tmp_path: Path
) -> None:
    """`activities.store_errors`: a misconfigured store is a non-retryable failure
    naming the problem (retried, the run would hang until its activity timed out)."""
    task_queue = f"tq-s3-{uuid.uuid4().hex[:10]}"
    settings = seaweedfs.settings(tmp_path, s3_secret_access_key="not-the-secret")
    async with running_worker(client, task_queue, tmp_path, **_s3_fields(settings)):
        handle = await start_run(client, task_queue, scripted_spec(finish()))
        result = await asyncio.wait_for(outcome(handle), timeout=60)
    assert result.reason == "error"
    assert result.error is not None and "ArtifactStoreMisconfigured" in result.error
    assert "not-the-secret" not in result.error
    history = await handle.fetch_history()
    failures = [
        e.activity_task_failed_event_attributes.failure
        for e in history.events
        if e.HasField("activity_task_failed_event_attributes")
    ]
    assert failures and all(
        f.application_failure_info.type == "ArtifactStoreMisconfigured"
        and f.application_failure_info.non_retryable
        for f in failures
    )


async def test_the_api_answers_503_without_the_secret_when_s3_refuses_it(
    seaweedfs: SeaweedS3, tmp_path: Path
) -> None:
    """`api.errors`: a store error is a 503 problem naming the bucket, never a 500."""
    settings = seaweedfs.settings(tmp_path, s3_secret_access_key="not-the-secret")
    store = open_tenant_stores(settings).for_tenant("acme")
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/blob")
    async def blob() -> dict[str, str]:
        return {"digest": await asyncio.to_thread(store.put, b"refused")}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        resp = await http.get("/blob")
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert seaweedfs.bucket in resp.json()["detail"]
    assert "not-the-secret" not in resp.text
