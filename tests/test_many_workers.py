"""Three workers, as if on three hosts, share the load and take over from one that dies.

The three `worker.py` processes each have their own state directory and share only
what a multi-host deployment shares: one Temporal server, one S3 bucket (SeaweedFS,
`AGENTRUN_ARTIFACT_STORE=s3`), one Redis for live deltas (`AGENTRUN_DELTA_STORE=redis`),
the payload key file (`AGENTRUN_PAYLOAD_KEYS_FILE`) and the Docker engine their
sandboxes run on. The API server has a fourth, empty state directory.

60 runs are launched through the API. Each appends three numbered lines to a file
in its workspace, one `shell` call per line; the second call sleeps, so many calls
are in flight at any moment. While they run, the worker that is executing a call of
a run an SSE client follows is SIGKILLed. Then:

* all 60 runs complete, and each of the three workers executed activities of many;
* every run's file holds each line exactly once (no tool call lost or repeated),
  and it is served by the API from the bucket, whichever worker stored it;
* the followed runs' SSE streams have every durable event once, in `seq` order
  without a gap, and the token deltas of their last (streamed) answer add up to it,
  although the worker that produced them is not the one that began the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.api.enums.v1 import PendingActivityState, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus

from accounts.roles import Role
from agentrun.contracts import ModelCalledEvent, RunEvent
from agentrun.payload_codec import KeyRing, write_key_ring
from agentrun.temporal import connect
from tests.api_fixtures import (
    WEBHOOK_SECRET,
    SseMessage,
    SseReader,
    api_settings,
    bearer,
    events_in,
    role_keys,
    scripted,
    serve_api,
    tool_turn,
    wait_until,
)
from tests.conftest import ROOT
from tests.redis_fixtures import RedisServer
from tests.s3_fixtures import SeaweedS3
from tests.sandbox_fixtures import leftovers
from tests.test_api_deltas import final_attempt_text

# The workers are `worker.py` processes with the real Docker sandbox; the conftest's
# marking sees only in-process workers, so this module says it itself.
pytestmark = [pytest.mark.docker, pytest.mark.slow]

RUNS = 60
FOLLOWED = 4
"""Runs an SSE client follows from their first event (launched first)."""
ANSWER = "all three lines are in count.txt, each once"
LINES = ["1", "2", "3"]


def _spec(*, streamed: bool) -> dict[str, Any]:
    """Three numbered appends (the second sleeps), then the answer: streamed as text
    token by token (the followed runs, whose deltas are checked) or by `finish`.

    The second call outlives its local attempt's budget (`AGENTRUN_LOCAL_TOOL_CALL_SECONDS`,
    2 s) by seconds: it is handed over to a normal activity, the one the test kills a
    worker under (a call already begun, re-attached to twice)."""
    calls = [
        tool_turn("shell", command="echo 1 >> count.txt"),
        tool_turn("shell", command="echo 2 >> count.txt; sleep 6"),
        tool_turn("shell", command="echo 3 >> count.txt"),
    ]
    if streamed:
        return scripted(*calls, {"content": ANSWER, "delay_seconds": 0.5}, finish="text")
    finish = {"tool_calls": [{"name": "finish", "arguments": {"answer": ANSWER}}]}
    return scripted(*calls, finish)


@dataclass
class Deployment:
    client: Client
    """On production's converter: payloads encrypted with the shared key file."""
    http: httpx.AsyncClient
    workers: list[subprocess.Popen[bytes]]
    logs: list[Path]
    task_queue: str

    def log_tail(self, chars: int = 2500) -> str:
        return "\n".join(
            f"--- worker {i} (pid {w.pid}):\n{log.read_text()[-chars:]}"
            for i, (w, log) in enumerate(zip(self.workers, self.logs, strict=True))
        )

    async def stacks(self) -> str:
        """The live workers' thread and asyncio task stacks (SIGUSR1), then their logs."""
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(2)
        return self.log_tail(chars=20000)


def _worker_env(shared: dict[str, str], state_dir: Path) -> dict[str, str]:
    return {**os.environ, **shared, "AGENTRUN_STATE_DIR": str(state_dir)}


@pytest.fixture
async def deployment(
    client: Client,
    seaweedfs: SeaweedS3,
    redis_server: RedisServer,
    sandbox_image: str,
    tmp_path: Path,
) -> AsyncIterator[Deployment]:
    task_queue = f"tq-many-{uuid.uuid4().hex[:10]}"
    namespace = f"many-{uuid.uuid4().hex[:10]}"
    keys_file = tmp_path / "payload-keys.json"
    write_key_ring(keys_file, KeyRing.generate(str(keys_file)))
    prefix = f"many-{uuid.uuid4().hex[:10]}/"
    shared = {
        **seaweedfs.env(prefix),
        "AGENTRUN_DELTA_STORE": "redis",
        "AGENTRUN_REDIS_URL": redis_server.url,
        "AGENTRUN_PAYLOAD_KEYS_FILE": str(keys_file),
        "AGENTRUN_TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "AGENTRUN_TEMPORAL_NAMESPACE": client.namespace,
        "AGENTRUN_TASK_QUEUE": task_queue,
        "AGENTRUN_DEFAULT_PROVIDER": "scripted",
        "AGENTRUN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "AGENTRUN_SANDBOX_POOL_SIZE": "0",
        # One engine serves the three "hosts" (as a remote DOCKER_HOST would), in a
        # namespace of this test's own so no other test's janitor touches it.
        "AGENTRUN_SANDBOX_NAMESPACE": namespace,
        # Workspace quotas are ext4 images on loop devices: 60 of them is beside the
        # point here (tests/test_sandbox_limits.py proves quotas).
        "AGENTRUN_SANDBOX_WORKSPACE_QUOTA": "off",
        # The teardown stops the workers; nothing of theirs is worth waiting for then.
        "AGENTRUN_WORKER_DRAIN_SECONDS": "0",
    }
    api_state = tmp_path / "api-host"
    settings = api_settings(
        api_state,
        task_queue,
        **{
            k.removeprefix("AGENTRUN_").lower(): v
            for k, v in shared.items()
            if k != "AGENTRUN_TASK_QUEUE"
        },
        api_rate_limit_burst=RUNS * 4,
    )
    workers: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    try:
        for i, log in enumerate(logs):
            workers.append(
                subprocess.Popen(
                    [sys.executable, str(ROOT / "worker.py")],
                    cwd=ROOT,
                    env=_worker_env(shared, tmp_path / f"worker-host-{i}"),
                    stdout=log.open("ab"),
                    stderr=subprocess.STDOUT,
                )
            )
        encrypted = await connect(settings)
        async with serve_api(settings, encrypted) as url:
            keys = await role_keys(url, settings)
            async with httpx.AsyncClient(
                base_url=url, timeout=60, headers=bearer(keys[Role.OPERATOR])
            ) as http:
                deployed = Deployment(encrypted, http, workers, logs, task_queue)
                await _all_polling(deployed)
                yield deployed
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        leftovers(namespace, remove=True)
    # No process kept a local artifact directory: everything went to the bucket.
    assert not settings.artifacts_path.exists()
    assert not any((tmp_path / f"worker-host-{i}" / "artifacts").exists() for i in range(3))


def _identity_of(proc: subprocess.Popen[bytes], identity: str) -> bool:
    """Whether a Temporal worker identity (`pid@host…`) is the process `proc`'s."""
    return identity.startswith(f"{proc.pid}@")


async def _all_polling(deployed: Deployment) -> None:
    """Wait until each worker process polls the task queue (so all three get work)."""
    request = DescribeTaskQueueRequest(
        namespace=deployed.client.namespace,
        task_queue=TaskQueue(name=deployed.task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    )

    async def polling() -> bool:
        for proc in deployed.workers:
            assert proc.poll() is None, f"a worker exited:\n{deployed.log_tail()}"
        pollers = (await deployed.client.workflow_service.describe_task_queue(request)).pollers
        return all(any(_identity_of(w, p.identity) for p in pollers) for w in deployed.workers)

    await wait_until(polling, timeout=90, interval=0.3)


async def _launch(http: httpx.AsyncClient, spec: dict[str, Any]) -> str:
    resp = await http.post("/v1/runs", json=spec)
    assert resp.status_code == 201, resp.text
    run_id: str = resp.json()["run_id"]
    return run_id


async def _follow(http: httpx.AsyncClient, run_id: str) -> list[SseMessage]:
    """Every message of one SSE connection from the run's start to its `end`."""
    out: list[SseMessage] = []
    async with http.stream("GET", f"/v1/runs/{run_id}/events/stream", timeout=300) as resp:
        assert resp.status_code == 200
        async for msg in SseReader(resp).messages():
            if msg.event == "end":
                return out
            out.append(msg)
    raise AssertionError(f"the stream of {run_id} ended without `end`")


async def _a_worker_mid_call(deployed: Deployment, run_ids: list[str]) -> tuple[str, int]:
    """A followed run with a tool call in flight, and the index of the worker running it."""
    for _ in range(900):
        for run_id in run_ids:
            handle = deployed.client.get_workflow_handle(await _workflow_id(deployed, run_id))
            for pending in (await handle.describe()).raw_description.pending_activities:
                if (
                    pending.activity_type.name == "dispatch_tool"
                    and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                ):
                    for i, proc in enumerate(deployed.workers):
                        if _identity_of(proc, pending.last_worker_identity):
                            return run_id, i
        await asyncio.sleep(0.1)
    raise AssertionError(f"no followed run had a tool call in flight\n{deployed.log_tail()}")


async def _workflow_id(deployed: Deployment, run_id: str) -> str:
    view = (await deployed.http.get(f"/v1/runs/{run_id}")).json()
    workflow_id: str = view["workflow_id"]
    return workflow_id


async def _activity_workers(deployed: Deployment, workflow_id: str) -> list[str]:
    """The identity of the worker that started each activity of the run, in order."""
    handle = deployed.client.get_workflow_handle(workflow_id)
    started = HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    return [
        e.activity_task_started_event_attributes.identity
        async for e in handle.fetch_history_events()
        if e.event_type == started
    ]


async def _all_closed(deployed: Deployment, workflow_ids: list[str], *, timeout: float) -> None:
    """Wait until every run's workflow is closed, asking Temporal (a describe) rather
    than the API: the API's view of a run queries it, and a query of a closed workflow
    is a replay of its whole history on a worker, 60 of them per look. On timeout, the
    message says what each open run waits for."""
    open_ids = list(workflow_ids)
    deadline = asyncio.get_running_loop().time() + timeout
    while open_ids:
        described = await asyncio.gather(
            *(deployed.client.get_workflow_handle(w).describe() for w in open_ids)
        )
        open_ids = [d.id for d in described if d.status == WorkflowExecutionStatus.RUNNING]
        if not open_ids:
            return
        if asyncio.get_running_loop().time() > deadline:
            waiting = [_pending_work(d) for d in described if d.id in open_ids]
            raise AssertionError(
                f"{len(open_ids)} runs still open after {timeout:.0f}s:\n" + "\n".join(waiting)
            )
        await asyncio.sleep(1.0)


def _pending_work(described: WorkflowExecutionDescription) -> str:
    """One line on what an open run waits for: its pending activities and workflow task."""
    raw = described.raw_description
    activities = [
        f"{a.activity_type.name}(attempt {a.attempt}, {PendingActivityState.Name(a.state)}, "
        f"last worker {a.last_worker_identity or '-'}, "
        f"last failure {a.last_failure.message[:120] or '-'})"
        for a in raw.pending_activities
    ]
    task = raw.pending_workflow_task
    workflow_task = (
        f"workflow task attempt {task.attempt} ({task.state})"
        if task.attempt
        else "no workflow task"
    )
    return f"  {described.id}: {'; '.join(activities) or 'no activity'}; {workflow_task}"


def _without_time(event: RunEvent) -> dict[str, Any]:
    return event.model_dump(mode="json", exclude={"at"})


async def _count_file(http: httpx.AsyncClient, run_id: str) -> list[str]:
    listing = (await http.get(f"/v1/runs/{run_id}/artifacts")).json()["artifacts"]
    ref = next(a for a in listing if a["name"].endswith("count.txt"))
    download = await http.get(f"/v1/runs/{run_id}/artifacts/{ref['digest']}")
    assert download.status_code == 200, download.text
    return download.text.splitlines()


async def test_three_workers_share_60_runs_and_finish_a_killed_ones_without_a_gap_or_a_repeat(
    deployment: Deployment,
) -> None:
    http = deployment.http
    followed = [await _launch(http, _spec(streamed=True)) for _ in range(FOLLOWED)]
    streams = [asyncio.create_task(_follow(http, run_id)) for run_id in followed]
    others = await asyncio.gather(
        *(_launch(http, _spec(streamed=False)) for _ in range(RUNS - FOLLOWED))
    )
    run_ids = followed + list(others)

    taken_over, victim = await _a_worker_mid_call(deployment, followed)
    killed = deployment.workers[victim]
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)

    workflow_ids = {r: await _workflow_id(deployment, r) for r in run_ids}
    try:
        await _all_closed(deployment, list(workflow_ids.values()), timeout=420)
        messages = await asyncio.wait_for(asyncio.gather(*streams), timeout=120)
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\n{await deployment.stacks()}") from None
    views = [(await http.get(f"/v1/runs/{r}")).json() for r in run_ids]

    statuses = Counter(v["status"] for v in views)
    assert statuses == {"completed": RUNS}, (statuses, deployment.log_tail())
    assert all(v["final_answer"] == ANSWER for v in views)

    # The load was spread: each worker started activities of many runs.
    ran: Counter[int] = Counter()
    identities: dict[str, list[str]] = {}
    for view in views:
        identities[view["run_id"]] = await _activity_workers(deployment, view["workflow_id"])
        for i, proc in enumerate(deployment.workers):
            if any(_identity_of(proc, ident) for ident in identities[view["run_id"]]):
                ran[i] += 1
    assert all(ran[i] >= RUNS // 10 for i in range(3)), ran

    # The run whose call was cut finished on the two survivors.
    after_kill = identities[taken_over]
    assert any(_identity_of(killed, ident) for ident in after_kill)
    assert not _identity_of(killed, after_kill[-1]), after_kill

    # No tool call lost or executed twice, in any run; the API read every file from S3.
    for run_id in run_ids:
        assert await _count_file(http, run_id) == LINES, run_id
        body = (await http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
        results = [e for e in events_in(body) if e.type == "tool.result"]
        assert len(results) == len(LINES) + (0 if run_id in followed else 1), run_id

    # The followed streams: every durable event once, gapless, the same as the log.
    for run_id, stream in zip(followed, messages, strict=True):
        durable = [m for m in stream if m.durable]
        assert [m.cursor_seq for m in durable] == list(range(1, len(durable) + 1)), run_id
        body = (await http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
        # The same events as the durable log. Their `at` may differ: a workflow task
        # that two workers ran while the third died (one completion wins) stamps its
        # events with the time of its own attempt, and the stream may show either.
        assert [_without_time(m.run_event()) for m in durable] == [
            _without_time(e) for e in events_in(body)
        ], run_id
        answer_step = max(
            e.payload.step for e in events_in(body) if isinstance(e, ModelCalledEvent)
        )
        assert final_attempt_text(stream, answer_step) == ANSWER, run_id
