"""The step benchmark's floor workflow and its per-step counts from histories.

`bench.steps` states agentrun's cost per step against a floor and counts what a
step adds to a history; both are checked here on the suite's real Temporal server
with the floor workflow (its numbers are known: N no-op activities per step).
"""

from __future__ import annotations

import uuid
from collections import Counter

from temporalio.api.common.v1 import Payload, Payloads, SearchAttributes
from temporalio.api.history.v1 import (
    ActivityTaskScheduledEventAttributes,
    HistoryEvent,
    UpsertWorkflowSearchAttributesEventAttributes,
)
from temporalio.client import Client
from temporalio.worker import Worker

from bench import floor
from bench.steps import Counts, PerStep, history_of, payload_bytes


async def _floor_run(client: Client, task_queue: str, steps: int) -> Counts:
    workflow_id = f"floor-test-{uuid.uuid4().hex}"
    done = await client.execute_workflow(
        floor.WORKFLOW_NAME,
        floor.FloorInput(steps, activities_per_step=2, fixed_activities=3),
        id=workflow_id,
        task_queue=task_queue,
        result_type=int,
    )
    assert done == steps
    history = await history_of(client, workflow_id)
    return Counts.of(history, steps, "floor_noop", per_step=2)


async def test_per_step_counts_of_the_floor_drop_the_fixed_part(
    client: Client, task_queue: str
) -> None:
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[floor.FloorSteps],
        activities=[floor.noop, floor.fixed],
    ):
        short = await _floor_run(client, task_queue, 1)
        long = await _floor_run(client, task_queue, 4)

    step = PerStep.between(short, long)
    assert step.activities == {"floor_noop": 2.0}
    assert step.round_trips == 2
    assert step.workflow_tasks == 2.0  # one per activity result
    assert step.upserts == 0.0
    # Nothing but starts, workflow tasks, activities and the end: no "other" events.
    assert step.other == {}
    assert not step.fixed.other
    assert step.events == 12.0  # 2 x (3 workflow-task + 3 activity events)
    assert step.fixed.activities == Counter({"floor_fixed": 3})
    assert step.payload_bytes > 0
    # A step starts at its first activity: 4 steps, 3 intervals between them.
    assert len(long.step_starts) == 4
    assert all(seconds >= 0 for seconds in long.step_durations())
    assert len(long.step_durations()) == 3


def test_payload_bytes_counts_payloads_in_lists_and_maps_only() -> None:
    data = Payload(metadata={"encoding": b"json/plain"}, data=b"0123456789")
    label = Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')
    scheduled = HistoryEvent(
        event_id=5,
        activity_task_scheduled_event_attributes=ActivityTaskScheduledEventAttributes(
            activity_id="1", input=Payloads(payloads=[data, data])
        ),
    )
    upsert = HistoryEvent(
        event_id=6,
        upsert_workflow_search_attributes_event_attributes=(
            UpsertWorkflowSearchAttributesEventAttributes(
                search_attributes=SearchAttributes(indexed_fields={"AgentRunSteps": label})
            )
        ),
    )
    assert payload_bytes(scheduled) == 2 * data.ByteSize()
    assert payload_bytes(upsert) == label.ByteSize()
    assert payload_bytes(HistoryEvent(event_id=7)) == 0
