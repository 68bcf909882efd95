"""Idle runs: `.venv/bin/python -m bench.idle [--runs 1000] [--sandboxed 20] [--idle 5]`.

What a run waiting for a human costs the machine (issue 14's goals: worker RSS per
waiting run ≤ 0.5 MB, and no running container for a run idle past the threshold).
On a fresh local stack (`bench._stack`: Temporal dev server, `worker.py` and the API
as subprocesses, the sandbox on this Docker host) it launches through the API:

* `--runs` runs whose first call is a `shell` call that needs an approval: they
  wait before any sandbox exists (the memory a waiting run costs);
* `--sandboxed` more runs that first write a file (starting their container), then
  wait for an approval: their containers must stop `--idle` seconds into the wait
  (`AGENTRUN_SANDBOX_IDLE_STOP_SECONDS`).

It prints the worker's RSS (its process tree, `/proc`) before the launch and once
every run waits, the difference per waiting run, the Temporal server's RSS likewise
(its per-run cost, for scale), and the sandboxed runs' containers by state just
after they all wait and after the threshold, with how long the stops took. The
baseline is the same worker before the wave, measured in the same invocation.
`--cached N` sets the worker's `AGENTRUN_MAX_CACHED_WORKFLOWS` (default 1000, the
SDK's): fewer cached runs hold less memory and replay when they wake.

It asserts nothing (the numbers depend on the machine) and exits non-zero only when
runs failed to reach their wait. It stops its processes and removes its containers.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from agentrun.contracts import (
    ApprovalPolicy,
    Limits,
    ModelRef,
    RunSpec,
    RunStatus,
    ScriptedToolCall,
    ScriptedTurn,
    ToolName,
)
from bench._stack import LocalStack, StackOptions, tree_memory_kb
from bench.load import list_wave

LAUNCH_CONCURRENCY = 16
SETTLE_S = 3.0
"""Quiet time before a memory reading, so in-flight tasks and buffers settle."""


def run_body(label: str, *, sandboxed: bool) -> dict[str, object]:
    calls = [ScriptedToolCall(name=ToolName.SHELL, arguments={"command": "echo hi"})]
    if sandboxed:
        write = ScriptedToolCall(
            name=ToolName.WRITE_FILE, arguments={"path": "a.txt", "content": "a"}
        )
        calls.insert(0, write)
    calls.append(ScriptedToolCall(name=ToolName.FINISH, arguments={"answer": "done"}))
    spec = RunSpec(
        goal="idle benchmark: wait for an approval",
        tools=[ToolName.SHELL, ToolName.WRITE_FILE, ToolName.FINISH],
        model=ModelRef(provider="scripted", script=[ScriptedTurn(tool_calls=[c]) for c in calls]),
        limits=Limits(max_steps=len(calls)),
        approval=ApprovalPolicy(mode="tools", tools=[ToolName.SHELL], timeout_seconds=None),
        labels={"bench": label},
    )
    return spec.model_dump(mode="json", exclude_unset=True)


async def launch_all(http: httpx.AsyncClient, bodies: list[dict[str, object]]) -> list[str]:
    """POST every body (a few at a time); the errors, if any."""
    gate = asyncio.Semaphore(LAUNCH_CONCURRENCY)
    errors: list[str] = []

    async def one(body: dict[str, object]) -> None:
        async with gate:
            resp = await http.post("/v1/runs", json=body)
            if resp.status_code != 201:
                errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")

    await asyncio.gather(*(one(b) for b in bodies))
    return errors


async def until_waiting(http: httpx.AsyncClient, label: str, runs: int, limit_s: float) -> float:
    """Seconds until all `runs` of the wave await an approval (SystemExit past `limit_s`)."""
    started = time.monotonic()
    while True:
        statuses = Counter(r.status for r in await list_wave(http, label))
        if statuses[RunStatus.AWAITING_APPROVAL] >= runs:
            return time.monotonic() - started
        if time.monotonic() - started > limit_s:
            raise SystemExit(f"not every run reached its approval in {limit_s:.0f} s: {statuses}")
        await asyncio.sleep(1.0)


def mb(kb: int) -> str:
    return f"{kb / 1024:,.1f} MB"


async def measure(stack: LocalStack, args: argparse.Namespace) -> None:
    pids = stack.pids()
    await asyncio.sleep(SETTLE_S)
    before = {name: tree_memory_kb(pids[name])[0] for name in ("worker", "temporal")}
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers=stack.auth_headers(), timeout=60
    ) as http:
        print(f"launching {args.runs} runs that wait for an approval …", flush=True)
        await launch_checked(http, [run_body("waiting", sandboxed=False)] * args.runs)
        waited = await until_waiting(http, "waiting", args.runs, args.timeout)
        await asyncio.sleep(SETTLE_S)
        after = {name: tree_memory_kb(pids[name])[0] for name in ("worker", "temporal")}
        report_memory(args, before, after, waited)
        if args.sandboxed:
            print(f"\nlaunching {args.sandboxed} runs with a sandbox that then wait …")
            await launch_checked(http, [run_body("sandboxed", sandboxed=True)] * args.sandboxed)
            await until_waiting(http, "sandboxed", args.sandboxed, args.timeout)
            await report_containers(stack, args)


async def launch_checked(http: httpx.AsyncClient, bodies: list[dict[str, object]]) -> None:
    errors = await launch_all(http, bodies)
    if errors:
        raise SystemExit(f"{len(errors)} launches failed, first: {errors[0]}")


def report_memory(
    args: argparse.Namespace, before: dict[str, int], after: dict[str, int], waited: float
) -> None:
    per_run = {name: (after[name] - before[name]) / args.runs for name in before}
    print()
    print(f"{args.runs} runs waiting for an approval (worker cache {args.cached} runs)")
    print(f"{'':<28}{'before':>12}{'waiting':>12}{'per run':>12}")
    for name, label in (("worker", "worker RSS"), ("temporal", "Temporal dev server RSS")):
        print(
            f"{label:<28}{mb(before[name]):>12}{mb(after[name]):>12}{per_run[name] / 1024:>9.3f} MB"
        )
    print(f"time for all to reach their wait: {waited:.0f} s")
    goal = "met" if per_run["worker"] <= 512 else "NOT met"
    print(f"goal, worker RSS per waiting run <= 0.5 MB: {goal} ({per_run['worker'] / 1024:.3f} MB)")


async def report_containers(stack: LocalStack, args: argparse.Namespace) -> None:
    """The sandboxed runs' containers now (all waiting) and once the threshold passed."""
    at_wait = Counter(stack.container_states())
    began = time.monotonic()
    stopped_after: float | None = None
    while time.monotonic() - began < args.idle + 120:
        states = Counter(stack.container_states())
        if states["running"] == 0 and states["paused"] == 0:
            stopped_after = time.monotonic() - began
            break
        await asyncio.sleep(0.5)
    print(f"{args.sandboxed} runs holding a sandbox, idle threshold {args.idle:.0f} s")
    print(f"containers when they all waited: {dict(at_wait)}")
    print(f"containers after the threshold:  {dict(Counter(stack.container_states()))}")
    if stopped_after is None:
        print("goal, no running container past the threshold: NOT met")
    else:
        print(
            f"goal, no running container past the threshold: met "
            f"(all stopped {stopped_after:.1f} s after the last run began to wait)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    parser.add_argument("--runs", type=int, default=1000, help="runs waiting without a sandbox")
    parser.add_argument("--sandboxed", type=int, default=20, help="runs waiting with a sandbox")
    parser.add_argument("--idle", type=float, default=5.0, help="idle stop threshold, seconds")
    parser.add_argument("--cached", type=int, default=1000, help="worker's cached runs")
    parser.add_argument("--timeout", type=float, default=900.0, help="per wave, seconds")
    args = parser.parse_args(argv)
    options = StackOptions(
        max_concurrent_activities=16,
        max_concurrent_workflow_tasks=8,
        sandbox_pool_size=0,
        extra_env=(
            ("AGENTRUN_SANDBOX_IDLE_STOP_SECONDS", str(args.idle)),
            ("AGENTRUN_MAX_CACHED_WORKFLOWS", str(args.cached)),
        ),
    )
    with (
        tempfile.TemporaryDirectory(prefix="agentrun-idle-") as tmp,
        LocalStack(Path(tmp), options) as stack,
    ):
        asyncio.run(measure(stack, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
