"""Launching runs: the one place that turns a `RunSpec` into a started workflow.

The API, the CLI and the demo all start runs through :func:`start_run`, so every
run gets the same workflow id scheme, search attributes, memo and
continue-as-new setting, and idempotent launches behave the same everywhere.

Idempotency needs no side table: with an idempotency key the run id is derived
from ``(tenant, key)``, so the workflow id itself is the lock. Temporal refuses a
second start with the same workflow id (``WorkflowAlreadyStartedError``, also
for closed runs thanks to ``REJECT_DUPLICATE``), and the spec digest kept in the
memo tells a true retry (same body) from a misuse of the key (another body).

A tenant with a concurrency quota (``slots``) gets a slot from its slots workflow
(`api.slots`) before the start, for the run's workflow id: the run starts ``held``,
or ``queued`` when the tenant queues. A start that fails gives the slot back unless
a run of that id is running (the slots workflow answers a retry for the same id
with what it has, so a retry takes no second slot). A keyed retry of a run that
exists answers that run before asking for a slot.

This module talks to Temporal only; it never reads the environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from agentrun.config import Settings
from agentrun.contracts import (
    Actor,
    RunInput,
    RunSlot,
    RunSpec,
    run_ref_from_workflow_id,
    workflow_id_for,
)
from agentrun.search_attributes import (
    SA_AGENT,
    SA_CREATED_BY,
    SA_LABELS,
    SA_MODEL,
    SA_STATUS,
    SA_TENANT,
    SA_TRACE_ID,
    label_values,
    model_label,
)
from api.slots import SlotLimit, acquire_slot, release_unless_running
from telemetry.tracing import current_trace_id
from workflows.agent_run import AgentRunWorkflow

__all__ = [
    "IdempotencyConflict",
    "StartedRun",
    "idempotent_run_id",
    "launched_by_key",
    "new_run_id",
    "run_handle",
    "start_run",
]

GOAL_PREVIEW_CHARS = 200
MEMO_SPEC_DIGEST = "spec_digest"
MEMO_GOAL = "goal"
MEMO_CREATED_BY = "created_by"
MEMO_IDEMPOTENCY_KEY = "idempotency_key"
MEMO_TRACE_ID = "trace_id"

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


class IdempotencyConflict(Exception):
    """The idempotency key was already used for a run with a different spec."""

    def __init__(self, run_id: str, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for run {run_id} with a different "
            "request body; reuse a key only to retry the exact same request, or pick a new key"
        )
        self.run_id = run_id
        self.key = key


@dataclass(frozen=True)
class StartedRun:
    run_id: str
    workflow_id: str
    created: bool
    """False when an idempotent retry found the run that the key already started."""
    spec_digest: str
    queued: bool = False
    """Started `queued`: it waits for a slot of its tenant (see `api.slots`)."""


def new_run_id() -> str:
    """A fresh, time-sortable run id: 10 chars of milliseconds + 16 random (base32).

    Lexicographic order is creation order (like a ULID), which keeps ids readable
    in listings; the random part makes collisions practically impossible.
    """
    millis = int(time.time() * 1000)
    head = "".join(_CROCKFORD[(millis >> shift) & 31] for shift in range(45, -5, -5))
    tail = "".join(secrets.choice(_CROCKFORD) for _ in range(16))
    return head + tail


def idempotent_run_id(tenant_id: str, key: str) -> str:
    """The run id an idempotency key maps to (deterministic per tenant).

    The `k-` prefix cannot appear in :func:`new_run_id` output, so keyed and
    unkeyed runs never collide.
    """
    digest = hashlib.sha256(f"{tenant_id}\x00{key}".encode()).hexdigest()
    return f"k-{digest[:32]}"


def run_handle(client: Client, tenant_id: str, run_id: str) -> WorkflowHandle[Any, Any]:
    """A handle on the *latest* Temporal run of an agent run (follows continue-as-new)."""
    return client.get_workflow_handle_for(AgentRunWorkflow.run, workflow_id_for(tenant_id, run_id))


async def start_run(
    client: Client,
    settings: Settings,
    tenant_id: str,
    spec: RunSpec,
    actor: Actor,
    idempotency_key: str | None = None,
    *,
    task_queue: str | None = None,
    slots: SlotLimit | None = None,
) -> StartedRun:
    """Start a run, or find the one an idempotency key already started.

    Raises :class:`IdempotencyConflict` when the key belongs to a run with another
    spec. Concurrent calls with the same key start exactly one workflow. With
    `slots`, raises `api.slots.SlotRefused` when the tenant is at its limit.
    """
    spec_digest = spec.spec_digest()
    run_id = idempotent_run_id(tenant_id, idempotency_key) if idempotency_key else new_run_id()
    workflow_id = workflow_id_for(tenant_id, run_id)
    queue = task_queue or settings.task_queue
    slot: RunSlot | None = None
    if slots is not None:
        if idempotency_key:
            existing = await _existing_run(client, workflow_id, spec_digest, idempotency_key)
            if existing is not None:
                return existing
        slot = await acquire_slot(
            client,
            tenant_id,
            workflow_id,
            slots,
            task_queue=queue,
            rpc_timeout=timedelta(seconds=settings.api_update_timeout_seconds),
        )
    memo: dict[str, Any] = {
        MEMO_GOAL: spec.goal[:GOAL_PREVIEW_CHARS],
        MEMO_SPEC_DIGEST: spec_digest,
        MEMO_CREATED_BY: actor.subject,
    }
    if idempotency_key:
        memo[MEMO_IDEMPOTENCY_KEY] = idempotency_key
    # The launching request's trace is the run's (the SDK's plugin carries it into
    # the workflow): in the memo and a search attribute, for the Web UI and the API.
    trace_id = current_trace_id()
    traced = [SearchAttributePair(SA_TRACE_ID, trace_id)] if trace_id else []
    if trace_id:
        memo[MEMO_TRACE_ID] = trace_id
    try:
        await client.start_workflow(
            AgentRunWorkflow.run,
            RunInput(
                run_id=run_id,
                tenant_id=tenant_id,
                spec=spec,
                created_by=actor.model_copy(update={"tenant_id": tenant_id}),
                continue_as_new_every=settings.continue_as_new_after_steps,
                slot=slot,
                idle_stop_seconds=settings.sandbox_idle_stop_seconds or None,
                local_tool_seconds=settings.local_tool_call_seconds or None,
            ),
            id=workflow_id,
            task_queue=queue,
            # A workflow id is used once, ever (within the namespace's retention):
            # that is what makes an idempotency key safe to retry after the run ended.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_TENANT, tenant_id),
                    SearchAttributePair(SA_STATUS, "queued"),
                    SearchAttributePair(SA_AGENT, spec.agent),
                    SearchAttributePair(SA_MODEL, model_label(spec)),
                    SearchAttributePair(SA_LABELS, label_values(spec)),
                    SearchAttributePair(SA_CREATED_BY, actor.subject),
                    *traced,
                ]
            ),
            memo=memo,
        )
    except WorkflowAlreadyStartedError:
        if slot is not None:
            await release_unless_running(client, tenant_id, workflow_id)
        if not idempotency_key:
            raise  # a random id collided: astronomically unlikely, let it surface
        found = await _existing_run(client, workflow_id, spec_digest, idempotency_key)
        if found is None:  # vanished in between (past retention): as good as a conflict
            raise IdempotencyConflict(run_id, idempotency_key) from None
        return found
    except BaseException:
        if slot is not None:
            # Whatever failed (an RPC error, a cancelled request): if the run did not
            # start, its slot goes back; if it did, the run holds it.
            await asyncio.shield(release_unless_running(client, tenant_id, workflow_id))
        raise
    return StartedRun(
        run_id,
        workflow_id,
        created=True,
        spec_digest=spec_digest,
        queued=slot == RunSlot.QUEUED,
    )


async def launched_by_key(
    client: Client, tenant_id: str, spec: RunSpec, idempotency_key: str
) -> StartedRun | None:
    """The run `idempotency_key` already started with this spec: a retry finds its run
    before any launch check (a secret deleted, a budget spent since cannot turn a
    retry into a refusal). None: the key started nothing yet; raises
    :class:`IdempotencyConflict` when it started a run with another spec."""
    workflow_id = workflow_id_for(tenant_id, idempotent_run_id(tenant_id, idempotency_key))
    return await _existing_run(client, workflow_id, spec.spec_digest(), idempotency_key)


async def _existing_run(
    client: Client, workflow_id: str, spec_digest: str, idempotency_key: str
) -> StartedRun | None:
    """The run an idempotency key already started (None: none); raises
    :class:`IdempotencyConflict` when it was started with another spec."""
    try:
        existing = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    _, run_id = run_ref_from_workflow_id(workflow_id)
    stored = await existing.memo_value(MEMO_SPEC_DIGEST, None)
    if stored != spec_digest:
        raise IdempotencyConflict(run_id, idempotency_key)
    return StartedRun(run_id, workflow_id, created=False, spec_digest=spec_digest)
