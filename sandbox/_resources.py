"""A run's sandbox resources: the policy it asked for, clamped by the operator's limits.

Design (why it looks like this):

* **Refuse, do not shrink.** A run that asks for more than the operator allows (an
  image outside the allow-list, network, memory, pids, workspace over the maximum)
  gets a `SandboxPolicyError` naming the setting to change; silently giving it less
  would surface later as a confusing limit hit. CPUs are the exception: they are a
  ceiling, and Docker refuses more than the host has, so they are clamped quietly.
* **Workspace size**: there is no Docker kwarg for it (cgroup v1, ext4 here: no
  volume quotas), so the workspace volume is a filesystem of exactly that size
  (`sandbox/_workspace_images.py`) and the kernel refuses a write past it. Its size
  is fixed when the volume is made, which is why a pool container (made ahead with
  the default size) serves only runs that ask for the default size. A call that
  filled it reports `LimitKind.DISK`.

This module must not: talk to Docker (the host's CPU count is handed in), or read
settings other than `SandboxConfig`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker.types

from agentrun.contracts import SandboxPolicy
from sandbox.base import SandboxPolicyError
from sandbox.config import SandboxConfig


@dataclass(frozen=True)
class Resources:
    """A run's effective sandbox settings after the operator's allow-list and maxima."""

    image: str
    network: bool
    memory_mb: int
    cpus: float
    pids: int
    workspace_mb: int


def resolve_resources(
    config: SandboxConfig, policy: SandboxPolicy, host_cpus: Callable[[], float]
) -> Resources:
    """Apply the operator's allow-list and maxima; refuse what exceeds them.

    `host_cpus` is asked only once the policy passed the checks before it (it costs a
    Docker round trip the first time).
    """
    image = policy.image or config.image
    if image not in config.allowed_images():
        raise SandboxPolicyError(
            f"image {image!r} is not allowed; allowed: {config.allowed_images()} "
            "(operators extend AGENTRUN_SANDBOX_IMAGE_ALLOWLIST)"
        )
    if policy.network and not config.allow_network:
        raise SandboxPolicyError(
            "this deployment does not allow sandbox network access "
            "(operators enable it with AGENTRUN_SANDBOX_ALLOW_NETWORK=true)"
        )

    def bounded(name: str, asked: float | None, default: float, maximum: float) -> float:
        value = default if asked is None else asked
        if value > maximum:
            raise SandboxPolicyError(
                f"sandbox {name}={value} exceeds the operator maximum {maximum} "
                f"(AGENTRUN_SANDBOX_MAX_{name.upper()}); ask for at most {maximum}"
            )
        return value

    cpus = bounded("cpus", policy.cpus, config.cpus, config.max_cpus)
    return Resources(
        image=image,
        network=policy.network,
        memory_mb=int(
            bounded("memory_mb", policy.memory_mb, config.memory_mb, config.max_memory_mb)
        ),
        # Docker refuses more CPUs than the host has: clamp silently, it is a ceiling.
        cpus=min(cpus, host_cpus()),
        pids=int(bounded("pids", policy.pids, config.pids, config.max_pids)),
        workspace_mb=int(
            bounded(
                "workspace_mb", policy.workspace_mb, config.workspace_mb, config.max_workspace_mb
            )
        ),
    )


def is_default(config: SandboxConfig, res: Resources, host_cpus: float) -> bool:
    """Whether `res` is what a run gets without asking (what a pool container runs).

    The workspace size is part of it: a pool container's workspace is a filesystem
    made with the default size, and a filesystem in use cannot shrink.
    """
    return (
        res.image == config.image
        and not res.network
        and res.memory_mb == config.memory_mb
        and res.cpus == min(config.cpus, host_cpus)
        and res.pids == config.pids
        and res.workspace_mb == config.workspace_mb
    )


def limit_kwargs(res: Resources) -> dict[str, Any]:
    """The Docker `containers.create` arguments that enforce `res` (workspace size aside)."""
    return {
        "network_mode": "bridge" if res.network else "none",
        "pids_limit": res.pids,
        "mem_limit": f"{res.memory_mb}m",
        # Equal to the memory limit: no swap, so a memory bomb meets the OOM killer.
        "memswap_limit": f"{res.memory_mb}m",
        "nano_cpus": int(res.cpus * 1e9),
        "ulimits": [docker.types.Ulimit(name="nofile", soft=4096, hard=4096)],
    }
