"""Many-worker benchmark: `.venv/bin/python -m bench.workers [--runs 20] [--steps 10]`.

Steps per second with 1, 2 and 3 worker processes on one Temporal server, in the
multi-host configuration (`docs/deploy.md`): every worker has its own state
directory and shares only Temporal, an S3 bucket (SeaweedFS, `AGENTRUN_ARTIFACT_STORE=s3`),
Redis for live deltas (`AGENTRUN_DELTA_STORE=redis`), the payload key file and the
accounts database. Then the artifact store's put/get latency on S3 beside the
local store's (`bench.store_bench`).

A wave is `--runs` concurrent runs of `--steps` `shell` steps (`sh -c true`) and a
`finish`, launched through the REST API (`bench.steps.agentrun_wave`). The waves
run with 1 worker, then 2, then 3 (each added to the running stack), then with the
extra two stopped (SIGTERM: they drain), 1 again. The baseline is the mean of the
two 1-worker waves, measured in the same invocation on the same server, so the
ratios hold on a noisy machine. It prints per wave: steps/s and its ratio to the
baseline, and CPU milliseconds per step of the Temporal server, all workers
together and the API.

On the 2-core development machine the Temporal dev server and the workers share
the two cores, so more workers cannot add CPU: read the figures as what a second
and third worker cost or win when the machine is already full, and size real
deployments from per-step CPU (docs/deploy.md). It must not assert anything.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from agentrun.config import load_settings
from agentrun.payload_codec import KeyRing, write_key_ring
from bench._stack import LocalStack, StackError, StackOptions
from bench.load import settle
from bench.steps import SETTLE_S, Wave, agentrun_wave, log, workdir
from bench.store_bench import print_latency
from store.backends import open_artifact_store
from tests.redis_fixtures import RedisUnavailable, redis_process
from tests.s3_fixtures import SeaweedS3, seaweedfs_server

WORKER_READY = "worker polling task queue"


@dataclass
class Measured:
    workers: int
    wave: Wave
    cpu: dict[str, float]
    """CPU seconds over the wave: `temporal`, `workers` (all together), `api`."""

    def ms_per_step(self, service: str) -> float:
        steps = self.wave.steps
        return 1000 * self.cpu.get(service, 0.0) / steps if steps else float("nan")


def shared_env(root: Path, s3: SeaweedS3, redis_url: str) -> tuple[tuple[str, str], ...]:
    """What every worker and the API share in a multi-host deployment."""
    keys = root / "payload-keys.json"
    write_key_ring(keys, KeyRing.generate(str(keys)))
    return (
        *s3.env("bench-workers/").items(),
        ("AGENTRUN_DELTA_STORE", "redis"),
        ("AGENTRUN_REDIS_URL", redis_url),
        ("AGENTRUN_PAYLOAD_KEYS_FILE", str(keys)),
        ("AGENTRUN_DATABASE_URL", f"sqlite:///{root / 'accounts.db'}"),
    )


def worker_cpu(stack: LocalStack) -> dict[str, float]:
    """CPU seconds so far of the server, the API and all workers summed."""
    cpu = stack.cpu()
    return {
        "temporal": cpu.get("temporal", 0.0),
        "api": cpu.get("api", 0.0),
        "workers": sum(v for k, v in cpu.items() if k.startswith("worker")),
    }


async def one_wave(
    http: httpx.AsyncClient, stack: LocalStack, workers: int, runs: int, steps: int, limit: float
) -> Measured:
    await settle(stack, stack.options.sandbox_pool_size, time.monotonic() + SETTLE_S)
    await asyncio.sleep(2.0)  # let pool refills and janitors quiet down
    log(f"{workers} worker(s): {runs} concurrent runs of {steps + 1} steps")
    before = worker_cpu(stack)
    wave = await agentrun_wave(http, stack, runs, steps, limit)
    after = worker_cpu(stack)
    return Measured(workers, wave, {k: after[k] - before[k] for k in after})


def add_worker(stack: LocalStack, n: int) -> None:
    state = stack.workdir / f"state-{n}"  # as if on a host of its own
    stack.add_service(
        f"worker-{n}",
        [sys.executable, str(Path(__file__).resolve().parent.parent / "worker.py")],
        WORKER_READY,
        timeout=120.0,
        env={"AGENTRUN_STATE_DIR": str(state)},
    )


async def measure(stack: LocalStack, runs: int, steps: int, limit: float) -> list[Measured]:
    out: list[Measured] = []
    async with httpx.AsyncClient(
        base_url=stack.api_url,
        timeout=60,
        limits=httpx.Limits(max_connections=runs + 10),
        headers=stack.auth_headers(),
    ) as http:
        log("warm-up run")
        warm = await agentrun_wave(http, stack, 1, 2, limit)
        if warm.completed != 1:
            raise StackError(f"the warm-up run did not complete: {warm.problem}")
        out.append(await one_wave(http, stack, 1, runs, steps, limit))
        for n in (2, 3):
            add_worker(stack, n)
            out.append(await one_wave(http, stack, n, runs, steps, limit))
        log("stopping workers 2 and 3 (they drain), then 1 worker again")
        for n in (3, 2):
            stack.stop_service(f"worker-{n}")
        out.append(await one_wave(http, stack, 1, runs, steps, limit))
    return out


def report(results: list[Measured]) -> None:
    singles = [m.wave.steps_per_second for m in results if m.workers == 1]
    base = statistics.mean(singles)
    print()
    print(
        f"{'workers':>7} | {'steps/s':>7} | {'x 1 worker':>10} | {'completed':>9} | "
        f"{'CPU ms/step: temporal':>21} {'workers':>7} {'api':>5}"
    )
    for m in results:
        w = m.wave
        print(
            f"{m.workers:>7} | {w.steps_per_second:7.2f} | {w.steps_per_second / base:9.2f}x | "
            f"{w.completed:>4}/{w.runs:<4} | {m.ms_per_step('temporal'):21.1f} "
            f"{m.ms_per_step('workers'):7.1f} {m.ms_per_step('api'):5.1f}"
            + (f"  ({w.problem.strip()})" if w.problem else "")
        )
    print(f"baseline: the mean of the two 1-worker waves, {base:.2f} steps/s")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the stack's cleanup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.workers", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=20, help="concurrent runs per wave")
    parser.add_argument("--steps", type=int, default=10, help="shell steps per run")
    parser.add_argument("--rounds", type=int, default=20, help="store latency samples per size")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a wave may take")
    parser.add_argument("--workdir", type=Path, help="keep logs and state here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    code = 0
    try:
        with workdir(args.workdir) as root, seaweedfs_server() as s3, redis_process() as redis:
            opts = StackOptions(32, 16, 10, extra_env=shared_env(root, s3, redis.url))
            stack = LocalStack(root, opts)
            try:
                log("starting the stack (Temporal, worker 1, API; S3 and Redis)")
                stack.start()
                report(asyncio.run(measure(stack, args.runs, args.steps, args.timeout)))
            finally:
                stack.close()
            print("\nartifact store latency (same machine, same run):")
            print_latency(
                {
                    "local": open_artifact_store(load_settings(state_dir=root / "latency")),
                    "s3": open_artifact_store(s3.settings(root, prefix="bench-latency/")),
                },
                args.rounds,
            )
    except (StackError, RedisUnavailable) as exc:
        print(f"bench.workers: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("bench.workers: interrupted; cleaned up", file=sys.stderr)
        code = 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
