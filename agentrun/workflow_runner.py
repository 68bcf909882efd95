"""The workflow runner: Temporal's sandbox, without its per-payload detour into it.

    Worker(client, ..., workflow_runner=workflow_runner(data_converter))

For every payload it decodes or encodes (three passes over each activation, one over
each completion), the SDK asks the workflow instance which serialization context to
use. The sandboxed instance answers by `exec`-ing a snippet inside the sandbox, with
its import restrictions applied: on agentrun's worker that was about a sixth of the
CPU spent per step (py-spy, 10 concurrent runs of `shell` steps), to compute a value
that no converter of agentrun reads.

Design (why it looks like this):

* **Context only matters to context-aware converters.** A serialization context
  lets a payload converter, codec or failure converter that implements
  `temporalio.converter.WithSerializationContext` behave per workflow or per
  activity. agentrun's are not context-aware (the pydantic converter, the
  encryption codec of `agentrun.payload_codec`, the default failure converter
  with encoded attributes), so every context yields the same bytes. The instance
  here therefore answers with the workflow's own context, built once outside the
  sandbox; the SDK then uses the converter it already built for that context.
* **Everything else is the sandbox's**: activation, determinism checks, import
  restrictions, the passed-through modules and the store context of external
  payload storage are delegated unchanged to `SandboxedWorkflowRunner`.
* **Refused when it would be wrong**: `workflow_runner` checks the data converter
  and returns the plain sandboxed runner, unchanged, when any of its parts is
  context-aware. A converter added later that needs contexts keeps them.

This module must not: change what a workflow executes or replays (histories are
identical with either runner; the replay tests use it), or skip the sandbox.
"""

from __future__ import annotations

from collections.abc import Sequence

import temporalio.workflow
from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.converter import (
    DataConverter,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)
from temporalio.converter._extstore import StorageDriverStoreContext
from temporalio.worker import (
    WorkflowInstance,
    WorkflowInstanceDetails,
    WorkflowRunner,
)

# Types of the WorkflowInstance interface that the SDK does not re-export.
from temporalio.worker._command_aware_visitor import CommandInfo
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

_PROBE = WorkflowSerializationContext(namespace="probe", workflow_id="probe")


def context_aware_parts(converter: DataConverter) -> list[str]:
    """The parts of `converter` whose output may depend on a serialization context:
    those that, given one, become another object (`with_context` returns `self` when
    the part and its components take no context, as the SDK's composite converter does
    for agentrun's pydantic one)."""
    parts = {
        "payload converter": converter.payload_converter,
        "payload codec": converter.payload_codec,
        "failure converter": converter.failure_converter,
    }
    return [
        name
        for name, part in parts.items()
        if isinstance(part, WithSerializationContext) and part.with_context(_PROBE) is not part
    ]


def workflow_runner(converter: DataConverter) -> WorkflowRunner:
    """The runner for a worker using `converter` (see the module docstring)."""
    sandboxed = SandboxedWorkflowRunner()
    if context_aware_parts(converter):
        return sandboxed
    return WorkflowContextRunner(sandboxed)


class WorkflowContextRunner(WorkflowRunner):
    """`inner`'s instances, answering the serialization context without entering them."""

    def __init__(self, inner: WorkflowRunner) -> None:
        self.inner = inner

    def prepare_workflow(self, defn: temporalio.workflow._Definition) -> None:
        self.inner.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        context = WorkflowSerializationContext(
            namespace=det.info.namespace, workflow_id=det.info.workflow_id
        )
        return _WorkflowContextInstance(self.inner.create_instance(det), context)

    def set_worker_level_failure_exception_types(
        self, types: Sequence[type[BaseException]]
    ) -> None:
        self.inner.set_worker_level_failure_exception_types(types)


class _WorkflowContextInstance(WorkflowInstance):
    def __init__(self, inner: WorkflowInstance, context: WorkflowSerializationContext) -> None:
        self._inner = inner
        self._context = context

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        return self._inner.activate(act)

    def get_serialization_context(
        self, command_info: CommandInfo | None
    ) -> SerializationContext | None:
        return self._context

    def get_external_store_context(
        self, command_info: CommandInfo | None
    ) -> StorageDriverStoreContext:
        return self._inner.get_external_store_context(command_info)

    def get_info(self) -> temporalio.workflow.Info:
        return self._inner.get_info()

    def get_thread_id(self) -> int | None:
        return self._inner.get_thread_id()
