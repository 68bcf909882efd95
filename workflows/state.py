"""The workflow's state, in two objects: what crosses continue-as-new, and what does not.

- `LoopState` (`agentrun.contracts`, as it travels in `RunInput.carried`): all the
  loop needs to go on in a fresh Temporal run (step, usage, conversation head,
  pending tool-result digests and user messages, artifacts, deadline, unflushed
  events and flushed segments). The workflow holds it as `self._state` and carries
  it whole on continue-as-new. Durable: a new field gets a default.
- `RunLocal` (here): what one Temporal run holds as `self._local`: the pause flag
  and the cancel request (copied into `LoopState.paused`/`cancel` at continue-as-new
  and back in the next run's `__init__`, as an update can land during the hand-over),
  and, never carried, the pending approval and its decision, the run's outcome, and
  the bookkeeping of this run's own commands (webhook tasks, steps this run, the
  last status search attribute, the model call in flight, done).

This module must not: hold anything a later Temporal run of the same agent run
needs (that belongs in `LoopState`), or call `temporalio.workflow`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from agentrun.contracts import (
    ApprovalDecision,
    ControlRequest,
    ModelCallInFlight,
    PendingApproval,
    RunStatus,
    TerminalReason,
)


@dataclass
class RunLocal:
    """What one Temporal run holds beside `LoopState` (only `paused` and `cancel` carry over).

    Control requests are answered by the run that received them; the outcome fields
    are set only when the run finishes (no next run follows); the rest is bookkeeping
    of this run's own commands. A new per-run field is one line here, with a default.
    """

    paused: bool = False
    cancel: ControlRequest | None = None
    pending: PendingApproval | None = None
    decision: tuple[bool, ApprovalDecision] | None = None
    """Handed over by approve/deny (or expiry); the loop takes it and clears it."""
    reason: TerminalReason | None = None
    final_answer: str | None = None
    error: str | None = None
    finished_at: datetime | None = None
    webhooks: list[asyncio.Task[None]] = field(default_factory=list)
    steps_this_run: int = 0
    sa_status: RunStatus | None = None
    """The `AgentRunStatus` search attribute as last upserted by this run."""
    sa_steps: int | None = None
    """The step count `AgentRunSteps` holds (set by this Temporal run)."""
    model_call: ModelCallInFlight | None = None
    done: bool = False
    slot_granted: bool = False
    """A run started `queued`: its tenant's slots workflow granted it a slot."""
