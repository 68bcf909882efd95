"""The floor of the step benchmark: what Temporal alone costs per step.

    python -m bench.floor --address 127.0.0.1:7233 --task-queue floor-ab12

runs a worker for `FloorSteps`: a workflow that does, per step, the same number of
sequential activity round trips an agentrun step does (`activities_per_step`,
which `bench.steps` counts from a real run's history), each a no-op activity, then
as many no-op local activities as an agentrun step runs (`local_per_step`: its tool
calls' first attempts), and once per run as many activities as an agentrun run does
once (`fixed_activities`). It
has no state, no events, no search attributes and no payload beyond an int, so a
step costs exactly the dispatch of its workflow and activity tasks: what agentrun
could at best reach on the same server with the same number of round trips.

The worker is a process of its own (like `worker.py`), so its CPU and memory are
read from `/proc` the same way; it prints `floor worker polling` once it runs and
stops on SIGTERM. Its activities are `async def`, so they run on the worker's
event loop without a thread hand-off: the cheapest activity the SDK offers.

This module must not import agentrun code: the floor is Temporal's, not ours.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

WORKFLOW_NAME = "FloorSteps"
READY_LINE = "floor worker polling"
ACTIVITY_TIMEOUT = timedelta(seconds=60)


@dataclass
class FloorInput:
    steps: int
    activities_per_step: int
    fixed_activities: int = 0
    """Round trips once per run (agentrun's init, artifacts, sandbox release), first."""
    local_per_step: int = 0
    """No-op local activities per step, after its activities (agentrun's tool calls that
    run as local activities first)."""


@activity.defn(name="floor_noop")
async def noop(step: int) -> int:
    return step


@activity.defn(name="floor_fixed")
async def fixed(step: int) -> int:
    """The same no-op under another name, so a history tells steps from the fixed part."""
    return step


@activity.defn(name="floor_local")
async def local_noop(step: int) -> int:
    """The same no-op, run as a local activity (in the workflow task that asks for it)."""
    return step


@workflow.defn(name=WORKFLOW_NAME)
class FloorSteps:
    @workflow.run
    async def run(self, inp: FloorInput) -> int:
        for n in range(inp.fixed_activities):
            await workflow.execute_activity(fixed, n, start_to_close_timeout=ACTIVITY_TIMEOUT)
        for step in range(inp.steps):
            for _ in range(inp.activities_per_step):
                await workflow.execute_activity(noop, step, start_to_close_timeout=ACTIVITY_TIMEOUT)
            for _ in range(inp.local_per_step):
                await workflow.execute_local_activity(
                    local_noop, step, start_to_close_timeout=ACTIVITY_TIMEOUT
                )
        return inp.steps


async def serve(args: argparse.Namespace) -> None:
    client = await Client.connect(args.address, namespace=args.namespace)
    worker = Worker(
        client,
        task_queue=args.task_queue,
        workflows=[FloorSteps],
        activities=[noop, fixed, local_noop],
        max_concurrent_activities=args.max_concurrent_activities,
        max_concurrent_workflow_tasks=args.max_concurrent_workflow_tasks,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print(READY_LINE, flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--max-concurrent-activities", type=int, default=32)
    parser.add_argument("--max-concurrent-workflow-tasks", type=int, default=16)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
