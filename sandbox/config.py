"""`SandboxConfig`: the operator's sandbox settings, and only those the sandbox reads.

Design (why it looks like this): the sandbox is a floor below the worker, so it does
not read `agentrun.config.Settings` (environment variables, secrets, every other
floor's knobs). The worker builds this from its settings (`worker.sandbox_config`) and
hands it in; tests and the benchmark build it the same way. It has no defaults on
purpose: the defaults live in one place, `Settings`.

This module must not: read the environment or any file, or import the Docker SDK.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SandboxConfig:
    """What the operator allows a run's sandbox, and how this worker names its objects."""

    namespace: str
    """Prefix of container/volume names and value of their `agentrun.namespace` label."""
    image: str
    """The default image, the only one a warm pool container runs."""
    image_allowlist: tuple[str, ...]
    """Further images a run may ask for (`SandboxPolicy.image`)."""
    runtime: str | None
    """A Docker runtime (`runsc` for gVisor, …); None for Docker's default."""
    pool_size: int
    """Started, unassigned containers kept ready; 0 disables the warm pool."""
    memory_mb: int
    max_memory_mb: int
    cpus: float
    max_cpus: float
    pids: int
    max_pids: int
    workspace_mb: int
    max_workspace_mb: int
    allow_network: bool
    output_store_bytes: int
    """How much of a call's stdout/stderr is kept in the workspace (for spilling)."""
    tmp_mb: int
    """Size of the container's tmpfs `/tmp` (counts against the run's memory)."""
    workspace_images: Path | None
    """Absolute directory on the Docker host for the workspace filesystem images (the
    kernel-enforced workspace quota); None runs without a workspace size limit."""
    owner: str = ""
    """The worker that creates this sandbox's containers and volumes (its Temporal
    identity), labelled on each: only its janitor removes them while it polls
    (`sandbox/_janitor.py`). Empty: unlabelled, any janitor of the namespace may."""

    def allowed_images(self) -> list[str]:
        return [self.image, *self.image_allowlist]

    @property
    def pool_id(self) -> str:
        """Which warm pool of the namespace this worker fills, claims from and trims.

        Derived from the pool's size and from everything a pool container is made
        with, so workers of one deployment (same settings) share one pool, while a
        worker with another pool size, or other sandbox defaults, keeps a pool of
        its own: it neither trims the other's to its size nor hands its runs a
        container made with the other's limits.
        """
        made_with = (
            self.pool_size,
            self.image,
            self.runtime,
            self.memory_mb,
            self.cpus,
            self.pids,
            self.workspace_mb,
            self.tmp_mb,
            self.workspace_images is not None,
        )
        return hashlib.sha256(repr(made_with).encode()).hexdigest()[:8]
