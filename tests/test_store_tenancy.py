"""A run's blobs and its tenant's prefix in the artifact store, on a real worker.

The store's own contract (both backends, the layout, the legacy fallback) is
tests/test_artifact_store_contract.py; a worker and an API sharing only S3 is
tests/test_s3_deployment.py (which also lists the bucket after a run). Here, on
the local store: where a run's blobs land, and what a worker does with a tenant id
the store refuses. The API never launches such a run (tenant ids are checked when a tenant
is created, and `AGENTRUN_DEV_TENANT` by the settings), but the launcher, the CLI
and Temporal's own tools can; the store is the wall that holds anyway.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from agentrun.contracts import ContinuedAsNewEvent, RunStatus
from api import launcher
from tests.workflow_harness import (
    ALICE,
    TENANT,
    all_events,
    call,
    finish,
    outcome,
    running_worker,
    scripted_spec,
    start_run,
    turn,
)

pytestmark = pytest.mark.docker

ESCAPE = "../../escaped"
"""Joined to `<state_dir>/artifacts/tenants/` unchecked, this is `<state_dir>/escaped`."""
BLOB = re.compile(r"[0-9a-f]{64}")


async def test_a_run_leaves_every_blob_in_its_tenants_directory_segments_included(
    client: Client, tmp_path: Path
) -> None:
    task_queue = f"tq-tenancy-{uuid.uuid4().hex[:8]}"
    spec = scripted_spec(turn(call("write_file", path="a.txt", content="a\n")), finish("ok"))
    async with running_worker(client, task_queue, tmp_path) as settings:
        # Continue as new after every step: the events before it are flushed as segments.
        handle = await start_run(client, task_queue, spec, continue_as_new_every=1)
        result = await outcome(handle)
        events = await all_events(handle, settings.artifacts_path)  # segments: tenant's view
    assert result.status == RunStatus.COMPLETED
    assert any(isinstance(e, ContinuedAsNewEvent) for e in events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    root = settings.artifacts_path
    blobs = [p for p in root.rglob("*") if BLOB.fullmatch(p.name)]
    assert blobs and all(p.is_relative_to(root / "tenants" / TENANT) for p in blobs), blobs
    digests = {p.name for p in blobs}
    assert {a.digest for a in result.artifacts} <= digests  # the file and the transcript


async def test_a_run_whose_tenant_id_could_leave_its_prefix_fails_at_once_storing_nothing(
    client: Client, tmp_path: Path
) -> None:
    task_queue = f"tq-tenancy-{uuid.uuid4().hex[:8]}"
    async with running_worker(client, task_queue, tmp_path) as settings:
        started = await launcher.start_run(
            client, settings, ESCAPE, scripted_spec(finish()), ALICE, task_queue=task_queue
        )
        handle = client.get_workflow_handle(started.workflow_id)
        result = await outcome(handle)
    assert result.reason == "error"
    assert result.error is not None and "InvalidTenantId" in result.error
    history = await handle.fetch_history()
    failures = [
        e.activity_task_failed_event_attributes.failure
        for e in history.events
        if e.HasField("activity_task_failed_event_attributes")
    ]
    # Refused for good (non-retryable): Temporal does not try the same id again.
    store_failures = [f for f in failures if f.application_failure_info.type == "InvalidTenantId"]
    assert store_failures and all(f.application_failure_info.non_retryable for f in store_failures)
    # No blob anywhere: not in the artifact directory, not where the id points.
    assert settings.state_dir == tmp_path
    assert not [p for p in tmp_path.rglob("*") if BLOB.fullmatch(p.name)]
    assert not (tmp_path / "escaped").exists()
