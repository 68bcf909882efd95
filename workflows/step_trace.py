"""The run's step spans: one `agentrun.step` span per step, parent of its activities.

    steps = StepTrace()            # one per Temporal run (`AgentRunWorkflow.__init__`)
    steps.started(3, run_id, tenant)   # next to `RunMetrics.step_started`
    steps.ended()                  # next to `RunMetrics.step_ended` / `run_finished`

With tracing on, the Temporal SDK's OpenTelemetry plugin runs the workflow inside
its `RunWorkflow` span; a step span started here becomes the current span of the
run's main coroutine, so the step's `StartActivity` spans (model call, tool calls,
the approval wait between them) are its children. Without the plugin there is no
current span and nothing is created: tracing off costs a workflow nothing.

Replay: the SDK's replay-safe tracer provider gives the span the same id on every
replay, starts it at the workflow time it first started, and drops its end while
history replays, so a worker that takes the run over after a crash ends each step
span once (`telemetry.tracing` has the whole story).

A turn continued as new in its middle (a full history between two tool calls)
leaves its step span unended: the new Temporal run's remaining calls of that turn
sit directly under its own `RunWorkflow` span.

This module must not: issue a command, read the clock or anything else outside the
workflow (spans are not in the history, so no `workflow.patched` is needed), or
create a span when the run is not traced.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    # The real OpenTelemetry modules (the process's tracer provider and context),
    # not copies re-imported by the workflow sandbox: they hold no workflow state.
    from opentelemetry import context as otel_context
    from opentelemetry import trace

__all__ = ["STEP_SPAN", "StepTrace"]

STEP_SPAN = "agentrun.step"


class StepTrace:
    """The open step span of one Temporal run (a continued run starts a new one)."""

    def __init__(self) -> None:
        self._span: trace.Span | None = None
        self._token: object | None = None
        self._task: asyncio.Task[object] | None = None

    def started(self, step: int, run_id: str, tenant: str) -> None:
        self.ended()
        if not trace.get_current_span().get_span_context().is_valid:
            return  # not traced: no plugin, no RunWorkflow span
        span = trace.get_tracer("agentrun.workflow").start_span(
            STEP_SPAN,
            attributes={
                "agentrun.step": step,
                "agentrun.run_id": run_id,
                "agentrun.tenant": tenant,
            },
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))
        self._task = asyncio.current_task()

    def ended(self) -> None:
        """The step in progress (if any) is over: its model call and its tool calls."""
        span, token, task = self._span, self._token, self._task
        self._span = self._token = self._task = None
        if span is None:
            return
        # Detached only in the coroutine that attached it (the run's main one); a
        # run that ends from a handler leaves that context to end with its task.
        if token is not None and asyncio.current_task() is task:
            otel_context.detach(token)  # type: ignore[arg-type]
        span.end()
