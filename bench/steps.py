"""Step benchmark: `.venv/bin/python -m bench.steps [--quick]`.

What one agentrun step costs, each figure beside a floor measured in the same
invocation on the same Temporal server. A step is one model call (the scripted
model) and one tool call (`shell` with the command `true`, i.e. `sh -c true` in a
warm sandbox), launched through the REST API (`POST /v1/runs`) like any run.

It prints, for agentrun and its two floors:

* **sequential per-step p50/p95** of one run: the time between the starts of two
  consecutive steps, read from the run's Temporal history (when the workflow
  scheduled each `call_model`). The first step (it takes the sandbox from the warm
  pool) is printed apart and left out of the percentiles.
* **steps/s at 1, 20 and 100 concurrent runs**: all steps of a wave over the time
  from the first launch to the last close.
* **CPU milliseconds per step** of the Temporal server, the worker and the API
  (utime + stime from `/proc/<pid>/stat`, over each wave), and the **worker's RSS
  per run** (its process tree's peak during a wave above its RSS before, over the
  wave's runs).
* **per step, from histories**: workflow tasks, activities (by type),
  search-attribute upserts, history events (with the kinds no other row covers,
  such as signals, timers or markers, by name), payload bytes (the `Payload` messages
  of the events: what the worker encrypts and the server stores) and history bytes.
  Counted as the difference between a long and a short run over the difference in
  their steps, so the per-run fixed part (init, finish, artifacts) drops out; the
  fixed part is printed too. Queries are not in a history and are not counted.

The floors, in the same process on the same server:

* **floor**: `bench.floor.FloorSteps`, a workflow doing per step as many sequential
  activity round trips as the agentrun history shows per step (its `activities`
  row), each a no-op activity, then as many no-op local activities as it shows local
  ones (their markers: a tool call's first attempt, `workflows.loop`), on a worker
  process of its own (its own task queue)
  that this benchmark starts against the same dev server. The ratio agentrun/floor
  is the one the issue's goals are stated in (per-step p50 within 1.25x; at 20
  runs, steps/s at least 50 % of the floor's).
* **loop**: a plain Python loop doing the same work, the next scripted reply and a
  `subprocess.run(["sh", "-c", "true"])` per step (N threads for N runs).

It starts its own stack on 127.0.0.1 (`bench._stack`: a Temporal dev server with
`history.transferProcessorMaxPollRPS` raised, `worker.py` and the API as
processes, a sandbox namespace of its own) and removes its processes, containers,
volumes and workspace loop devices on the way out. `--quick` uses fewer steps per
run (a sequential run of 12, 20 runs of 3, 100 runs of 1, each plus `finish`):
about 3 minutes, 4-5 when other work keeps both cores busy (the 100-run waves are
most of it). The default is the issue's workload (20 runs of 30 steps, 100 of 5).

Read the ratios, not the absolute numbers: on a shared machine the wall times
swing between identical waves, but agentrun and its floor swing together. It must
not assert anything: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History, MarkerRecordedEventAttributes
from temporalio.client import Client

from agentrun.contracts import (
    Limits,
    ModelRef,
    RunSpec,
    RunStatus,
    ScriptedToolCall,
    ScriptedTurn,
    ToolName,
)
from api.schemas import RunSummary, RunView
from bench import floor
from bench._stack import (
    HOST,
    TRANSFER_POLL_RPS,
    LocalStack,
    StackError,
    StackOptions,
    tree_memory_kb,
)
from bench.load import launch, list_wave, settle

TOOL_COMMAND = "true"
"""The `shell` tool runs it as `sh -c true`: a tool call that does nothing."""
MODEL_ACTIVITY = "call_model"
"""The activity that starts each agentrun step (the step boundary in a history)."""
SAMPLE_S = 0.25
"""How often a wave samples the worker's RSS."""
POLL_S = 0.5
"""How often a wave lists its runs (the close times are the server's, not the poll's)."""
SETTLE_S = 20.0
"""At most this long between waves for the warm pool to be full again."""
SMALL_RUN_STEPS = 1
"""Shell steps of the warm-up run, the short run of the per-step history counts."""


@dataclass(frozen=True)
class Workload:
    sequential_steps: int
    """Shell steps of the sequential run (also the 1-run wave)."""
    waves: tuple[tuple[int, int], ...]
    """(concurrent runs, shell steps per run) of the concurrent waves."""


QUICK = Workload(12, ((20, 3), (100, 1)))
FULL = Workload(30, ((20, 30), (100, 5)))


# ------------------------------------------------------------------ workloads


def run_body(shell_steps: int, label: str) -> dict[str, object]:
    """A run of `shell_steps` `true` calls, then `finish` (agentrun counts both)."""
    calls = [
        ScriptedToolCall(name=ToolName.SHELL, arguments={"command": TOOL_COMMAND})
        for _ in range(shell_steps)
    ]
    calls.append(ScriptedToolCall(name=ToolName.FINISH, arguments={"answer": "done"}))
    spec = RunSpec(
        goal=f"step benchmark: {shell_steps} shell steps, then finish",
        tools=[ToolName.SHELL, ToolName.FINISH],
        model=ModelRef(provider="scripted", script=[ScriptedTurn(tool_calls=[c]) for c in calls]),
        limits=Limits(max_steps=shell_steps + 1),
        labels={"bench": label},
    )
    return spec.model_dump(mode="json", exclude_unset=True)


def loop_run(steps: int) -> list[float]:
    """The plain loop: per step the next scripted reply and a subprocess; seconds per step."""
    script: list[dict[str, list[dict[str, dict[str, str]]]]] = [
        {"tool_calls": [{"arguments": {"command": TOOL_COMMAND}}]}
    ] * steps
    durations = []
    for turn in script:
        started = time.perf_counter()
        arguments = turn["tool_calls"][0]["arguments"]
        subprocess.run(["sh", "-c", arguments["command"]], check=True)
        durations.append(time.perf_counter() - started)
    return durations


# ------------------------------------------------------------------ one wave


@dataclass
class Wave:
    who: str
    runs: int
    steps_per_run: int
    steps: int = 0
    span: float = float("nan")
    completed: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    rss_per_run_kb: float = float("nan")
    ids: list[str] = field(default_factory=list)
    """Workflow ids (agentrun: run ids) of the wave's runs."""
    step_seconds: list[float] = field(default_factory=list)
    """The loop's own per-step timings (the others come from histories)."""
    problem: str = ""

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.span if self.span > 0 else float("nan")

    def cpu_ms_per_step(self, service: str) -> float:
        return (
            1000 * self.cpu[service] / self.steps
            if self.steps and service in self.cpu
            else float("nan")
        )


class RssPeak:
    """Samples a process tree's RSS in a thread; `per_run` is the peak above the start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = tree_memory_kb(pid)[0]
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, tree_memory_kb(self.pid)[0])

    def per_run(self, runs: int) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_memory_kb(self.pid)[0])
        return (self.peak - self.before) / runs


def cpu_delta(
    stack: LocalStack, before: dict[str, float], services: tuple[str, ...]
) -> dict[str, float]:
    now = stack.cpu()
    return {s: now[s] - before.get(s, 0.0) for s in services if s in now}


async def agentrun_wave(
    http: httpx.AsyncClient, stack: LocalStack, runs: int, shell_steps: int, wave_seconds: float
) -> Wave:
    label = uuid.uuid4().hex[:10]
    body = run_body(shell_steps, label)
    wave = Wave("agentrun", runs, shell_steps + 1)
    deadline = time.monotonic() + wave_seconds
    rss = RssPeak(stack.pids()["worker"])
    cpu_before = stack.cpu()
    launches = await asyncio.gather(*(launch(http, body) for _ in range(runs)))
    wave.ids = [x.run_id for x in launches if x.run_id]
    refused = Counter(x.error for x in launches if x.error)
    ended: dict[str, RunSummary] = {}
    while set(wave.ids) - ended.keys():
        if time.monotonic() > deadline:
            wave.problem = "the --timeout passed"
            break
        if dead := stack.exited():
            wave.problem = f"services exited: {dead}"
            break
        await asyncio.sleep(POLL_S)
        try:
            listed = await list_wave(http, label)
        except httpx.HTTPError:
            continue  # an API hiccup; the next poll asks again
        ended.update((s.run_id, s) for s in listed if s.closed_at and s.status.terminal)
    wave.cpu = cpu_delta(stack, cpu_before, ("temporal", "worker", "api"))
    wave.rss_per_run_kb = rss.per_run(runs)
    wave.steps = sum(s.steps for s in ended.values())
    wave.completed = sum(1 for s in ended.values() if s.status == RunStatus.COMPLETED)
    closes = [s.closed_at.timestamp() for s in ended.values() if s.closed_at]
    if closes:
        wave.span = max(closes) - min(x.posted_at for x in launches)
    if refused:
        wave.problem += f" launches refused: {dict(refused)}"
    return wave


async def floor_wave(
    client: Client,
    stack: LocalStack,
    queue: str,
    runs: int,
    steps: int,
    per_step: int,
    fixed: int,
    wave_seconds: float,
    local_per_step: int = 0,
) -> Wave:
    wave = Wave("floor", runs, steps)
    rss = RssPeak(stack.pids()["floor"])
    cpu_before = stack.cpu()
    started = time.time()
    handles = await asyncio.gather(
        *(
            client.start_workflow(
                floor.WORKFLOW_NAME,
                floor.FloorInput(steps, per_step, fixed, local_per_step),
                id=f"floor-{uuid.uuid4().hex}",
                task_queue=queue,
                result_type=int,
            )
            for _ in range(runs)
        )
    )
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(h.result() for h in handles)), wave_seconds
        )
    except TimeoutError:
        wave.problem = "the --timeout passed"
        results = []
    wave.cpu = cpu_delta(stack, cpu_before, ("temporal", "floor"))
    wave.rss_per_run_kb = rss.per_run(runs)
    wave.ids = [h.id for h in handles]
    wave.steps = sum(results)
    wave.completed = len(results)
    if results:
        closes = [(await h.describe()).close_time for h in handles]
        wave.span = max(c.timestamp() for c in closes if c) - started
    return wave


def loop_wave(runs: int, steps: int) -> Wave:
    wave = Wave("loop", runs, steps)
    before = os.times()
    started = time.perf_counter()
    with ThreadPoolExecutor(runs) as pool:
        per_run = list(pool.map(loop_run, [steps] * runs))
    wave.span = time.perf_counter() - started
    after = os.times()
    # The loop's CPU is this process's and its `sh` children's.
    spent = sum(after[:4]) - sum(before[:4])
    wave.cpu = {"loop": spent}
    wave.steps = runs * steps
    wave.completed = runs
    wave.step_seconds = per_run[0]
    return wave


# ------------------------------------------------------------------ histories


def payload_bytes(msg: Message) -> int:
    """Bytes of the `Payload` messages anywhere inside `msg`."""
    if isinstance(msg, Payload):
        return msg.ByteSize()
    total = 0
    for desc, value in msg.ListFields():
        if desc.message_type is None:
            continue
        if isinstance(value, Message):
            values = [value]
        elif hasattr(value, "values") and callable(value.values):
            values = list(value.values())  # a map field
        else:
            values = list(value)  # a repeated field
        total += sum(payload_bytes(v) for v in values if isinstance(v, Message))
    return total


_COVERED = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
        EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
    }
)
"""Event kinds the per-step rows count (a workflow task and an activity are three
events each); the rest are listed by kind under "history events"."""


LOCAL_ACTIVITY_MARKER = "core_local_activity"
"""The marker the SDK's core records for a local activity's result."""
LOCAL = " (local)"
"""Suffix of a local activity's name in the counts (its marker in the history)."""


def local_activity(marker: MarkerRecordedEventAttributes) -> str | None:
    """The activity type of a local activity's marker; None for other markers."""
    if marker.marker_name != LOCAL_ACTIVITY_MARKER:
        return None
    try:
        data = json.loads(marker.details["data"].payloads[0].data)
        return str(data["activity_type"])
    except (KeyError, IndexError, ValueError, TypeError):
        return "local activity"


@dataclass
class Counts:
    steps: int
    workflow_tasks: int
    activities: Counter[str]
    upserts: int
    events: int
    payload_bytes: int
    history_bytes: int
    step_starts: list[datetime]
    """When each step's first activity was scheduled (the step boundaries)."""
    other: Counter[str] = field(default_factory=Counter)
    """Events of the kinds none of the rows above covers (signals, timers, markers ...)."""

    @classmethod
    def of(cls, history: History, steps: int, starts_step: str, per_step: int = 1) -> Counts:
        activities: Counter[str] = Counter()
        starts: list[datetime] = []
        wft = upserts = pbytes = 0
        n_first = 0
        other: Counter[str] = Counter()
        for event in history.events:
            if event.event_type not in _COVERED:
                other[EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")] += 1
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                wft += 1
            elif event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
                upserts += 1
            elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
                name = local_activity(event.marker_recorded_event_attributes)
                if name is not None:
                    activities[name + LOCAL] += 1
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                name = event.activity_task_scheduled_event_attributes.activity_type.name
                activities[name] += 1
                if name == starts_step:
                    if n_first % per_step == 0:
                        starts.append(event.event_time.ToDatetime())
                    n_first += 1
            pbytes += payload_bytes(event)
        return cls(
            steps,
            wft,
            activities,
            upserts,
            len(history.events),
            pbytes,
            history.ByteSize(),
            starts,
            other,
        )

    def step_durations(self) -> list[float]:
        return [
            (b - a).total_seconds()
            for a, b in zip(self.step_starts, self.step_starts[1:], strict=False)
        ]


@dataclass
class PerStep:
    """What one more step adds to a run: (long - short) / (their step difference)."""

    workflow_tasks: float
    activities: dict[str, float]
    upserts: float
    events: float
    payload_bytes: float
    history_bytes: float
    fixed: Counts
    """The short run's counts minus its steps' share: what every run pays once."""
    other: dict[str, float] = field(default_factory=dict)

    @classmethod
    def between(cls, short: Counts, long: Counts) -> PerStep:
        d = long.steps - short.steps

        def per(a: float, b: float) -> float:
            return (b - a) / d

        names = sorted(set(short.activities) | set(long.activities))
        others = sorted(set(short.other) | set(long.other))
        other = {n: per(short.other[n], long.other[n]) for n in others}
        acts = {n: per(short.activities[n], long.activities[n]) for n in names}
        step = cls(
            per(short.workflow_tasks, long.workflow_tasks),
            {n: v for n, v in acts.items() if v},
            per(short.upserts, long.upserts),
            per(short.events, long.events),
            per(short.payload_bytes, long.payload_bytes),
            per(short.history_bytes, long.history_bytes),
            short,
            {n: v for n, v in other.items() if v},
        )
        s = short.steps
        step.fixed = Counts(
            0,
            round(short.workflow_tasks - s * step.workflow_tasks),
            Counter({n: c for n in names if (c := round(short.activities[n] - s * acts[n]))}),
            round(short.upserts - s * step.upserts),
            round(short.events - s * step.events),
            round(short.payload_bytes - s * step.payload_bytes),
            round(short.history_bytes - s * step.history_bytes),
            [],
            Counter({n: c for n in others if (c := round(short.other[n] - s * other[n]))}),
        )
        return step

    @property
    def round_trips(self) -> int:
        """Activity round trips per step (local activities apart: `local_trips`)."""
        trips = sum(n for name, n in self.activities.items() if not name.endswith(LOCAL))
        return max(1, round(trips))

    @property
    def local_trips(self) -> int:
        """Local activities per step."""
        return round(sum(n for name, n in self.activities.items() if name.endswith(LOCAL)))


async def history_of(client: Client, workflow_id: str) -> History:
    return History(
        events=[e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()]
    )


async def agentrun_counts(
    http: httpx.AsyncClient, client: Client, run_id: str, steps: int
) -> Counts:
    resp = await http.get(f"/v1/runs/{run_id}")
    resp.raise_for_status()
    view = RunView.model_validate(resp.json())
    history = await history_of(client, view.workflow_id)
    return Counts.of(history, view.steps or steps, MODEL_ACTIVITY)


# ------------------------------------------------------------------ report


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and b == b and a == a else "-"


@dataclass
class Results:
    per_step: PerStep | None = None
    floor_per_step: PerStep | None = None
    sequential: dict[str, list[float]] = field(default_factory=dict)
    """Who → per-step seconds of the sequential run (all steps, the first included)."""
    waves: list[tuple[Wave, Wave, Wave]] = field(default_factory=list)


def print_report(res: Results, work: Workload, opts: StackOptions) -> None:
    trips = res.per_step.round_trips if res.per_step else 2
    local = res.per_step.local_trips if res.per_step else 0
    locals_ = f" and {local} no-op local activit{'y' if local == 1 else 'ies'}" if local else ""
    print(
        f"\nagentrun step benchmark, one invocation, one Temporal dev server "
        f"(history.transferProcessorMaxPollRPS={TRANSFER_POLL_RPS})\n"
        f"  step = a scripted model call + `sh -c {TOOL_COMMAND}` in a warm sandbox, "
        f"through POST /v1/runs\n"
        f"  floor = FloorSteps on its own worker, {trips} no-op activity round trips"
        f"{locals_} per step; loop = plain Python, a subprocess per tool call\n"
        f"  worker: max_concurrent_activities={opts.max_concurrent_activities}, "
        f"max_concurrent_workflow_tasks={opts.max_concurrent_workflow_tasks}, "
        f"sandbox pool {opts.sandbox_pool_size} (the floor worker has the same slots)\n"
    )
    seq = res.sequential
    if seq:
        print(
            f"sequential: 1 run of {work.sequential_steps} steps; percentiles over steps 2..n (ms)"
        )
        print(
            f"  {'':<14}{'agentrun':>10}{'floor':>10}{'loop':>10}"
            f"{'agentrun/floor':>16}{'agentrun/loop':>15}"
        )
        rows: tuple[tuple[str, Callable[[list[float]], float]], ...] = (
            ("p50", lambda xs: pct(xs[1:], 0.5)),
            ("p95", lambda xs: pct(xs[1:], 0.95)),
            ("mean", lambda xs: statistics.fmean(xs[1:]) if len(xs) > 1 else float("nan")),
            ("first step", lambda xs: xs[0] if xs else float("nan")),
        )
        for name, f in rows:
            ms_a, ms_f, ms_l = (1000 * f(seq.get(w, [])) for w in ("agentrun", "floor", "loop"))
            print(
                f"  {name:<14}{ms_a:>10.1f}{ms_f:>10.1f}{ms_l:>10.2f}"
                f"{ratio(ms_a, ms_f):>16}{ratio(ms_a, ms_l):>15}"
            )
    if res.waves:
        print("\nthroughput: N concurrent runs, steps/s (first launch → last close)")
        print(
            f"  {'runs x steps':<14}{'agentrun':>10}{'floor':>10}{'loop':>10}"
            f"{'agentrun/floor':>16}{'done':>10}"
        )
        for a, fl, lo in res.waves:
            print(
                f"  {f'{a.runs} x {a.steps_per_run}':<14}{a.steps_per_second:>10.1f}"
                f"{fl.steps_per_second:>10.1f}{lo.steps_per_second:>10.0f}"
                f"{ratio(a.steps_per_second, fl.steps_per_second):>16}"
                f"{f'{a.completed}/{a.runs}':>10}"
            )
        print("\nCPU ms per step (/proc utime+stime over the wave) and worker RSS per run")
        print(
            f"  {'runs':<6}{'temporal':>9}{'worker':>8}{'api':>6}"
            f"{'| floor: temporal':>18}{'worker':>8}"
            f"{'| loop':>8}{'| a/f: temporal':>16}{'worker':>8}{'| RSS/run KB':>13}{'floor':>7}"
        )
        for a, fl, lo in res.waves:
            t, w, api = (a.cpu_ms_per_step(s) for s in ("temporal", "worker", "api"))
            ft, fw = fl.cpu_ms_per_step("temporal"), fl.cpu_ms_per_step("floor")
            print(
                f"  {a.runs:<6}{t:>9.1f}{w:>8.1f}{api:>6.1f}{ft:>18.1f}{fw:>8.1f}"
                f"{lo.cpu_ms_per_step('loop'):>8.2f}{ratio(t, ft):>16}{ratio(w, fw):>8}"
                f"{a.rss_per_run_kb:>13.0f}{fl.rss_per_run_kb:>7.0f}"
            )
        print(
            "  (a/f = agentrun/floor; loop = the bench process and its `sh` children;\n"
            "   RSS/run = the worker's process tree's peak during the wave above its RSS "
            "before, / runs)"
        )
        for a, fl, _ in res.waves:
            for wave in (a, fl):
                if wave.problem or wave.completed < wave.runs:
                    print(
                        f"  {wave.who} {wave.runs} runs: {wave.completed}/{wave.runs} completed "
                        f"{wave.problem}"
                    )
    if res.per_step:
        print_counts(res.per_step, res.floor_per_step)


def print_counts(ps: PerStep, fl: PerStep | None) -> None:
    print(
        "\nper step, from histories: (long run - short run) / their step difference; "
        "fixed = once per run"
    )
    print(f"  {'':<26}{'agentrun':>10}{'floor':>10}{'fixed':>10}")

    def row(name: str, a: float, f: float | None, fixed: int) -> None:
        fs = f"{f:>10.1f}" if f is not None else f"{'-':>10}"
        print(f"  {name:<26}{a:>10.1f}{fs}{fixed:>10}")

    row(
        "workflow tasks",
        ps.workflow_tasks,
        fl.workflow_tasks if fl else None,
        ps.fixed.workflow_tasks,
    )
    row(
        "activities",
        sum(ps.activities.values()),
        sum(fl.activities.values()) if fl else None,
        sum(ps.fixed.activities.values()),
    )
    for name, n in sorted(ps.activities.items()):
        row(f"  {name}", n, None, ps.fixed.activities.get(name, 0))
    for name, n in sorted(ps.fixed.activities.items()):
        if name not in ps.activities:
            row(f"  {name}", 0.0, None, n)
    row("search-attribute upserts", ps.upserts, fl.upserts if fl else None, ps.fixed.upserts)
    row("history events", ps.events, fl.events if fl else None, ps.fixed.events)
    for name in sorted(set(ps.other) | set(ps.fixed.other)):
        row(f"  {name.lower()}", ps.other.get(name, 0.0), None, ps.fixed.other.get(name, 0))
    row("payload bytes", ps.payload_bytes, fl.payload_bytes if fl else None, ps.fixed.payload_bytes)
    row("history bytes", ps.history_bytes, fl.history_bytes if fl else None, ps.fixed.history_bytes)
    print("  (agentrun payloads are encrypted by the payload codec; queries are not in histories)")


# ------------------------------------------------------------------ main


async def measure(
    stack: LocalStack, work: Workload, opts: StackOptions, wave_seconds: float
) -> Results:
    res = Results()
    queue = f"floor-{secrets.token_hex(3)}"
    stack.add_service(
        "floor",
        [
            sys.executable,
            "-m",
            "bench.floor",
            "--address",
            f"{HOST}:{stack.temporal_port}",
            "--task-queue",
            queue,
            "--max-concurrent-activities",
            str(opts.max_concurrent_activities),
            "--max-concurrent-workflow-tasks",
            str(opts.max_concurrent_workflow_tasks),
        ],
        floor.READY_LINE,
    )
    client = await Client.connect(f"{HOST}:{stack.temporal_port}")
    pool = opts.sandbox_pool_size
    biggest = max(n for n, _ in work.waves)
    async with httpx.AsyncClient(
        base_url=stack.api_url,
        timeout=60,
        limits=httpx.Limits(max_connections=biggest + 10),
        headers=stack.auth_headers(),
    ) as http:

        def settled() -> float:
            return time.monotonic() + SETTLE_S

        # Warm-up, and the short runs of the per-step counts.
        log("warm-up run")
        warm = await agentrun_wave(http, stack, 1, SMALL_RUN_STEPS, wave_seconds)
        if warm.completed != 1:
            raise StackError(
                f"the warm-up run did not complete: {warm.problem}\n{stack.tail('worker')}"
            )
        short = await agentrun_counts(http, client, warm.ids[0], SMALL_RUN_STEPS + 1)
        await settle(stack, pool, settled())

        log(f"sequential run of {work.sequential_steps} steps")
        seq = await agentrun_wave(http, stack, 1, work.sequential_steps, wave_seconds)
        if seq.completed != 1:
            raise StackError(f"the sequential run did not complete: {seq.problem}")
        long = await agentrun_counts(http, client, seq.ids[0], seq.steps)
        res.per_step = PerStep.between(short, long)
        trips, local = res.per_step.round_trips, res.per_step.local_trips
        fixed = sum(res.per_step.fixed.activities.values())
        res.sequential["agentrun"] = long.step_durations()

        fl_short_w = await floor_wave(
            client, stack, queue, 1, short.steps, trips, fixed, wave_seconds, local
        )
        fl_short = Counts.of(
            await history_of(client, fl_short_w.ids[0]), short.steps, "floor_noop", trips
        )
        log("sequential floor and loop")
        fl_seq = await floor_wave(
            client, stack, queue, 1, seq.steps, trips, fixed, wave_seconds, local
        )
        fl_long = Counts.of(await history_of(client, fl_seq.ids[0]), seq.steps, "floor_noop", trips)
        res.floor_per_step = PerStep.between(fl_short, fl_long)
        res.sequential["floor"] = fl_long.step_durations()
        lo_seq = await asyncio.to_thread(loop_wave, 1, seq.steps)
        res.sequential["loop"] = lo_seq.step_seconds
        res.waves.append((seq, fl_seq, lo_seq))

        for runs, shell_steps in work.waves:
            await settle(stack, pool, settled())
            log(f"{runs} concurrent runs of {shell_steps + 1} steps")
            a = await agentrun_wave(http, stack, runs, shell_steps, wave_seconds)
            fl = await floor_wave(
                client, stack, queue, runs, a.steps_per_run, trips, fixed, wave_seconds, local
            )
            lo = await asyncio.to_thread(loop_wave, runs, a.steps_per_run)
            res.waves.append((a, fl, lo))
    return res


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="agentrun-steps-") as tmp:
        yield Path(tmp)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the stack's cleanup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.steps", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps per run (~3-5 minutes)")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds each wave may take (default 100, 900 without --quick)",
    )
    parser.add_argument("--activities", type=int, default=32, help="max_concurrent_activities")
    parser.add_argument("--workflow-tasks", type=int, default=16)
    parser.add_argument("--pool", type=int, default=10, help="sandbox warm pool size")
    parser.add_argument("--image", default="agentrun-sandbox:latest", help="sandbox image")
    parser.add_argument(
        "--workdir", type=Path, help="keep logs and state here (default: a temp dir, removed)"
    )
    parser.add_argument(
        "--local-tool-seconds",
        type=float,
        help="AGENTRUN_LOCAL_TOOL_CALL_SECONDS of the stack (0: every tool call a normal "
        "activity, as before local tool calls; default: the deployment default)",
    )
    args = parser.parse_args(argv)
    work = QUICK if args.quick else FULL
    extra = (
        ()
        if args.local_tool_seconds is None
        else (("AGENTRUN_LOCAL_TOOL_CALL_SECONDS", str(args.local_tool_seconds)),)
    )
    opts = StackOptions(args.activities, args.workflow_tasks, args.pool, args.image, extra)
    wave_seconds = args.timeout or (100.0 if args.quick else 900.0)
    signal.signal(signal.SIGTERM, _terminate)
    with workdir(args.workdir) as root:
        stack = LocalStack(root, opts)
        try:
            log("starting the stack")
            stack.start()
            res = asyncio.run(measure(stack, work, opts, wave_seconds))
            print_report(res, work, opts)
            code = 0
        except StackError as exc:
            print(f"bench.steps: {exc}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt:
            print("bench.steps: interrupted; cleaning up", file=sys.stderr)
            code = 130
        finally:
            stack.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
