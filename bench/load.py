"""Load benchmark: `.venv/bin/python -m bench.load [--runs 200] [--steps 5] [--baseline 10]`.

Launches N runs at once through the API (`POST /v1/runs`), each a scripted model
asking for `--steps` cheap `shell` calls (`echo step-i`) and then `finish`, waits
for all of them to end and prints: completed / failed (the error of each failed
run, grouped), launch latency and per-run wall time (POST → the run closed in
Temporal) p50/p95, steps per second, the CPU each service spent per step, the
worker's peak RSS (its process tree, sampled, and the kernel's high-water mark)
and the peak number of sandbox containers. A baseline is measured in the same
invocation: the same workload with `--baseline` runs (after one unmeasured
warm-up run), and the N-run wave is printed as ratios against it. The goal it
prints is `N/N completed`.

It starts its own stack on 127.0.0.1 (`bench._stack`: a Temporal dev server,
`worker.py` and the API as subprocesses, a sandbox namespace of its own), stops
by itself within `--timeout` (reporting what is unfinished) and removes its
processes, containers, volumes and workspace loop devices on the way out. The
exit code is 0 only when every run of the N-run wave completed.

Worker tuning (flags; the defaults are for 200 runs on 2 cores): 32 concurrent
activities (one thread each: the sandbox calls mostly wait on dockerd), 16
concurrent workflow tasks and a warm pool of 10 containers (the first runs skip
the cold start; a bigger pool's refills compete with the runs for dockerd). At
N=30 on the shared 2-core machine, 16/8 and 64/32 slots were both slower than
32/16 (3.2 and 3.8 against 4.4 steps/s): the worker used a fifth of a core, and a
step's time went to waiting for workflow tasks to be dispatched, not to running
them.

It must not assert anything: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from agentrun.contracts import (
    Limits,
    ModelRef,
    RunSpec,
    RunStatus,
    ScriptedToolCall,
    ScriptedTurn,
    ToolName,
)
from api.schemas import RunList, RunSummary, RunView
from bench._stack import LocalStack, StackError, StackOptions, tree_memory_kb

SAMPLE_S = 1.0
"""How often the sampler reads /proc and `docker ps` (each costs a little CPU)."""
POLL_S = 2.0
"""How often a wave lists its runs to see which ended (one API call per 200 runs)."""
SETTLE_S = 30.0
"""At most this long between waves for the warm pool to be full again."""
PAGE = 200
"""The listing's maximum page size."""
READ_TIMEOUT_S = 10.0
"""Reads (listing, a failed run's view) give up after this, so `--timeout` holds."""


# ------------------------------------------------------------------ workload


def run_spec(steps: int, wave_label: str) -> dict[str, object]:
    """The JSON body of one run: `steps` shell calls, then `finish`."""
    calls = [
        ScriptedToolCall(name=ToolName.SHELL, arguments={"command": f"echo step-{i}"})
        for i in range(1, steps + 1)
    ]
    calls.append(ScriptedToolCall(name=ToolName.FINISH, arguments={"answer": "done"}))
    turns = [ScriptedTurn(tool_calls=[call]) for call in calls]
    spec = RunSpec(
        goal=f"load benchmark: {steps} shell steps, then finish",
        tools=[ToolName.SHELL, ToolName.FINISH],
        model=ModelRef(provider="scripted", script=turns),
        limits=Limits(max_steps=steps + 1),
        labels={"bench": wave_label},
    )
    return spec.model_dump(mode="json", exclude_unset=True)


# ------------------------------------------------------------------ sampling


@dataclass
class Peaks:
    containers: int = 0
    running_containers: int = 0
    rss_kb: dict[str, int] = field(default_factory=dict)
    """Per service: the largest sampled VmRSS of its process tree."""
    worker_hwm_kb: int = 0
    """The worker's VmHWM (its peak since it started, so cumulative over waves)."""
    failed_samples: int = 0
    """Samples lost to a failing `docker ps` (the peaks may then be low)."""


class Sampler:
    """Samples the stack's memory and containers every `SAMPLE_S` into `peaks`."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.peaks = Peaks()

    def reset(self) -> Peaks:
        """Start a new wave's peaks; return the ended wave's."""
        ended, self.peaks = self.peaks, Peaks()
        return ended

    def sample(self) -> None:
        states = self.stack.container_states()
        p = self.peaks
        p.containers = max(p.containers, len(states))
        p.running_containers = max(p.running_containers, states.count("running"))
        for name, pid in self.stack.pids().items():
            rss, hwm = tree_memory_kb(pid)
            p.rss_kb[name] = max(p.rss_kb.get(name, 0), rss)
            if name == "worker":
                p.worker_hwm_kb = max(p.worker_hwm_kb, hwm)

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sample)
            except Exception:  # a docker ps that failed: counted, the next sample goes on
                self.peaks.failed_samples += 1
            await asyncio.sleep(SAMPLE_S)


# ------------------------------------------------------------------ one wave


@dataclass
class Launch:
    posted_at: float
    """`time.time()` just before the POST (the run's wall time starts here)."""
    seconds: float
    run_id: str | None = None
    error: str | None = None


@dataclass
class WaveResult:
    name: str
    runs: int
    launches: list[Launch]
    ended: dict[str, RunSummary]
    seen: dict[str, RunSummary]
    peaks: Peaks
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each service used during the wave."""
    errors: dict[str, str] = field(default_factory=dict)
    """Failed run id → its error (or reason), from `GET /v1/runs/{id}`."""
    stopped_by: str | None = None
    """Why the wave stopped waiting before every run ended (timeout, dead service)."""

    @property
    def launched(self) -> dict[str, Launch]:
        return {launch.run_id: launch for launch in self.launches if launch.run_id}

    def count(self, status: RunStatus) -> int:
        return sum(1 for s in self.ended.values() if s.status == status)

    @property
    def failed(self) -> int:
        """Runs that ended otherwise than completed, and launches the API refused."""
        refused = sum(1 for launch in self.launches if launch.error)
        return len(self.ended) - self.count(RunStatus.COMPLETED) + refused

    @property
    def unfinished(self) -> list[str]:
        return [run_id for run_id in self.launched if run_id not in self.ended]

    def walls(self) -> list[float]:
        """Seconds from POST to close, of the runs that completed."""
        launched = self.launched
        return [
            s.closed_at.timestamp() - launched[run_id].posted_at
            for run_id, s in self.ended.items()
            if s.status == RunStatus.COMPLETED and s.closed_at is not None
        ]

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.ended.values())

    def span(self) -> float:
        """Seconds from the first POST to the last close."""
        closes = [s.closed_at.timestamp() for s in self.ended.values() if s.closed_at]
        if not closes:
            return float("nan")
        return max(closes) - min(launch.posted_at for launch in self.launches)

    def steps_per_second(self) -> float:
        return self.steps / self.span()

    def all_completed(self) -> bool:
        return self.count(RunStatus.COMPLETED) == self.runs


async def launch(http: httpx.AsyncClient, body: dict[str, object]) -> Launch:
    posted_at = time.time()
    started = time.perf_counter()
    try:
        resp = await http.post("/v1/runs", json=body)
    except httpx.HTTPError as exc:
        return Launch(posted_at, time.perf_counter() - started, error=f"{type(exc).__name__}")
    seconds = time.perf_counter() - started
    if resp.status_code != 201:
        return Launch(posted_at, seconds, error=f"HTTP {resp.status_code}: {resp.text[:300]}")
    return Launch(posted_at, seconds, run_id=resp.json()["run_id"])


async def list_wave(http: httpx.AsyncClient, wave_label: str) -> list[RunSummary]:
    """Every run of the wave that visibility knows of (open ones first)."""
    runs: list[RunSummary] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"label": f"bench={wave_label}", "limit": PAGE}
        if cursor:
            params["cursor"] = cursor
        resp = await http.get("/v1/runs", params=params, timeout=READ_TIMEOUT_S)
        resp.raise_for_status()
        page = RunList.model_validate(resp.json())
        runs.extend(page.runs)
        if not page.next_cursor:
            return runs
        cursor = page.next_cursor


async def wave(
    http: httpx.AsyncClient,
    stack: LocalStack,
    sampler: Sampler,
    name: str,
    runs: int,
    steps: int,
    deadline: float,
) -> WaveResult:
    """Launch `runs` runs at once, wait until all ended or `deadline` passed."""
    label = f"{uuid.uuid4().hex[:8]}-{name}"
    body = run_spec(steps, label)
    sampler.reset()
    cpu_before = stack.cpu()
    launches = await asyncio.gather(*(launch(http, body) for _ in range(runs)))
    result = WaveResult(name, runs, list(launches), {}, {}, Peaks())
    expected = set(result.launched)
    while True:
        try:
            listed = await list_wave(http, label)
        except httpx.HTTPError:
            listed = []  # an API hiccup; the next poll asks again
        for summary in listed:
            result.seen[summary.run_id] = summary
            if summary.closed_at is not None and summary.status.terminal:
                result.ended[summary.run_id] = summary
        if not expected - result.ended.keys():
            break
        if dead := stack.exited():
            result.stopped_by = "services exited: " + ", ".join(
                f"{svc} (code {code})" for svc, code in dead.items()
            )
            break
        if time.monotonic() + POLL_S > deadline:
            result.stopped_by = "the --timeout passed"
            break
        await asyncio.sleep(POLL_S)
    await asyncio.to_thread(sampler.sample)  # a short wave has at least one sample
    result.peaks = sampler.reset()
    result.cpu = {svc: t - cpu_before.get(svc, 0.0) for svc, t in stack.cpu().items()}
    failed = [run_id for run_id, s in result.ended.items() if s.status != RunStatus.COMPLETED]
    errors = await asyncio.gather(*(failure_of(http, run_id) for run_id in failed))
    result.errors = dict(zip(failed, errors, strict=True))
    return result


async def failure_of(http: httpx.AsyncClient, run_id: str) -> str:
    try:
        resp = await http.get(f"/v1/runs/{run_id}", timeout=READ_TIMEOUT_S)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        return f"(could not read the run: {type(exc).__name__})"
    view = RunView.model_validate(resp.json())
    return f"{view.status}/{view.reason}: {view.error or '(no error message)'}"


async def settle(stack: LocalStack, pool_size: int, deadline: float) -> None:
    """Wait (bounded) until only the refilled warm pool is left, so a wave starts
    from the same state as a fresh worker."""
    until = min(deadline, time.monotonic() + SETTLE_S)
    while time.monotonic() < until:
        states = await asyncio.to_thread(stack.container_states)
        if states.count("running") >= pool_size and len(states) == pool_size:
            return
        await asyncio.sleep(0.5)


# ------------------------------------------------------------------ report


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _mb(kb: int) -> str:
    return f"{kb / 1024:.0f}"


def print_table(results: list[WaveResult], steps: int) -> None:
    head = (
        f"{'wave':<9}{'runs':>5}{'done':>6}{'failed':>7}{'unfin.':>7}"
        f"{'launch p50/p95 ms':>19}{'run p50/p95 s':>16}{'steps/s':>9}"
        f"{'containers':>12}{'worker RSS MB':>15}"
    )
    print(head)
    for r in results:
        launch_ms = [launch.seconds * 1000 for launch in r.launches]
        walls = r.walls()
        rss = r.peaks.rss_kb.get("worker", 0)
        print(
            f"{r.name:<9}{r.runs:>5}{r.count(RunStatus.COMPLETED):>6}{r.failed:>7}"
            f"{len(r.unfinished):>7}"
            f"{pct(launch_ms, 0.5):>10.0f}/{pct(launch_ms, 0.95):<8.0f}"
            f"{pct(walls, 0.5):>8.1f}/{pct(walls, 0.95):<7.1f}"
            f"{r.steps_per_second():>9.1f}"
            f"{r.peaks.containers:>6} ({r.peaks.running_containers:>3})"
            f"{_mb(rss):>7} ({_mb(r.peaks.worker_hwm_kb):>5})"
        )
    print(
        f"\n  a step is one model turn and its tool call: each run is {steps} `shell` steps "
        "and a `finish` step\n  run = POST → the run closed in Temporal; containers = peak "
        "existing (running)\n  worker RSS = peak of its process tree (its VmHWM since start)"
    )
    for r in results:
        others = ", ".join(
            f"{svc} {_mb(kb)} MB" for svc, kb in sorted(r.peaks.rss_kb.items()) if svc != "worker"
        )
        if r.steps:
            per_step = ", ".join(
                f"{svc} {1000 * t / r.steps:.0f} ms" for svc, t in sorted(r.cpu.items())
            )
            busy = r.cpu.get("worker", 0.0) / r.span()
            cpu = f"CPU per step: {per_step} (worker busy {busy:.0%} of a core)"
        else:
            cpu = "CPU per step: no step ended"
        print(f"  {r.name + ':':<9} {cpu}\n  {'':<9} peak RSS of the other services: {others}")
        if r.peaks.failed_samples:
            print(f"  {'':<9} {r.peaks.failed_samples} samples failed (`docker ps`)")


def print_ratios(load: WaveResult, base: WaveResult) -> None:
    lw, bw = load.walls(), base.walls()
    print(
        f"\nratio {load.name}/{base.name} (N={load.runs} vs N={base.runs}): "
        f"steps/s {load.steps_per_second() / base.steps_per_second():.2f}x, "
        f"run p50 {pct(lw, 0.5) / pct(bw, 0.5):.2f}x, run p95 {pct(lw, 0.95) / pct(bw, 0.95):.2f}x"
    )


_VOLATILE = re.compile(r"\b(?:[0-9a-f]{12,}|[0-9a-hjkmnp-tv-z]{26})\b")
"""Container ids, hex names and run ids: what differs between two runs' same error."""


def print_failures(result: WaveResult) -> None:
    groups: dict[str, list[str]] = {}
    for run_id, error in result.errors.items():
        key = _VOLATILE.sub("…", error.replace(run_id, "<run>"))[:300]
        groups.setdefault(key, []).append(run_id)
    for launch_error, n in Counter(x.error for x in result.launches if x.error).items():
        groups.setdefault(f"launch refused: {launch_error}", []).extend(["-"] * n)
    if groups:
        print(f"\n{result.name}: failed runs, grouped by error:")
        for key, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            print(f"  {len(ids):>4} x {key}   (e.g. run {ids[0]})")
    if result.unfinished:
        by_status = Counter(
            str(result.seen[r].status) if r in result.seen else "not yet listed"
            for r in result.unfinished
        )
        print(
            f"\n{result.name}: {len(result.unfinished)} runs unfinished when it stopped "
            f"({result.stopped_by}): "
            + ", ".join(f"{n} {status}" for status, n in by_status.most_common())
            + f"; e.g. {', '.join(result.unfinished[:5])}"
        )


# ------------------------------------------------------------------ main


@dataclass
class Options:
    runs: int
    steps: int
    baseline: int
    timeout: float
    options: StackOptions


async def measure(stack: LocalStack, opts: Options, deadline: float) -> list[WaveResult]:
    sampler = Sampler(stack)
    sampling = asyncio.create_task(sampler.run())
    limits = httpx.Limits(max_connections=max(opts.runs, opts.baseline) + 10)
    pool = opts.options.sandbox_pool_size
    results: list[WaveResult] = []
    try:
        async with httpx.AsyncClient(
            base_url=stack.api_url,
            timeout=60,
            limits=limits,
            headers=stack.auth_headers(),
        ) as http:
            warm = await wave(http, stack, sampler, "warm-up", 1, opts.steps, deadline)
            if warm.stopped_by or not warm.all_completed():
                return [warm]
            for name, n in (("baseline", opts.baseline), ("load", opts.runs)):
                await settle(stack, pool, deadline)
                results.append(await wave(http, stack, sampler, name, n, opts.steps, deadline))
                if results[-1].stopped_by:
                    break
    finally:
        sampling.cancel()
    return results


def report(stack: LocalStack, opts: Options, results: list[WaveResult]) -> int:
    o = opts.options
    print(
        f"\nagentrun load: N concurrent runs through the API, {opts.steps} shell steps each\n"
        f"  worker: max_concurrent_activities={o.max_concurrent_activities}, "
        f"max_concurrent_workflow_tasks={o.max_concurrent_workflow_tasks}, "
        f"sandbox pool {o.sandbox_pool_size}; sandbox namespace {stack.namespace}\n"
    )
    print_table(results, opts.steps)
    by_name = {r.name: r for r in results}
    if all(by_name.get(w) and by_name[w].walls() for w in ("load", "baseline")):
        print_ratios(by_name["load"], by_name["baseline"])
    for r in results:
        print_failures(r)
    worker_errors = stack.tail("worker", 10_000_000).count("Traceback")
    if worker_errors:
        print(
            f"\nthe worker log holds {worker_errors} tracebacks "
            "(run with --workdir DIR to keep the logs)"
        )
    main = by_name.get("load")
    if main is None:
        print(f"\nGOAL MISSED: the N={opts.runs} wave did not run (see above)")
        return 1
    done = main.count(RunStatus.COMPLETED)
    verdict = "goal met" if main.all_completed() else f"GOAL MISSED (goal: {opts.runs}/{opts.runs})"
    print(f"\n{done}/{opts.runs} completed  {verdict}")
    return 0 if main.all_completed() else 1


@contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="agentrun-load-") as tmp:
        yield Path(tmp)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the stack's cleanup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=200, help="concurrent runs (N)")
    parser.add_argument("--steps", type=int, default=5, help="shell steps per run")
    parser.add_argument("--baseline", type=int, default=10, help="runs of the baseline wave")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for everything")
    parser.add_argument("--activities", type=int, default=32, help="max_concurrent_activities")
    parser.add_argument("--workflow-tasks", type=int, default=16)
    parser.add_argument("--pool", type=int, default=10, help="sandbox warm pool size")
    parser.add_argument("--image", default="agentrun-sandbox:latest", help="sandbox image")
    parser.add_argument(
        "--workdir", type=Path, help="keep logs and state here (default: a temp dir, removed)"
    )
    args = parser.parse_args(argv)
    opts = Options(
        args.runs,
        args.steps,
        args.baseline,
        args.timeout,
        StackOptions(args.activities, args.workflow_tasks, args.pool, args.image),
    )
    signal.signal(signal.SIGTERM, _terminate)
    deadline = time.monotonic() + opts.timeout
    with workdir(args.workdir) as root:
        stack = LocalStack(root, opts.options)
        try:
            stack.start(timeout=min(120.0, opts.timeout))
            results = asyncio.run(measure(stack, opts, deadline))
            code = report(stack, opts, results)
        except StackError as exc:
            print(f"bench.load: the stack did not start: {exc}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt:
            print("bench.load: interrupted; cleaning up", file=sys.stderr)
            code = 130
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second ^C must not stop cleanup
                signal.signal(sig, signal.SIG_IGN)
            containers, volumes, loops = stack.close()
        print(
            f"cleaned up: services stopped; {containers} containers, {volumes} volumes "
            f"removed, {loops} loop devices detached"
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
