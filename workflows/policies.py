"""How the workflow calls its activities: retry policies, timeouts and patch markers.

Every activity call in `workflows/` states its timeouts and one of the named retry
policies below; each says why it looks the way it does. They are module constants
so a reader (and the replay tests) see one value per kind of side effect.

Changing a value here is safe for runs in flight (retry policies and timeouts are
not compared on replay), but changing *which* activities run or their order is
not: that needs a `workflow.patched` marker like the ones at the bottom.

This module must not: call `temporalio.workflow` (it is imported by pure code and
tests), or read settings (the worker's configuration never reaches workflow code).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

# --- retry policies: one per kind of side effect, each with the reason it looks so.
MODEL_RETRY = RetryPolicy(
    # Providers rate-limit and fail transiently; back off up to a minute. Permanent
    # errors (auth, validation) are raised non-retryable by the provider classifier.
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=8,
)
TOOL_RETRY = RetryPolicy(
    # Only infrastructure failures retry (Docker down, worker crash); exec is
    # exactly-once per call id, so a retry re-attaches instead of re-running.
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
)
LOCAL_TOOL_RETRY = RetryPolicy(
    # One attempt: whatever makes it fail or run long (Docker busy, a slow command),
    # the normal activity it hands over to retries with `TOOL_RETRY`, heartbeating.
    maximum_attempts=1,
)
STORE_RETRY = RetryPolicy(
    # Local or object-store writes: quick, idempotent (content-addressed).
    initial_interval=timedelta(milliseconds=500),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=10,
)
WEBHOOK_RETRY = RetryPolicy(
    # Receivers go down; deliveries are signed and idempotent by event seq.
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=8,
)

# --- timeouts: start-to-close of one attempt, per activity.
HEARTBEAT = timedelta(seconds=10)
"""Long activities heartbeat every ~2 s; a worker that dies is noticed within this."""
SHORT_TIMEOUT = timedelta(seconds=30)
"""The longest start-to-close of an activity that does not heartbeat: a dead worker
holding it is noticed within this (the others are noticed within `HEARTBEAT`)."""
INIT_RUN_TIMEOUT = timedelta(seconds=60)
"""Writes the system prompt, goal and script to the artifact store; it heartbeats, so
a dead worker is noticed within `HEARTBEAT`, and this only bounds a stalled store."""
MODEL_CALL_TIMEOUT = timedelta(minutes=10)
"""A long streamed reply from a slow model; the heartbeat catches a dead worker sooner."""
TOOL_GRACE = timedelta(seconds=120)
"""Added to the run's own tool timeout: container start-up and output upload."""
COLLECT_ARTIFACTS_TIMEOUT = timedelta(minutes=5)
"""Collecting a whole workspace (and the transcript) into the artifact store; heartbeats."""
SANDBOX_CONTROL_TIMEOUT = timedelta(minutes=2)
"""Pausing, resuming or removing a container; Docker can be slow under load. It
heartbeats, so a dead worker costs `HEARTBEAT`, not this."""
STORE_EVENTS_TIMEOUT = timedelta(seconds=60)
"""One segment of events (the steps of one Temporal run) written to the artifact store;
it heartbeats."""
WEBHOOK_TIMEOUT = timedelta(seconds=30)
"""One delivery attempt (no heartbeat: at most `SHORT_TIMEOUT`); a receiver slower
than this is retried later."""

CANCEL_PARENT_TIMEOUT = timedelta(minutes=5)
"""How long a cancelled run waits for `CancelParentWorkflow` to have Temporal cancel
it (a child run on the run's own queue: seconds); past it the run ends `Completed`."""

# --- history: when a Temporal run hands over to a fresh one (continue-as-new).
CONTINUE_AS_NEW_HISTORY_EVENTS = 10_000
"""Continue-as-new past this many history events even if Temporal does not suggest it
(its suggestion is server configuration, 4,096 events by default). Temporal fails a
run at 51,200 events; a capped turn adds at most ~6 per tool call, so checking
between calls leaves a wide margin."""

# --- workflow.patched markers: each names the runs it protects.
PATCH_MODEL_STARTED = "model-started-event"
"""Runs started before `model.started` existed replay without it (same event seqs)."""
PATCH_DECISION_STATUS = "decision-answers-new-status"
"""approve/deny answered `awaiting_approval` before; now the status the run moved to."""
PATCH_TURN_CONTINUE_AS_NEW = "continue-as-new-within-turn"
"""Runs started before it ran every call of a turn however full their history, and
continued-as-new only when Temporal suggested it or after N steps: they replay so.
Newer runs also continue between two calls of a turn, and past
`CONTINUE_AS_NEW_HISTORY_EVENTS`. Asked only when the history is full, so runs that
never fill it carry no marker."""
PATCH_TEMPORAL_OUTCOME = "temporal-status-matches-outcome"
"""Runs started before it ended as Temporal `Completed` whatever their outcome (the
cancel update and failures included); newer ones end `Failed` or `Canceled` as their
outcome says (`workflows.outcome`). Asked once, when the run has finished."""
PATCH_FINISH_MODE = "finish-mode"
"""Runs started before it took any reply without tool calls as the final answer; newer
ones take it only in `finish: text` mode and when it is not empty, and otherwise ask the
model to call a tool. Asked only when a reply calls no tool."""
PATCH_LOCAL_TOOLS = "tool-calls-local-first"
"""Runs started before it ran every tool call as a normal activity; newer ones with
`local_tool_seconds` in their input run it as a local activity first (one round trip
less per step). Asked before each tool call of such a run."""

PATCH_STEPS_EVERY = "steps-attribute-every-n"
"""Runs started before it upserted `AgentRunSteps` after every model call; newer ones
every `STEPS_ATTRIBUTE_EVERY` steps and with each status change, one visibility
write per step fewer. Asked at a step that is not a multiple of it, or at a status
change that finds the attribute behind."""
STEPS_ATTRIBUTE_EVERY = 10
"""`AgentRunSteps` of a running run lags its step by at most this minus one (the run
view's `steps`, from the workflow's query, is exact); it is exact while the run waits
(awaiting approval, paused) and once it ended."""

# --- tenant slots (`workflows.tenant_slots`): the leak probe and its rhythm.
PROBE_RETRY = RetryPolicy(
    # A few describe calls to Temporal; the `acquire` update waits on it, so it gives up
    # soon (the next sweep tries again) rather than hold a launch for minutes.
    initial_interval=timedelta(milliseconds=500),
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=3,
)
PROBE_TIMEOUT = timedelta(seconds=10)
"""Describing a tenant's holders and waiters (a few RPCs to the local Temporal)."""
SLOTS_SWEEP_MIN_INTERVAL = timedelta(seconds=5)
"""A full tenant's launch probes for leaked holders at most this often (a launch storm
probes once, not once per launch)."""
SLOTS_SWEEP_PERIOD = timedelta(seconds=15)
"""While runs wait for a slot, leaked holders are probed this often, so a terminated
holder's slot goes to the next waiter within about this long."""
SLOTS_MISSING_GRACE = timedelta(seconds=60)
"""A holder or waiter Temporal does not know is dropped only this long after its grant:
the API acquires the slot first and starts the run after."""
