"""`SandboxConfig`: the operator's sandbox settings, and only those the sandbox reads.

Design (why it looks like this): the sandbox is a floor below the worker, so it does
not read `agentrun.config.Settings` (environment variables, secrets, every other
floor's knobs). The worker builds this from its settings (`worker.sandbox_config`) and
hands it in; tests and the benchmark build it the same way. It has no defaults on
purpose: the defaults live in one place, `Settings`.

This module must not: read the environment or any file, or import the Docker SDK.
"""

from __future__ import annotations

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

    def allowed_images(self) -> list[str]:
        return [self.image, *self.image_allowlist]
