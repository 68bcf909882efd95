"""The agentrun worker: one process that runs the workflow and every activity.

Configuration comes from `AGENTRUN_*` environment variables (see the README);
it is validated at start and a bad value stops the process with a message that
names the variable. Run it with `python worker.py` (or `agentrun worker`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import Worker

from activities.artifact_store import ArtifactStore, LocalArtifactStore
from activities.model_activities import ModelActivities, ModelRouter
from activities.run_activities import RunActivities
from activities.tool_activities import ToolActivities
from agentrun.config import ConfigError, Settings, load_settings
from agentrun.temporal import connect
from sandbox.base import Sandbox
from workflows.agent_run import AgentRunWorkflow

log = logging.getLogger("agentrun.worker")


def build_worker(
    client: Client,
    settings: Settings,
    *,
    sandbox: Sandbox | None = None,
    router: ModelRouter | None = None,
    store: ArtifactStore | None = None,
    task_queue: str | None = None,
) -> Worker:
    """Wire the workflow and all activities; tests pass their own queue and parts."""
    store = store or LocalArtifactStore(settings.artifacts_path)
    if sandbox is None:
        from sandbox.docker_sandbox import DockerSandbox

        sandbox = DockerSandbox(settings)
    if router is None:
        from activities.models.registry import build_providers

        router = build_providers(settings)
    models = ModelActivities(router, store)
    runs = RunActivities(store, webhook_secret=settings.webhook_secret)
    tools = ToolActivities(sandbox, store, keep_workspace_default=settings.sandbox_keep_workspace)
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=[AgentRunWorkflow],
        activities=[
            models.call_model,
            runs.init_run,
            runs.store_events,
            runs.deliver_webhook,
            tools.dispatch_tool,
            tools.sandbox_control,
            tools.store_artifact,
        ],
        # Sync activities (Docker SDK) run here; one thread per concurrent activity slot.
        activity_executor=ThreadPoolExecutor(settings.max_concurrent_activities),
        max_concurrent_activities=settings.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
    )


async def run_worker(settings: Settings) -> None:
    client = await connect(settings)
    worker = build_worker(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker polling task queue %r on %s (namespace %s)",
        settings.task_queue,
        settings.temporal_address,
        settings.temporal_namespace,
    )
    async with worker:
        await stop.wait()
    log.info("worker stopped")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"agentrun worker: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_worker(settings))
    except RuntimeError as exc:  # connection refused and friends
        print(f"agentrun worker: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
