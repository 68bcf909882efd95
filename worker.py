"""The agentrun worker: one process that runs the workflow and every activity.

Configuration comes from `AGENTRUN_*` environment variables (docs/configuration.md);
it is validated at start and a bad value stops the process with a message that
names the variable. Run it with `python worker.py` (or `agentrun worker`).

Design (why it looks like this):

* **Exit codes**: 0 stopped by a signal, 1 cannot start (Temporal unreachable: the
  message names `AGENTRUN_TEMPORAL_ADDRESS`), 2 invalid configuration.
* **The process ends with `os._exit`** once it has flushed its output. The Temporal
  client's Rust runtime keeps Tokio threads that may still release Python objects
  while the interpreter finalizes, which aborts the process (`Fatal Python error:
  PyGILState_Release`, rc 134; temporalio/sdk-python#300). Nothing is left to
  finalize by then: the worker has stopped, providers and the sandbox are closed.

This module must not: read the environment outside :func:`main`, or be imported by
the API (it is a floor above it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.model_activities import ModelActivities
from activities.models.base import ModelProvider
from activities.models.registry import build_providers
from activities.run_activities import RunActivities
from activities.tool_activities import ToolActivities
from activities.webhooks import WebhookSender
from agentrun.config import ConfigError, Settings, load_settings
from agentrun.contracts import workflow_id_for
from agentrun.temporal import connect
from agentrun.webhook_destinations import WebhookAllowList
from sandbox.base import RunRef, Sandbox
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from store.artifacts import ArtifactStore, LocalArtifactStore
from store.delta_log import DeltaLog
from workflows.agent_run import AgentRunWorkflow
from workflows.cancel_parent import CancelParentWorkflow

log = logging.getLogger("agentrun.worker")


class CannotStart(Exception):
    """The worker cannot start; the message says what to check (a variable, a server)."""


def sandbox_config(settings: Settings) -> SandboxConfig:
    """The sandbox's part of the worker's settings (the sandbox never reads `Settings`)."""
    return SandboxConfig(
        namespace=settings.sandbox_namespace,
        image=settings.sandbox_image,
        image_allowlist=tuple(settings.sandbox_image_allowlist),
        runtime=settings.sandbox_runtime,
        pool_size=settings.sandbox_pool_size,
        memory_mb=settings.sandbox_memory_mb,
        max_memory_mb=settings.sandbox_max_memory_mb,
        cpus=settings.sandbox_cpus,
        max_cpus=settings.sandbox_max_cpus,
        pids=settings.sandbox_pids,
        max_pids=settings.sandbox_max_pids,
        workspace_mb=settings.sandbox_workspace_mb,
        max_workspace_mb=settings.sandbox_max_workspace_mb,
        allow_network=settings.sandbox_allow_network,
        output_store_bytes=settings.sandbox_output_store_bytes,
        tmp_mb=settings.sandbox_tmp_mb,
        # Absolute: dockerd, not this process, resolves the volume's device path.
        workspace_images=(
            (settings.sandbox_workspace_dir or settings.state_dir / "workspaces").resolve()
            if settings.sandbox_workspace_quota == "loop"
            else None
        ),
    )


def build_worker(
    client: Client,
    settings: Settings,
    *,
    sandbox: Sandbox | None = None,
    router: ModelProvider | None = None,
    store: ArtifactStore | None = None,
    task_queue: str | None = None,
    stand_ins: Mapping[str, Callable[..., Any]] | None = None,
) -> Worker:
    """Wire the workflow and all activities; tests pass their own queue and parts.

    `stand_ins` replaces activities by name (a test's `store_events` that waits for
    its cue, as temporalio's samples stand activities in), keeping the others real.
    """
    store = store or LocalArtifactStore(settings.artifacts_path)
    if sandbox is None:
        sandbox = DockerSandbox(sandbox_config(settings))
    if router is None:
        router = build_providers(settings)
    deltas = DeltaLog(settings.deltas_path) if settings.model_stream else None
    models = ModelActivities(
        router, store, deltas, max_tool_calls_per_turn=settings.max_tool_calls_per_turn
    )
    webhooks = WebhookSender(settings.webhook_secret, WebhookAllowList.from_settings(settings))
    runs = RunActivities(store, webhooks=webhooks)
    tools = ToolActivities(sandbox, store, keep_workspace_default=settings.sandbox_keep_workspace)
    activities: dict[str, Callable[..., Any]] = {
        "call_model": models.call_model,
        "init_run": runs.init_run,
        "store_events": runs.store_events,
        "deliver_webhook": runs.deliver_webhook,
        "dispatch_tool": tools.dispatch_tool,
        "sandbox_control": tools.sandbox_control,
        "store_artifact": tools.store_artifact,
    }
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        # CancelParentWorkflow: a run cancelled by update or signal ends `Canceled` through it.
        workflows=[AgentRunWorkflow, CancelParentWorkflow],
        activities=list({**activities, **(stand_ins or {})}.values()),
        # Sync activities (Docker SDK) run here; one thread per concurrent activity slot.
        activity_executor=ThreadPoolExecutor(settings.max_concurrent_activities),
        max_concurrent_activities=settings.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
    )


def liveness_checker(
    client: Client, settings: Settings, loop: asyncio.AbstractEventLoop
) -> Callable[[RunRef], bool]:
    """`is_live` for the janitor (called from its thread): asks Temporal about the run.

    A run is live while its workflow runs, and for `sandbox_retention_hours` after it
    ended. Anything but a clear "no such run" or "ended long ago" counts as live: the
    janitor must never remove the sandbox of a run it cannot see.
    """
    retention = timedelta(hours=settings.sandbox_retention_hours)

    async def check(run: RunRef) -> bool:
        handle = client.get_workflow_handle(workflow_id_for(run.tenant_id, run.run_id))
        try:
            desc = await handle.describe()
        except RPCError as exc:
            return exc.status != RPCStatusCode.NOT_FOUND
        if desc.status == WorkflowExecutionStatus.RUNNING or desc.close_time is None:
            return True
        return datetime.now(UTC) - desc.close_time < retention

    def is_live(run: RunRef) -> bool:
        try:
            return asyncio.run_coroutine_threadsafe(check(run), loop).result(timeout=30)
        except Exception:  # Temporal unreachable, timeout: keep the sandbox
            log.warning("janitor: cannot tell whether %s is live; keeping it", run)
            return True

    return is_live


async def janitor_loop(client: Client, settings: Settings, sandbox: DockerSandbox) -> None:
    """Sweep this worker's Docker host for sandboxes of runs that are gone (crashes,
    terminated workflows), so nothing leaks; also keeps the warm pool at its size."""
    is_live = liveness_checker(client, settings, asyncio.get_running_loop())
    while True:
        await asyncio.sleep(settings.sandbox_janitor_seconds)
        try:
            report = await asyncio.to_thread(sandbox.janitor, is_live)
            if report.removed_containers or report.removed_volumes:
                log.info(
                    "janitor removed containers %s and volumes %s",
                    report.removed_containers,
                    report.removed_volumes,
                )
            sandbox.refill_pool_async()
        except Exception:
            log.exception("janitor sweep failed; trying again next period")


async def run_worker(settings: Settings) -> None:
    try:
        client = await connect(settings)
    except RuntimeError as exc:  # the SDK's connection errors (refused, TLS, DNS …)
        raise CannotStart(
            f"cannot connect to Temporal at {settings.temporal_address} "
            f"(AGENTRUN_TEMPORAL_ADDRESS, namespace {settings.temporal_namespace!r}): {exc}"
        ) from None
    sandbox = DockerSandbox(sandbox_config(settings))
    sandbox.refill_pool_async()  # the first run's first tool call skips the cold start
    # Built here, not in build_worker, so that shutdown closes the providers' HTTP clients.
    router = build_providers(settings)
    worker = build_worker(client, settings, sandbox=sandbox, router=router)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    janitor = (
        asyncio.create_task(janitor_loop(client, settings, sandbox))
        if settings.sandbox_janitor_seconds > 0
        else None
    )
    log.info(
        "worker polling task queue %r on %s (namespace %s); sandbox pool %s of %d in %s",
        settings.task_queue,
        settings.temporal_address,
        settings.temporal_namespace,
        sandbox.config.pool_id,
        settings.sandbox_pool_size,
        settings.sandbox_namespace,
    )
    try:
        async with worker:
            await stop.wait()
    finally:
        if janitor is not None:
            janitor.cancel()
        await router.aclose()
        sandbox.close()
    log.info("worker stopped")


def serve() -> int:
    """Run the worker until a signal stops it; the process's exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"agentrun worker: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_worker(settings))
    except CannotStart as exc:
        print(f"agentrun worker: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # the SDK refusing to start the worker (namespace …)
        print(f"agentrun worker: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def main() -> NoReturn:
    """The process's entry point: serve, flush, and end without finalizing (see above)."""
    code = serve()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
