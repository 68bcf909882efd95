"""The worker's workflow runner keeps the sandbox and skips only the context detour.

On a real Temporal dev server: a workflow run by it is still sandboxed (a call the
sandbox forbids fails its workflow task), payloads still go through the codec, and
a converter that does use serialization contexts gets the plain sandboxed runner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import uuid
from datetime import timedelta
from typing import Any, Self

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.converter import (
    SerializationContext,
    WithSerializationContext,
)

# The workflows below are validated in the sandbox, which re-imports this module:
# everything but them comes from outside it.
with workflow.unsafe.imports_passed_through():
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

    from agentrun.payload_codec import EncryptionCodec, KeyRing
    from agentrun.workflow_runner import (
        WorkflowContextRunner,
        context_aware_parts,
        workflow_runner,
    )


@activity.defn
async def echo(text: str) -> str:
    return f"echo: {text}"


@workflow.defn
class EchoWorkflow:
    @workflow.run
    async def run(self, text: str) -> str:
        return await workflow.execute_activity(
            echo, text, start_to_close_timeout=timedelta(seconds=10)
        )


@workflow.defn
class ClockReadingWorkflow:
    @workflow.run
    async def run(self, label: str) -> str:
        return label + datetime.date.today().isoformat()  # forbidden in a workflow


def test_agentrun_converters_take_no_context_so_the_worker_skips_the_detour() -> None:
    ring = KeyRing.generate("test ring")
    encrypted = dataclasses.replace(pydantic_data_converter, payload_codec=EncryptionCodec(ring))
    for converter in (pydantic_data_converter, encrypted):
        assert context_aware_parts(converter) == []
        assert isinstance(workflow_runner(converter), WorkflowContextRunner)


class _PerWorkflowCodec(EncryptionCodec, WithSerializationContext):
    """A codec whose bytes would depend on the workflow (say, a key per workflow)."""

    def with_context(self, context: SerializationContext) -> Self:
        return type(self)(self.ring)


def test_a_context_aware_codec_keeps_the_sandboxed_runner_unchanged() -> None:
    converter = dataclasses.replace(
        pydantic_data_converter, payload_codec=_PerWorkflowCodec(KeyRing.generate("test ring"))
    )
    assert context_aware_parts(converter) == ["payload codec"]
    assert type(workflow_runner(converter)) is SandboxedWorkflowRunner


async def _worker(client: Client, task_queue: str, workflows: list[Any]) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=workflows,
        activities=[echo],
        workflow_runner=workflow_runner(client.data_converter),
    )


async def test_payloads_still_pass_the_codec_under_the_runner(client: Client) -> None:
    ring = KeyRing.generate("test ring")
    encrypted = Client(
        client.service_client,
        namespace=client.namespace,
        data_converter=dataclasses.replace(
            pydantic_data_converter, payload_codec=EncryptionCodec(ring)
        ),
    )
    task_queue = f"tq-runner-{uuid.uuid4().hex[:8]}"
    async with await _worker(encrypted, task_queue, [EchoWorkflow]):
        handle = await encrypted.start_workflow(
            EchoWorkflow.run, "secret words", id=f"wf-{uuid.uuid4().hex[:8]}", task_queue=task_queue
        )
        assert await handle.result() == "echo: secret words"
    # The server holds only ciphertext: the plain client cannot read the input back.
    async for event in client.get_workflow_handle(handle.id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            payload = event.workflow_execution_started_event_attributes.input.payloads[0]
            assert b"secret words" not in payload.data
            break
    else:
        pytest.fail("no start event")


async def test_a_workflow_under_the_runner_is_still_sandboxed(client: Client) -> None:
    task_queue = f"tq-runner-{uuid.uuid4().hex[:8]}"
    async with await _worker(client, task_queue, [ClockReadingWorkflow]):
        handle = await client.start_workflow(
            ClockReadingWorkflow.run,
            "today: ",
            id=f"wf-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            execution_timeout=timedelta(seconds=60),
        )
        failure = ""
        for _ in range(200):
            async for event in handle.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    failure = event.workflow_task_failed_event_attributes.failure.message
            if failure:
                break
            await asyncio.sleep(0.1)
        await handle.terminate("test over")
    assert "Cannot access datetime.date.today" in failure, failure
