"""Deterministic, reversible Docker names for a run's container and workspace volume.

Names are the only run identity every worker process can find without shared memory,
and the only one that survives claiming a pool container (Docker can rename a
container but never relabel it). So a name must map back to its `RunRef` exactly:
tenant and run ids are escaped (`_u` for `_`, `_xHH` for any byte outside
`[A-Za-z0-9.-]`), which never produces `__`, and `__` separates the two.

Layout, for namespace `agentrun`:
  agentrun-<tenant>__<run>        the run's container (claimed from the pool or created)
  agentrun-ws-<tenant>__<run>     the workspace volume of a run created without the pool
  agentrun-pool-<pool>-<hex>      an unclaimed container of pool <pool> (`SandboxConfig.pool_id`)
  agentrun-pool-<hex>             an unclaimed pool container of a worker before pool ids
  agentrun-wspool-<hex>           a pool container's volume (the run's once claimed)

This module must not talk to Docker; it is pure string handling.
"""

from __future__ import annotations

import re

from sandbox.base import RunRef

_SAFE = re.compile(r"[A-Za-z0-9.\-]")


def escape(value: str) -> str:
    out = []
    for ch in value:
        if _SAFE.fullmatch(ch):
            out.append(ch)
        elif ch == "_":
            out.append("_u")
        else:
            out.extend(f"_x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def unescape(value: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch != "_":
            raw += ch.encode()
            i += 1
        elif value[i + 1 : i + 2] == "u":
            raw += b"_"
            i += 2
        elif value[i + 1 : i + 2] == "x":
            raw.append(int(value[i + 2 : i + 4], 16))
            i += 4
        else:
            raise ValueError(f"bad escape in {value!r}")
    return raw.decode("utf-8", "surrogatepass")


def run_key(run: RunRef) -> str:
    return f"{escape(run.tenant_id)}__{escape(run.run_id)}"


def container_name(namespace: str, run: RunRef) -> str:
    return f"{namespace}-{run_key(run)}"


def volume_name(namespace: str, run: RunRef) -> str:
    return f"{namespace}-ws-{run_key(run)}"


def pool_container_name(namespace: str, pool: str, slot: str) -> str:
    return f"{namespace}-pool-{pool}-{slot}"


def pool_volume_name(namespace: str, slot: str) -> str:
    return f"{namespace}-wspool-{slot}"


def is_pool_container(namespace: str, name: str) -> bool:
    name = name.lstrip("/")
    return name.startswith(f"{namespace}-pool-") and "__" not in name


def pool_of_container(namespace: str, name: str) -> str:
    """The pool id in an unclaimed pool container's name ("" for one made before ids)."""
    pool, sep, _slot = name.lstrip("/").removeprefix(f"{namespace}-pool-").rpartition("-")
    return pool if sep else ""


def _parse(rest: str) -> RunRef | None:
    tenant, sep, run = rest.partition("__")
    if not (sep and tenant and run):
        return None
    try:
        return RunRef(unescape(tenant), unescape(run))
    except (ValueError, UnicodeDecodeError):
        return None


def run_of_container(namespace: str, name: str) -> RunRef | None:
    """The run a container name belongs to (None for pool containers and strangers)."""
    name = name.lstrip("/")
    prefix = f"{namespace}-"
    return _parse(name[len(prefix) :]) if name.startswith(prefix) else None


def run_of_volume(namespace: str, name: str) -> RunRef | None:
    """The run a workspace volume name belongs to (None for pool volumes)."""
    prefix = f"{namespace}-ws-"
    return _parse(name[len(prefix) :]) if name.startswith(prefix) else None
