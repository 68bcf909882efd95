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
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from temporalio.client import Client

from accounts.roles import Role
from agentrun.config import Settings
from agentrun.contracts import ContinuedAsNewEvent, RunFinishedEvent
from api.errors import install_error_handlers
from store.backends import open_artifact_store
from store.s3 import S3ArtifactStore
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


@pytest.mark.docker
async def test_an_api_with_an_empty_state_dir_serves_artifacts_and_events_a_worker_wrote_to_s3(
    client: Client, seaweedfs: SeaweedS3, sandbox_image: str, tmp_path: Path
) -> None:
    task_queue = f"tq-s3-{uuid.uuid4().hex[:10]}"
    prefix = f"deploy-{uuid.uuid4().hex[:10]}/"
    shared: dict[str, Any] = {
        **_s3_fields(seaweedfs.settings(tmp_path, prefix=prefix)),
        # The accounts database is a server in production; here one SQLite file both use.
        "database_url": f"sqlite:///{tmp_path / 'accounts.db'}",
        # Continue as new after every step, so events are flushed to S3 as segments.
        "continue_as_new_after_steps": 1,
    }
    worker_state, api_state = tmp_path / "worker-state", tmp_path / "api-state"
    on_worker = api_settings(worker_state, task_queue, **shared)
    on_api = api_settings(api_state, task_queue, **shared)
    content = "written on the worker's host\n"
    spec = scripted(tool_turn("write_file", path="report.txt", content=content), finish_turn("ok"))

    async with (
        build_worker(client, on_worker, task_queue=task_queue),
        serve_api(on_api, client) as url,
    ):
        keys = await role_keys(url, on_api)
        async with httpx.AsyncClient(
            base_url=url, timeout=30, headers=bearer(keys[Role.OPERATOR])
        ) as http:
            resp = await http.post("/v1/runs", json=spec)
            assert resp.status_code == 201, resp.text
            run_id = resp.json()["run_id"]

            async def completed() -> Any:
                body = (await http.get(f"/v1/runs/{run_id}")).json()
                return body if body.get("status") == "completed" else None

            view = await wait_until(completed, timeout=120)
            assert view["final_answer"] == "ok"

            listing = (await http.get(f"/v1/runs/{run_id}/artifacts")).json()["artifacts"]
            ref = next(a for a in listing if a["name"].endswith("report.txt"))
            assert ref["digest"] == hashlib.sha256(content.encode()).hexdigest()
            download = await http.get(f"/v1/runs/{run_id}/artifacts/{ref['digest']}")
            assert download.status_code == 200, download.text
            assert download.content == content.encode()

            body = (await http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
            events = events_in(body)

    # Every event from seq 1 on, across the continue-as-new: the ones before it
    # could only come from segments in the bucket.
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert any(isinstance(e, ContinuedAsNewEvent) for e in events)
    assert isinstance(events[-1], RunFinishedEvent)
    # The blobs are in the bucket, under the deployment's prefix.
    store = open_artifact_store(on_api)
    assert isinstance(store, S3ArtifactStore) and store.exists(ref["digest"])
    # Neither process made (let alone read) a local artifact directory.
    assert not on_api.artifacts_path.exists()
    assert not on_worker.artifacts_path.exists()


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
    store = open_artifact_store(settings)
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
