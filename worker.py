"""The agentrun worker: one process that runs the workflow and every activity.

Configuration comes from `AGENTRUN_*` environment variables (docs/configuration.md);
it is validated at start and a bad value stops the process with a message that
names the variable. Run it with `python worker.py` (or `agentrun worker`).

Design (why it looks like this):

* **Exit codes**: 0 stopped by a signal after draining, 1 cannot start (Temporal
  unreachable: the message names `AGENTRUN_TEMPORAL_ADDRESS`), 2 invalid
  configuration, 3 stopped by a second signal before the drain ended.
* **Stopping drains** (`AGENTRUN_WORKER_DRAIN_SECONDS`): the first SIGTERM or SIGINT
  stops polling and lets running activities finish (the SDK's graceful shutdown,
  logged as "draining N activities …" and "drained in …: F finished, C cancelled at
  the deadline"); what is still running at the deadline is cancelled (a sync
  activity sees it raised in its thread) and Temporal retries it on another worker,
  where a tool call reattaches to its command in the sandbox. A second signal ends
  the process at once (exit 3) without waiting: the cut activities are retried once
  their heartbeat timeout notices, as after a crash. So a rolling update loses no
  work and repeats none, and an operator who cannot wait still has a way out.
* **Versioning** (`AGENTRUN_WORKER_DEPLOYMENT_NAME`, `AGENTRUN_WORKER_BUILD_ID`;
  unset: unversioned, every worker serves every run). A versioned worker polls as
  one version of a Temporal Worker Deployment and serves runs once an operator
  makes that version current (README, "Stopping and upgrading workers"). Agent runs
  and their cancel-parent child are PINNED: a run ends on the build it started on,
  across continue-as-new too, so a new build needs no `workflow.patched` for runs
  already open. The tenant-slots workflow lives as long as its tenant and
  AUTO_UPGRADEs instead, so its changes still go behind patches, as do all changes
  for unversioned deployments.
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
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from wsgiref.simple_server import WSGIServer

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker, WorkerDeploymentConfig

from activities.egress_broker import EgressBroker, SecretResolver
from activities.in_flight import InFlightActivities
from activities.model_activities import ModelActivities
from activities.models.base import ModelProvider
from activities.models.registry import build_providers, with_stored_keys
from activities.run_activities import RunActivities
from activities.secret_values import SecretValues
from activities.slot_activities import SlotActivities
from activities.store_errors import StoreErrorInterceptor
from activities.tool_activities import ToolActivities
from activities.webhooks import WebhookSender
from agentrun.config import ConfigError, Settings, load_settings
from agentrun.contracts import workflow_id_for
from agentrun.payload_codec import KeyFileError
from agentrun.redaction import install_log_redaction
from agentrun.stack_dump import dump_stacks
from agentrun.temporal import connect
from agentrun.webhook_destinations import WebhookAllowList
from agentrun.workflow_runner import workflow_runner
from sandbox.base import RunRef, Sandbox, SandboxError
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from sandbox.engine import Engine, placement_problem, tls_refusal
from sandbox.owners import OwnerGone, OwnerWatch
from secretstore import SecretStore, SecretStoreError, open_secret_store
from store.artifacts import TenantStores
from store.backends import open_tenant_stores
from store.delta_log import DeltaStore, open_delta_store
from telemetry import setup_telemetry
from telemetry.logs import configure_logging
from telemetry.metrics import serve_prometheus
from telemetry.tracing import instrument_httpx
from workflows.agent_run import AgentRunWorkflow
from workflows.cancel_parent import CancelParentWorkflow
from workflows.tenant_slots import TenantSlotsWorkflow, VersionedTenantSlotsWorkflow

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


def open_sandbox(settings: Settings, engine: Engine, owner: str) -> DockerSandbox:
    """The sandbox on the engine `DOCKER_HOST` names (sandbox/engine.py), or why not;
    `owner` (the worker's Temporal identity) labels what it creates.

    Refused before connecting when `DOCKER_HOST` alone shows it cannot work; then
    connected, the engine must hold the sandbox image and, with workspace quotas on,
    mount a probe workspace of this worker's (sandbox/_quota_probe.py). Each refusal
    is one line naming the setting to change."""
    problem = placement_problem(engine, settings.sandbox_workspace_quota)
    if problem is not None:
        raise CannotStart(problem)
    try:
        sandbox = DockerSandbox(replace(sandbox_config(settings), owner=owner))
        described = sandbox.describe_engine()
    except SandboxError as exc:
        refusal = tls_refusal(exc)
        raise CannotStart(
            f"cannot use the Docker engine at {engine.describe()} (DOCKER_HOST, "
            f"DOCKER_TLS_VERIFY, DOCKER_CERT_PATH): {refusal + '; ' if refusal else ''}{exc}"
        ) from None
    try:
        sandbox.check_image()
        sandbox.check_workspace_quota()
    except SandboxError as exc:
        sandbox.close()
        raise CannotStart(f"the Docker engine at {engine.describe()}: {exc}") from None
    log.info("sandboxes on the Docker engine at %s: %s", engine.describe(), described)
    return sandbox


def secret_resolver(settings: Settings) -> SecretResolver:
    """Granted secrets' values from the deployment's store, opened on first use.

    Lazily: a worker whose runs use no secret never opens the store (nor creates its
    key file). The value stays in this process: the broker injects it upstream or
    into one command's environment, never into an activity's input or output.
    """
    lock = threading.Lock()
    opened: list[SecretStore] = []

    def resolve(tenant: str, name: str) -> str:
        with lock:
            if not opened:
                opened.append(open_secret_store(settings))
        return opened[0].get(tenant, name).reveal()

    return resolve


def build_worker(
    client: Client,
    settings: Settings,
    *,
    sandbox: Sandbox | None = None,
    router: ModelProvider | None = None,
    store: TenantStores | None = None,
    task_queue: str | None = None,
    stand_ins: Mapping[str, Callable[..., Any]] | None = None,
    deltas: DeltaStore | None = None,
    secrets: SecretResolver | SecretValues | None = None,
    in_flight: InFlightActivities | None = None,
) -> Worker:
    """Wire the workflow and all activities; tests pass their own queue and parts.

    `stand_ins` replaces activities by name (a test's `store_events` that waits for
    its cue, as temporalio's samples stand activities in), keeping the others real.
    `deltas` (default: `open_delta_store(settings)`) is closed by whoever opened it.
    `in_flight` counts the running activities for the drain's log lines.
    """
    store = store or open_tenant_stores(settings)
    if sandbox is None:
        sandbox = DockerSandbox(sandbox_config(settings))
    if router is None:
        router = build_providers(settings)
    # One door to granted values for the whole worker: the broker and env injection
    # take them from it, and redaction covers every value it handed out.
    values = (
        secrets
        if isinstance(secrets, SecretValues)
        else SecretValues(secrets or secret_resolver(settings))
    )
    if deltas is None:  # the deployment's (`AGENTRUN_DELTA_STORE`); None: models do not stream
        deltas = open_delta_store(settings)
    models = ModelActivities(
        router,
        store,
        deltas,
        max_tool_calls_per_turn=settings.max_tool_calls_per_turn,
        secrets=values,
    )
    webhooks = WebhookSender(settings.webhook_secret, WebhookAllowList.from_settings(settings))
    runs = RunActivities(store, webhooks=webhooks)
    egress = EgressBroker(
        values.value,
        WebhookAllowList.of(settings.egress_allow_hosts, settings.egress_allow_networks),
        timeout_s=settings.egress_timeout_seconds,
        max_response_bytes=settings.egress_max_response_bytes,
    )
    tools = ToolActivities(
        sandbox,
        store,
        keep_workspace_default=settings.sandbox_keep_workspace,
        egress=egress,
        secrets=values,
    )
    activities: dict[str, Callable[..., Any]] = {
        "call_model": models.call_model,
        "init_run": runs.init_run,
        "store_events": runs.store_events,
        "deliver_webhook": runs.deliver_webhook,
        "dispatch_tool": tools.dispatch_tool,
        "sandbox_control": tools.sandbox_control,
        "store_artifact": tools.store_artifact,
        "probe_runs": SlotActivities(client).probe_runs,
    }
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=registered_workflows(versioned=settings.worker_build_id is not None),
        # The sandbox, minus a per-payload trip into it (agentrun/workflow_runner.py).
        workflow_runner=workflow_runner(client.data_converter),
        activities=list({**activities, **(stand_ins or {})}.values()),
        # Counting running activities for the drain's log (outermost: it sees how each
        # ended); artifact store errors (S3) become non-retryable when retrying cannot help.
        interceptors=[*([in_flight] if in_flight else []), StoreErrorInterceptor()],
        # Sync activities (Docker SDK) run here: one thread per activity slot, and as
        # many for local ones (a tool call's first attempt, `workflows.calls`).
        activity_executor=ThreadPoolExecutor(2 * settings.max_concurrent_activities),
        max_concurrent_activities=settings.max_concurrent_activities,
        max_concurrent_local_activities=settings.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
        max_cached_workflows=settings.max_cached_workflows,
        # Versioned (AGENTRUN_WORKER_DEPLOYMENT_NAME): runs stay on the build they began on.
        deployment_config=deployment_config(settings),
        # SIGTERM drains: running activities get this long before they are cancelled.
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_drain_seconds),
    )


def registered_workflows(*, versioned: bool) -> list[type]:
    """The workflow definitions a worker registers (and the replay test replays).

    CancelParentWorkflow: a run cancelled by update or signal ends `Canceled` through
    it; on a versioned worker it is pinned like its parent, whose build it starts on
    (a child on its parent's task queue inherits the parent's pinned version).
    TenantSlotsWorkflow: a tenant's concurrent-run quota, on the runs' own queue; a
    versioned worker registers its auto-upgrading definition (`deployment_config`).
    """
    slots = VersionedTenantSlotsWorkflow if versioned else TenantSlotsWorkflow
    return [AgentRunWorkflow, CancelParentWorkflow, slots]


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """The worker's Temporal Worker Deployment version, when versioning is configured.

    Runs are pinned by default: a run's workflow tasks go to the build it started on
    until it ends, so code that changes its commands needs no `workflow.patched` for
    runs of a versioned deployment (unversioned deployments still rely on patches).
    The tenant-slots workflow, which lives as long as its tenant, upgrades instead
    (`workflows/tenant_slots.py`): a pinned one would keep the old build alive."""
    if settings.worker_deployment_name is None or settings.worker_build_id is None:
        return None
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(
            deployment_name=settings.worker_deployment_name, build_id=settings.worker_build_id
        ),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
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


OWNER_SILENT_S = 180.0
"""A worker whose poll stamp on the task queue has not moved for this long is gone,
and the other workers' janitors adopt its sandboxes (sandbox/owners.py). Temporal
stamps a poller when a poll starts and when it returns, and an idle poll returns
after a minute (`matching.longPollExpirationInterval`): three of those, so a live
worker that is merely idle is never taken for gone. Shorter than Temporal's five
minutes of poller history, though the watch does not rely on that."""


async def poller_stamps(client: Client, task_queue: str) -> dict[str, datetime] | None:
    """Each worker that polled `task_queue` for workflow or activity tasks in the last
    few minutes (Temporal's poller history, whose listing includes polls forwarded
    from the queue's other partitions), with its latest access; None when Temporal
    cannot tell."""
    stamps: dict[str, datetime] = {}
    try:
        for kind in (
            TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        ):
            described = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=client.namespace,
                    task_queue=TaskQueue(name=task_queue),
                    task_queue_type=kind,
                )
            )
            for poller in described.pollers:
                stamp = poller.last_access_time.ToDatetime(UTC)
                stamps[poller.identity] = max(stamp, stamps.get(poller.identity, stamp))
    except (RPCError, RuntimeError):  # RuntimeError: the SDK cannot connect at all
        return None
    return stamps


def owner_checker(
    client: Client,
    settings: Settings,
    loop: asyncio.AbstractEventLoop,
    *,
    silent_s: float = OWNER_SILENT_S,
) -> Callable[[], OwnerGone]:
    """Per sweep, `owner_gone` for the janitor (sandbox/_janitor.py), called from its
    thread: one look at the task queue's pollers, added to this worker's watch of
    them (sandbox/owners.py). The owner label of this worker's sandboxes is
    `client.identity`, which is also how its polls are listed (the Worker takes the
    client's identity). Temporal unreachable, or not listing this worker's own polls:
    nobody is gone, and other workers' sandboxes are kept."""
    watch = OwnerWatch(client.identity, silent_s)

    def for_this_sweep() -> OwnerGone:
        try:
            stamps = asyncio.run_coroutine_threadsafe(
                poller_stamps(client, settings.task_queue), loop
            ).result(timeout=30)
        except Exception:  # Temporal unreachable, timeout: nobody is gone
            stamps = None
        if stamps is None or client.identity not in stamps:
            log.info("janitor: cannot tell which workers poll; keeping other workers' sandboxes")
        return watch.look(stamps)

    return for_this_sweep


async def janitor_loop(client: Client, settings: Settings, sandbox: DockerSandbox) -> None:
    """Sweep this worker's Docker engine for sandboxes of runs that are gone (crashes,
    terminated workflows), so nothing leaks; also keeps the warm pool at its size.
    Another worker's sandboxes are left to it while it polls (sandbox/_janitor.py)."""
    loop = asyncio.get_running_loop()
    is_live = liveness_checker(client, settings, loop)
    owners = owner_checker(client, settings, loop)
    while True:
        await asyncio.sleep(settings.sandbox_janitor_seconds)
        try:
            report = await asyncio.to_thread(lambda: sandbox.janitor(is_live, owners()))
            if report.removed_containers or report.removed_volumes:
                log.info(
                    "janitor removed containers %s and volumes %s",
                    report.removed_containers,
                    report.removed_volumes,
                )
            sandbox.refill_pool_async()
        except Exception:
            log.exception("janitor sweep failed; trying again next period")


def serve_worker_metrics(settings: Settings) -> WSGIServer | None:
    """The worker's Prometheus endpoint (`AGENTRUN_WORKER_METRICS_PORT`; 0: none).

    A port in use (a second worker on the host) is logged, not fatal: a worker
    that cannot be scraped still runs its runs."""
    if settings.worker_metrics_port == 0:
        return None
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    try:
        server = serve_prometheus(host, port)
    except OSError as exc:
        log.warning(
            "worker metrics not served on %s:%d (AGENTRUN_WORKER_METRICS_PORT): %s",
            host,
            port,
            exc,
        )
        return None
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return server


async def run_worker(settings: Settings) -> None:
    # Traces (and metrics) per the standard OTEL_* variables; with tracing on, the
    # client carries the SDK's OpenTelemetry plugin and the worker inherits it.
    telemetry = setup_telemetry("agentrun-worker", settings)
    if telemetry.tracing.enabled:
        instrument_httpx()  # model providers', webhooks' and the egress broker's calls
    try:
        client = await connect(
            settings, runtime=telemetry.temporal_runtime(), plugins=telemetry.client_plugins()
        )
    except KeyFileError as exc:  # the payload key file: the message says how to fix it
        raise CannotStart(str(exc)) from None
    except RuntimeError as exc:  # the SDK's connection errors (refused, TLS, DNS …)
        raise CannotStart(
            f"cannot connect to Temporal at {settings.temporal_address} "
            f"(AGENTRUN_TEMPORAL_ADDRESS, namespace {settings.temporal_namespace!r}): {exc}"
        ) from None
    serve_worker_metrics(settings)
    sandbox = open_sandbox(settings, Engine.from_environ(os.environ), client.identity)
    sandbox.refill_pool_async()  # the first run's first tool call skips the cold start
    # The values the worker hands out are redacted from every log line it writes.
    values = SecretValues(secret_resolver(settings))
    install_log_redaction(values.active_redactor)
    # httpx logs every request's URL (the broker's, query included) at INFO: the
    # filter redacts values, but a URL is the tool's to choose; keep it out of logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:  # provider keys kept in the secret store (AGENTRUN_*_API_KEY_SECRET)
        settings = await asyncio.to_thread(with_stored_keys, settings, values.value)
    except SecretStoreError as exc:  # a missing or unreadable key: say which, never its value
        raise CannotStart(
            f"cannot read a model provider key from the secret store: {exc}"
        ) from None
    # Built here, not in build_worker, so that shutdown closes the providers' HTTP clients.
    router = build_providers(settings)
    deltas = open_delta_store(settings)  # local files, or Redis shared with the API servers
    in_flight = InFlightActivities()
    worker = build_worker(
        client,
        settings,
        sandbox=sandbox,
        router=router,
        secrets=values,
        deltas=deltas,
        in_flight=in_flight,
    )
    signals = Signals(asyncio.get_running_loop())
    janitor = (
        asyncio.create_task(janitor_loop(client, settings, sandbox))
        if settings.sandbox_janitor_seconds > 0
        else None
    )
    log.info(
        "worker polling task queue %r on %s (namespace %s, %s); sandbox pool %s of %d in %s",
        settings.task_queue,
        settings.temporal_address,
        settings.temporal_namespace,
        f"deployment {settings.worker_deployment_name} build {settings.worker_build_id}"
        if settings.worker_build_id
        else "unversioned",
        sandbox.config.pool_id,
        settings.sandbox_pool_size,
        settings.sandbox_namespace,
    )
    # Not `async with worker`: its exit waits for the whole drain, and a second
    # signal must be able to cut that short.
    running = asyncio.create_task(worker.run())
    first = asyncio.create_task(signals.first.wait())
    forced = asyncio.create_task(signals.second.wait())
    try:
        await asyncio.wait({running, first}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # the worker failed fatally: raise its error
            return
        await drain(worker, running, forced, in_flight, settings.worker_drain_seconds)
    finally:
        first.cancel()
        forced.cancel()
        if janitor is not None:
            janitor.cancel()
        await router.aclose()
        if deltas is not None:
            await deltas.aclose()
        sandbox.close()
        # Batched spans would die with the process (`main` ends it with os._exit).
        await asyncio.to_thread(telemetry.tracing.force_flush)
    log.info("worker stopped")


async def drain(
    worker: Worker,
    running: asyncio.Task[None],
    forced: asyncio.Task[Any],
    in_flight: InFlightActivities,
    seconds: float,
) -> None:
    """Stop taking tasks and let the running activities finish for up to `seconds`;
    the SDK cancels what is left then (a sync activity sees it in its thread, as an
    exception raised there). Raises :class:`StoppedBeforeDrained` if `forced` (a
    second signal) completes first."""
    began = time.monotonic()
    in_flight.drain_started()
    running_now = in_flight.running()
    log.info(
        "draining %d %s%s for up to %gs (AGENTRUN_WORKER_DRAIN_SECONDS); no new tasks; "
        "a second signal stops at once",
        len(running_now),
        "activity" if len(running_now) == 1 else "activities",
        f" ({', '.join(running_now)})" if running_now else "",
        seconds,
    )
    drained = asyncio.create_task(worker.shutdown())
    await asyncio.wait({drained, forced}, return_when=asyncio.FIRST_COMPLETED)
    if not drained.done():
        log.warning("stopping at once: %s still running", ", ".join(in_flight.running()) or "none")
        raise StoppedBeforeDrained
    await running
    tally = in_flight.tally()
    log.info(
        "drained in %.1fs: %d finished, %d cancelled at the deadline%s",
        time.monotonic() - began,
        tally.finished,
        tally.cancelled,
        " (Temporal retries them on other workers)" if tally.cancelled else "",
    )


class Signals:
    """SIGINT/SIGTERM: the first starts the drain, the second cuts it short. SIGUSR1
    writes every thread's and asyncio task's stack to stderr and changes nothing
    (agentrun/stack_dump.py): what a worker that seems stuck waits for."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.first = asyncio.Event()
        self.second = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._received)
        loop.add_signal_handler(signal.SIGUSR1, dump_stacks, loop, sys.stderr)

    def _received(self) -> None:
        (self.second if self.first.is_set() else self.first).set()


class StoppedBeforeDrained(Exception):
    """A second signal arrived while activities were still draining."""


def serve() -> int:
    """Run the worker until a signal stops it; the process's exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"agentrun worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format)  # JSON with trace, span, run, tenant when asked
    try:
        asyncio.run(run_worker(settings))
    except CannotStart as exc:
        # One line, whatever the cause's text holds (an engine's multi-line answer).
        print(f"agentrun worker: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except StoppedBeforeDrained:
        # As a crash would: Temporal retries the cut activities on other workers.
        print("agentrun worker: stopped by a second signal before the drain ended", file=sys.stderr)
        return 3
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
