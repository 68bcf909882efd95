"""Sandbox latency benchmark: `.venv/bin/python -m bench.sandbox_bench [--iterations N]`.

Prints, in one run: a cold container start (run start -> first output without a
pool), run start -> first output with a warm pool, warm tool-call latency p50/p95
through the in-container executor, the same commands as a plain local subprocess
(the baseline) and the ratios. Sandbox and local samples alternate, so a machine
shared with other work skews both alike. Needs Docker and the sandbox image
(scripts/build-sandbox-image.sh); uses its own namespace and removes everything it
created. It must not assert anything: the numbers depend on the machine.
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
from worker import sandbox_config

POLICY = SandboxPolicy()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def first_output_ms(sandbox: DockerSandbox, run: RunRef) -> float:
    started = time.perf_counter()
    sandbox.exec(run, "s0-c0", "echo hi", policy=POLICY, timeout_s=30, max_output_bytes=64)
    return (time.perf_counter() - started) * 1000


def interleaved(
    sandbox: DockerSandbox, run: RunRef, command: str, n: int
) -> tuple[list[float], list[float]]:
    box, base = [], []
    tag = f"{command.replace(' ', '_')}-{uuid.uuid4().hex[:4]}"
    for i in range(n):
        t = time.perf_counter()
        sandbox.exec(run, f"{tag}-{i}", command, policy=POLICY, timeout_s=30, max_output_bytes=4096)
        box.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", command], capture_output=True, check=True)
        base.append((time.perf_counter() - t) * 1000)
    return box, base


def main() -> None:
    parser = argparse.ArgumentParser(description="agentrun sandbox latency benchmark")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--starts", type=int, default=3, help="cold and pooled run starts")
    args = parser.parse_args()
    namespace = f"agentrun-bench-{uuid.uuid4().hex[:6]}"
    cold_sb = DockerSandbox(
        sandbox_config(Settings(sandbox_namespace=namespace, sandbox_pool_size=0))
    )
    pool_sb = DockerSandbox(
        sandbox_config(Settings(sandbox_namespace=namespace, sandbox_pool_size=2))
    )
    try:
        cold = [first_output_ms(cold_sb, RunRef("bench", f"cold-{i}")) for i in range(args.starts)]
        pooled = []
        for i in range(args.starts):
            pool_sb.warm_pool()
            time.sleep(0.5)  # an idle worker's pool has settled
            pooled.append(first_output_ms(pool_sb, RunRef("bench", f"pool-{i}")))
        run = RunRef("bench", "warm")
        interleaved(cold_sb, run, "true", 30)  # warm-up
        rows = [(c, *interleaved(cold_sb, run, c, args.iterations)) for c in ("echo hi", "true")]
    finally:
        pool_sb.close()
        cold_sb.janitor(lambda _run: False)
        cold_sb.close()

    def runs(xs: list[float]) -> str:
        return f"median {statistics.median(xs):6.0f} ms  ({', '.join(f'{x:.0f}' for x in xs)})"

    print(f"cold start, run start -> first output (no pool): {runs(cold)}")
    print(f"with pool,  run start -> first output:           {runs(pooled)}")
    print(
        f"{'command':<9}{'sandbox p50':>12}{'p95':>9}{'local p50':>11}{'p95':>9}"
        f"{'x p50':>8}{'x p95':>8}"
    )
    for command, box, base in rows:
        print(
            f"{command:<9}{pct(box, 0.5):>10.2f}ms{pct(box, 0.95):>7.2f}ms"
            f"{pct(base, 0.5):>9.2f}ms{pct(base, 0.95):>7.2f}ms"
            f"{pct(box, 0.5) / pct(base, 0.5):>7.2f}x{pct(box, 0.95) / pct(base, 0.95):>7.2f}x"
        )


if __name__ == "__main__":
    main()
