"""Tracing overhead: `.venv/bin/python -m bench.tracing_bench [--runs 4] [--steps 6] [--rounds 3]`.

Runs the same workload on a stack with tracing off and on, and prints the per-step
cost of each and the ratio on/off (the issue's bound: under 10 % more). A step is
what a run's loop does once: a model call (the scripted model), a `shell` tool call
in the sandbox (`echo step-i`), and the events and commands around them
(`--tool finish` measures orchestration alone, where tracing weighs the most).

* **off**: no `OTEL_*` exporter configured, so `telemetry.setup_telemetry` adds no
  Temporal plugin and the API is not instrumented (production's default).
* **on**: `OTEL_EXPORTER_OTLP_ENDPOINT` points the API and the worker at a real
  collector on loopback (`rotel`, from PyPI, exporting to its blackhole), with
  `OTEL_TRACES_SAMPLER=always_on`: every span is made, batched and sent over OTLP.
  Metrics are not exported by OTLP in either mode (`OTEL_METRICS_EXPORTER=none`),
  so the difference is tracing's alone.

Per mode it prints, over `--rounds` waves of `--runs` concurrent runs of `--steps`
steps: the median per-step wall time of a run (its workflow's start → close, over
its steps; waited for through the Temporal server, not the API, whose polling
would add traced queries) and the worker's and the API's CPU seconds per step
(`/proc`, over the waves). The modes alternate (off, on, off, on …), each on a fresh
stack (`bench._stack`: Temporal dev server, `worker.py` and the API as
subprocesses), so drift on a shared machine hits both. It checks that the "on"
stack exported without error (no "Failed to export" in its services' logs).

Read the CPU per step as the cost: on a machine shared with other work the wall
time of a step swings by tens of percent between identical waves (measured: -26 %
and +37 % for the same workload), while the CPU each service spends per step is
steady to a few percent. The "off" mode is production's default: activities still
make their spans (nothing records them) and runs still get a trace id.

It must not assert anything: the numbers depend on the machine. It stops its
processes and removes its containers on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus

from agentrun.contracts import (
    Limits,
    ModelRef,
    RunSpec,
    ScriptedToolCall,
    ScriptedTurn,
    ToolName,
)
from bench._stack import HOST, LocalStack, StackOptions, free_port

OTEL_KEYS = ("OTEL_",)
POLL_S = 0.5
WAVE_TIMEOUT_S = 600.0


def rotel_binary() -> Path:
    """The collector binary the rotel wheel ships (`rotel/rotel-agent`)."""
    spec = importlib.util.find_spec("rotel")
    binary = Path(spec.origin).parent / "rotel-agent" if spec and spec.origin else Path()
    if not binary.is_file():
        raise SystemExit(f"rotel-agent not found at {binary}: pip install rotel (dev extra)")
    return binary


@contextmanager
def collector(workdir: Path) -> Any:
    """A rotel collector with an OTLP/HTTP receiver on loopback; yields its endpoint."""
    http_port, grpc_port = free_port(), free_port()
    log = (workdir / "rotel.log").open("ab")
    proc = subprocess.Popen(
        [
            str(rotel_binary()),
            "start",
            "--otlp-http-endpoint",
            f"{HOST}:{http_port}",
            "--otlp-grpc-endpoint",
            f"{HOST}:{grpc_port}",
            "--exporter",
            "blackhole",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.post(f"http://{HOST}:{http_port}/v1/traces", content=b"", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise SystemExit(f"rotel exited ({proc.returncode}); see {log.name}") from None
                time.sleep(0.2)
        yield f"http://{HOST}:{http_port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def run_spec(steps: int, tool: str) -> dict[str, object]:
    """`steps` tool calls (shell `echo`, or `finish` without an answer: a no-op
    bad-arguments result), then `finish`."""
    if tool == "shell":
        calls = [
            ScriptedToolCall(name=ToolName.SHELL, arguments={"command": f"echo step-{i}"})
            for i in range(1, steps + 1)
        ]
    else:
        calls = [ScriptedToolCall(name=ToolName.FINISH, arguments={}) for _ in range(steps)]
    calls.append(ScriptedToolCall(name=ToolName.FINISH, arguments={"answer": "done"}))
    spec = RunSpec(
        goal=f"tracing benchmark: {steps} {tool} steps, then finish",
        tools=[ToolName.SHELL, ToolName.FINISH],
        model=ModelRef(provider="scripted", script=[ScriptedTurn(tool_calls=[c]) for c in calls]),
        limits=Limits(max_steps=steps + 1),
    )
    return spec.model_dump(mode="json", exclude_unset=True)


@dataclass
class Mode:
    name: str
    step_walls: list[float] = field(default_factory=list)
    """Per run: wall seconds per step (workflow time)."""
    worker_cpu: float = 0.0
    api_cpu: float = 0.0
    steps: int = 0
    runs: int = 0
    failed: int = 0

    def per_step(self, cpu: float) -> float:
        return cpu / self.steps if self.steps else float("nan")


async def wave(stack: LocalStack, mode: Mode, runs: int, steps: int, tool: str) -> None:
    spec = run_spec(steps, tool)
    # Waiting reads the Temporal server only (`describe`): polling the API would make
    # queries the worker answers, and spans of them, inflating the "on" mode's cost.
    client = await Client.connect(f"{HOST}:{stack.temporal_port}")
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers=stack.auth_headers(), timeout=30
    ) as http:
        # One unmeasured run first: imports, the first sandbox, connection set-up.
        warm = (await http.post("/v1/runs", json=spec)).json()["workflow_id"]
        await ended(client, [warm])
        cpu_before = stack.cpu()
        launched = await asyncio.gather(*(http.post("/v1/runs", json=spec) for _ in range(runs)))
        ids = [resp.json()["workflow_id"] for resp in launched]
        closed = await ended(client, ids)
        cpu_after = stack.cpu()
    mode.worker_cpu += cpu_after["worker"] - cpu_before["worker"]
    mode.api_cpu += cpu_after["api"] - cpu_before["api"]
    for desc in closed:
        mode.runs += 1
        if desc.status != WorkflowExecutionStatus.COMPLETED or desc.close_time is None:
            mode.failed += 1
            continue
        taken = steps + 1
        mode.steps += taken
        mode.step_walls.append((desc.close_time - desc.start_time).total_seconds() / taken)


async def ended(client: Client, workflow_ids: list[str]) -> list[WorkflowExecutionDescription]:
    """The descriptions of `workflow_ids` once every run closed."""
    deadline = time.monotonic() + WAVE_TIMEOUT_S
    done: dict[str, WorkflowExecutionDescription] = {}
    while len(done) < len(workflow_ids):
        if time.monotonic() > deadline:
            missing = len(workflow_ids) - len(done)
            raise SystemExit(f"{missing} runs did not end in {WAVE_TIMEOUT_S} s")
        for workflow_id in workflow_ids:
            if workflow_id not in done:
                desc = await client.get_workflow_handle(workflow_id).describe()
                if desc.status != WorkflowExecutionStatus.RUNNING:
                    done[workflow_id] = desc
        await asyncio.sleep(POLL_S)
    return [done[workflow_id] for workflow_id in workflow_ids]


@contextmanager
def otel_environment(endpoint: str | None) -> Any:
    """The stack's subprocesses inherit these `OTEL_*` variables (and no others)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(OTEL_KEYS)}
    for key in saved:
        del os.environ[key]
    os.environ["OTEL_METRICS_EXPORTER"] = "none"
    if endpoint is not None:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith(OTEL_KEYS)]:
            del os.environ[key]
        os.environ.update(saved)


def measure(args: argparse.Namespace, root: Path, endpoint: str) -> dict[str, Mode]:
    modes = {"off": Mode("off"), "on": Mode("on")}
    options = StackOptions(
        max_concurrent_activities=16,
        max_concurrent_workflow_tasks=8,
        sandbox_pool_size=2 if args.tool == "shell" else 0,
    )
    for round_no in range(args.rounds):
        for name in ("off", "on"):
            workdir = root / f"{name}-{round_no}"
            workdir.mkdir()
            with (
                otel_environment(endpoint if name == "on" else None),
                LocalStack(workdir, options) as stack,
            ):
                print(f"round {round_no + 1}/{args.rounds}: tracing {name} …", flush=True)
                asyncio.run(wave(stack, modes[name], args.runs, args.steps, args.tool))
    return modes


def export_failures(root: Path) -> int:
    """ "Failed to export" lines in the logs of the stacks that traced."""
    return sum(
        log.read_text(errors="replace").count("Failed to export")
        for log in root.glob("on-*/logs/*.log")
    )


def report(modes: dict[str, Mode], args: argparse.Namespace, failures: int) -> None:
    off, on = modes["off"], modes["on"]
    print()
    print(
        f"{args.rounds} rounds x {args.runs} runs x {args.steps + 1} steps "
        f"({args.tool} + finish), per mode"
    )
    header = f"{'tracing':<8}{'runs':>6}{'failed':>8}"
    header += f"{'wall/step p50':>16}{'worker cpu/step':>18}{'api cpu/step':>15}"
    print(header)
    for mode in (off, on):
        wall = statistics.median(mode.step_walls) if mode.step_walls else float("nan")
        print(
            f"{mode.name:<8}{mode.runs:>6}{mode.failed:>8}"
            f"{wall * 1000:>13.1f} ms{mode.per_step(mode.worker_cpu) * 1000:>15.2f} ms"
            f"{mode.per_step(mode.api_cpu) * 1000:>12.2f} ms"
        )
    if not off.step_walls or not on.step_walls:
        print("no completed runs in a mode: no ratio")
        return
    wall_ratio = statistics.median(on.step_walls) / statistics.median(off.step_walls)
    worker_ratio = on.per_step(on.worker_cpu) / off.per_step(off.worker_cpu)
    cost_ratio = on.per_step(on.worker_cpu + on.api_cpu) / off.per_step(
        off.worker_cpu + off.api_cpu
    )
    print()
    for label, ratio in (
        ("wall per step", wall_ratio),
        ("worker CPU per step", worker_ratio),
        ("worker + API CPU per step", cost_ratio),
    ):
        print(f"ratio on/off, {label + ':':<27}{ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
    verdict = "met" if cost_ratio < 1.10 else "NOT met"
    print(f"goal, per-step cost (worker + API CPU) under +10 %: {verdict}")
    if failures:
        print(f"warning: the traced services logged {failures} failed exports (see --keep logs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=4, help="concurrent runs per wave")
    parser.add_argument("--steps", type=int, default=6, help="tool steps per run (+ finish)")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs of waves")
    parser.add_argument("--tool", choices=["shell", "finish"], default="shell")
    parser.add_argument("--keep", type=Path, help="work directory to keep (logs)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agentrun-tracing-bench-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        with collector(root) as endpoint:
            modes = measure(args, root, endpoint)
        failures = export_failures(root)
    report(modes, args, failures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
