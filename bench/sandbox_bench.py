"""Sandbox latency benchmark: `.venv/bin/python -m bench.sandbox_bench [--iterations N]`.

Prints, in one run: a cold container start (run start -> first output without a
pool), run start -> first output with a warm pool, warm tool-call latency p50/p95
through the in-container executor, the same commands as a plain local subprocess
(the baseline) and the ratios. Needs Docker and the sandbox image
(scripts/build-sandbox-image.sh). Uses its own namespace and removes everything it
created. It must not assert anything: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import uuid

from agentrun.config import Settings
from agentrun.contracts import SandboxPolicy
from sandbox.base import RunRef
from sandbox.docker_sandbox import DockerSandbox

POLICY = SandboxPolicy()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def local(command: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", command], capture_output=True, check=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


def sandboxed(sandbox: DockerSandbox, run: RunRef, command: str, n: int, tag: str) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        sandbox.exec(run, f"{tag}-{i}", command, policy=POLICY, timeout_s=30, max_output_bytes=4096)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--cold-runs", type=int, default=3)
    args = parser.parse_args()
    namespace = f"agentrun-bench-{uuid.uuid4().hex[:6]}"
    cold_sb = DockerSandbox(Settings(sandbox_namespace=namespace, sandbox_pool_size=0))
    pool_sb = DockerSandbox(Settings(sandbox_namespace=namespace, sandbox_pool_size=2))
    try:
        cold = []
        for i in range(args.cold_runs):
            run = RunRef("bench", f"cold-{i}")
            t = time.perf_counter()
            cold_sb.exec(run, "s0-c0", "echo hi", policy=POLICY, timeout_s=30, max_output_bytes=64)
            cold.append((time.perf_counter() - t) * 1000)
        pooled = []
        for i in range(args.cold_runs):
            pool_sb.warm_pool()
            time.sleep(0.5)  # let the pool's executors settle, as on an idle worker
            run = RunRef("bench", f"pool-{i}")
            t = time.perf_counter()
            pool_sb.exec(run, "s0-c0", "echo hi", policy=POLICY, timeout_s=30, max_output_bytes=64)
            pooled.append((time.perf_counter() - t) * 1000)
        run = RunRef("bench", "warm")
        sandboxed(cold_sb, run, "true", 20, "warmup")
        rows = []
        for command in ("echo hi", "true"):
            box = sandboxed(cold_sb, run, command, args.iterations, command.replace(" ", "_"))
            base = local(command, args.iterations)
            rows.append((command, box, base))
    finally:
        pool_sb.close()
        cold_sb.janitor(lambda _run: False)
        cold_sb.close()

    print(
        f"cold start, run start -> first output (no pool): median {statistics.median(cold):.0f} ms"
        f"  (runs: {', '.join(f'{x:.0f}' for x in cold)})"
    )
    print(
        f"pooled,     run start -> first output:           median {statistics.median(pooled):.0f} ms"
        f"  (runs: {', '.join(f'{x:.0f}' for x in pooled)})"
    )
    print(
        f"{'command':<10} {'sandbox p50':>12} {'p95':>8} {'local p50':>10} {'p95':>8} "
        f"{'ratio p50':>10} {'ratio p95':>10}"
    )
    for command, box, base in rows:
        print(
            f"{command:<10} {pct(box, 0.5):>10.2f}ms {pct(box, 0.95):>6.2f}ms "
            f"{pct(base, 0.5):>8.2f}ms {pct(base, 0.95):>6.2f}ms "
            f"{pct(box, 0.5) / pct(base, 0.5):>9.2f}x {pct(box, 0.95) / pct(base, 0.95):>9.2f}x"
        )


if __name__ == "__main__":
    main()
