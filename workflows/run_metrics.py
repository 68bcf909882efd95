"""The run's own series, recorded from workflow code through the SDK's replay-safe meter.

    metrics = RunMetrics()          # one per Temporal run (`RunLocal.metrics`)
    metrics.step_started()          # … `step_ended()` records the step's duration
    metrics.run_finished(status, reason)

`workflow.metric_meter()` records nothing while the workflow replays, so a worker
that takes a run over after a crash does not count its start, its steps or its
approvals again. The recordings go to the worker's Temporal runtime, which
`telemetry.metrics.temporal_runtime` drains into the process's meter provider
(`agentrun_runs_finished_total` and the rest: the table is in `telemetry.metrics`);
on a runtime without metrics they cost nothing.

Durations are workflow time (`workflow.now()`, the time of the workflow task), so
they are whole tasks apart: exact for steps and approval waits, which span many.

This module must not: record anything but through `workflow.metric_meter()`, issue a
command (metrics are not in the history, so no `workflow.patched` is needed), or
label a series with a tenant or a run id (`telemetry.metrics`, "No tenant").
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

__all__ = ["RunMetrics"]

RUNS_STARTED = "agentrun.runs.started"
RUNS_FINISHED = "agentrun.runs.finished"
STEP_DURATION = "agentrun.step.duration"
APPROVALS_REQUESTED = "agentrun.approvals.requested"
APPROVAL_WAIT = "agentrun.approval.wait"


class RunMetrics:
    """The recordings of one Temporal run (a continued run starts a new one)."""

    def __init__(self) -> None:
        self._step_started: datetime | None = None

    def run_started(self) -> None:
        """The run's first Temporal run started (not a continue-as-new)."""
        workflow.metric_meter().create_counter(RUNS_STARTED, "Runs started").add(1)

    def run_finished(self, status: str, reason: str) -> None:
        self.step_ended()
        workflow.metric_meter().create_counter(
            RUNS_FINISHED, "Runs finished, by status and reason"
        ).add(1, {"status": status, "reason": reason})

    def step_started(self) -> None:
        self.step_ended()
        self._step_started = workflow.now()

    def step_ended(self) -> None:
        """The step in progress (if any) is over: its model call and its tool calls."""
        if self._step_started is None:
            return
        workflow.metric_meter().create_histogram_timedelta(
            STEP_DURATION, "Step duration: a model call and its tool calls", "s"
        ).record(workflow.now() - self._step_started)
        self._step_started = None

    def approval_requested(self) -> None:
        workflow.metric_meter().create_counter(
            APPROVALS_REQUESTED, "Tool calls that asked for an approval"
        ).add(1)

    def approval_decided(self, decision: str, requested_at: datetime) -> None:
        """`decision`: approved, denied or expired."""
        workflow.metric_meter().create_histogram_timedelta(
            APPROVAL_WAIT, "Time from an approval request to its decision, by decision", "s"
        ).record(workflow.now() - requested_at, {"decision": decision})
