"""`CancelParentWorkflow`: asks Temporal to cancel the run that started it.

A run cancelled by the `cancel` update (or signal) must end as Temporal `Canceled`,
not `Completed`. The Python SDK emits the "workflow cancelled" command only when
Temporal delivered a cancel request to the run, and the server refuses a run's
request to cancel *itself* ("Unable to cancel external workflow because not
found"). So the run, once it has finished its work, starts this child, which sends
that request from outside: the run then receives it and ends `Canceled`
(`AgentRunWorkflow._end`).

Design (why it looks like this): a workflow, not an activity, so the request goes
through Temporal's own commands (no client, no I/O, replay-safe); it names its
parent from `workflow.info().parent`, so it has no input to get wrong.

This module must not: do anything but request the parent's cancellation.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

__all__ = ["CancelParentWorkflow"]


@workflow.defn(name="AgentRunCancelParent")
class CancelParentWorkflow:
    @workflow.run
    async def run(self) -> None:
        parent = workflow.info().parent
        if parent is None:
            raise ApplicationError(
                "AgentRunCancelParent only runs as a child of an agent run",
                type="InternalError",
                non_retryable=True,
            )
        handle = workflow.get_external_workflow_handle(parent.workflow_id, run_id=parent.run_id)
        await handle.cancel()
