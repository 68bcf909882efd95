"""Launching runs: the one place that turns a `RunSpec` into a started workflow.

The API, the CLI and the demo all start runs through :func:`start_run`, so every
run gets the same workflow id scheme, search attributes, memo and
continue-as-new setting, and idempotent launches behave the same everywhere.

Idempotency needs no side table: with an idempotency key the run id is derived
from ``(tenant, key)``, so the workflow id itself is the lock. Temporal refuses a
second start with the same workflow id (``WorkflowAlreadyStartedError``, also
for closed runs thanks to ``REJECT_DUPLICATE``), and the spec digest kept in the
memo tells a true retry (same body) from a misuse of the key (another body).

This module talks to Temporal only; it never reads the environment.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from agentrun.config import Settings
from agentrun.contracts import Actor, RunInput, RunSpec, workflow_id_for
from agentrun.search_attributes import (
    SA_AGENT,
    SA_CREATED_BY,
    SA_LABELS,
    SA_MODEL,
    SA_STATUS,
    SA_TENANT,
    label_values,
    model_label,
)
from workflows.agent_run import AgentRunWorkflow

__all__ = [
    "IdempotencyConflict",
    "StartedRun",
    "idempotent_run_id",
    "new_run_id",
    "run_handle",
    "start_run",
]

GOAL_PREVIEW_CHARS = 200
MEMO_SPEC_DIGEST = "spec_digest"
MEMO_GOAL = "goal"
MEMO_CREATED_BY = "created_by"
MEMO_IDEMPOTENCY_KEY = "idempotency_key"

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
) -> StartedRun:
    """Start a run, or find the one an idempotency key already started.

    Raises :class:`IdempotencyConflict` when the key belongs to a run with another
    spec. Concurrent calls with the same key start exactly one workflow.
    """
    spec_digest = spec.spec_digest()
    run_id = idempotent_run_id(tenant_id, idempotency_key) if idempotency_key else new_run_id()
    workflow_id = workflow_id_for(tenant_id, run_id)
    memo: dict[str, Any] = {
        MEMO_GOAL: spec.goal[:GOAL_PREVIEW_CHARS],
        MEMO_SPEC_DIGEST: spec_digest,
        MEMO_CREATED_BY: actor.subject,
    }
    if idempotency_key:
        memo[MEMO_IDEMPOTENCY_KEY] = idempotency_key
    try:
        await client.start_workflow(
            AgentRunWorkflow.run,
            RunInput(
                run_id=run_id,
                tenant_id=tenant_id,
                spec=spec,
                created_by=actor.model_copy(update={"tenant_id": tenant_id}),
                continue_as_new_every=settings.continue_as_new_after_steps,
            ),
            id=workflow_id,
            task_queue=task_queue or settings.task_queue,
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
                ]
            ),
            memo=memo,
        )
    except WorkflowAlreadyStartedError:
        if not idempotency_key:
            raise  # a random id collided: astronomically unlikely, let it surface
        existing = await client.get_workflow_handle(workflow_id).describe()
        stored = await existing.memo_value(MEMO_SPEC_DIGEST, None)
        if stored != spec_digest:
            raise IdempotencyConflict(run_id, idempotency_key) from None
        return StartedRun(run_id, workflow_id, created=False, spec_digest=spec_digest)
    return StartedRun(run_id, workflow_id, created=True, spec_digest=spec_digest)
