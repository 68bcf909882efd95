"""Fixtures for the sandbox tests: real Docker, the real image, nothing mocked.

* ``sandbox_image``: fails the session loudly when Docker is not reachable, and builds
  `agentrun-sandbox:latest` with scripts/build-sandbox-image.sh when it is missing or
  carries a stale executor (the script is idempotent and quick when up to date).
* ``sandbox_config``: the `SandboxConfig` the worker would build from test settings,
  with a namespace of our own per session, so the janitor and pool of these tests
  never touch another engineer's (or a real deployment's) containers.
* ``docker_sandbox``: one `DockerSandbox` for the session; everything in the namespace
  is removed when the session ends.
* ``run_ref``: a fresh tenant/run per test, destroyed afterwards.
* ``Trimmer``: a janitor that takes every other pool for retired, so it removes
  their unclaimed containers at once (racing claims, trimming after a test).
* ``leftovers``: what a namespace left in Docker; removing it also releases the
  workspace images (loop devices, image files), like the janitor does.

Import the fixtures you use into the test module; tests/conftest.py is not ours.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import docker
import docker.errors
import pytest

from agentrun.config import Settings
from agentrun.contracts import SandboxPolicy
from sandbox._connections import Connections
from sandbox._containers import LABEL_NAMESPACE, LABEL_QUOTA_MB, Containers
from sandbox._janitor import Janitor
from sandbox._workspace_images import WorkspaceImages, attached_loops, release
from sandbox.base import ExecOutcome, JanitorReport, RunRef
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from worker import sandbox_config as config_from_settings

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build-sandbox-image.sh"
POLICY = SandboxPolicy()


def docker_client() -> Any:
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"Docker is not reachable ({exc}); the sandbox tests need a running engine "
            "(start it with `dockerd > /tmp/dockerd.log 2>&1 &`)",
            pytrace=False,
        )
    return client


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    docker_client()
    done = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1200, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            f"building the sandbox image failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}",
            pytrace=False,
        )
    return Settings().sandbox_image


@pytest.fixture(scope="session")
def sandbox_config(sandbox_image: str, tmp_path_factory: pytest.TempPathFactory) -> SandboxConfig:
    settings = Settings(
        sandbox_image=sandbox_image,
        # Workspace images of the session's sandboxes live in a temporary directory,
        # never in the checkout's state directory.
        sandbox_workspace_dir=tmp_path_factory.mktemp("workspaces"),
        sandbox_namespace=f"agentrun-test-{uuid.uuid4().hex[:8]}",
        sandbox_pool_size=0,
        sandbox_memory_mb=256,
        sandbox_pids=128,
        sandbox_workspace_mb=64,
        sandbox_output_store_bytes=4 << 20,
    )
    return config_from_settings(settings)


@pytest.fixture(scope="session")
def docker_sandbox(sandbox_config: SandboxConfig) -> Iterator[DockerSandbox]:
    sandbox = DockerSandbox(sandbox_config)
    try:
        yield sandbox
    finally:
        sandbox.janitor(lambda _run: False)
        sandbox.close()
        leftovers(sandbox_config.namespace, remove=True)
        if sandbox_config.workspace_images is not None:
            with contextlib.suppress(OSError):  # not empty: a leak, left for inspection
                (sandbox_config.workspace_images / sandbox_config.namespace).rmdir()


@pytest.fixture
def run_ref(docker_sandbox: DockerSandbox) -> Iterator[RunRef]:
    run = new_run()
    yield run
    docker_sandbox.destroy(run, keep_workspace=False)


def new_run() -> RunRef:
    return RunRef(f"t-{uuid.uuid4().hex[:6]}", f"r-{uuid.uuid4().hex[:8]}")


def leftovers(namespace: str, *, remove: bool = False) -> tuple[list[str], list[str]]:
    """Names of this namespace's containers and volumes (optionally removing them, and
    releasing their workspace images: loop devices and image files must not leak).

    Lists through the plain list endpoints: the SDK's `containers.list` inspects every
    container it found, and fails on one a pool refill or a claim removed meanwhile.
    """
    client = docker.from_env()
    flt = {"label": f"{LABEL_NAMESPACE}={namespace}"}
    containers = client.api.containers(all=True, filters=flt)
    volumes = client.api.volumes(filters=flt).get("Volumes") or []
    if remove:
        for c in containers:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(c["Id"], force=True)
        for v in volumes:
            quota = LABEL_QUOTA_MB in (v.get("Labels") or {})
            device = (v.get("Options") or {}).get("device")
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_volume(v["Name"], force=True)
            if quota and device:
                release(Path(device))
    return [c["Names"][0].lstrip("/") for c in containers], [v["Name"] for v in volumes]


def executor_module() -> ModuleType:
    """sandbox/image/executor.py, loaded as a module (it imports nothing of agentrun)."""
    spec = importlib.util.spec_from_file_location(
        "agentrun_executor", ROOT / "sandbox" / "image" / "executor.py"
    )
    assert spec is not None and spec.loader is not None
    executor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(executor)
    return executor


def workspace_image(config: SandboxConfig, volume: str) -> Path:
    """The image file of a workspace volume (see sandbox/_workspace_images.py)."""
    return (
        WorkspaceImages(config.workspace_images, config.namespace, "")
        .link_for(volume)
        .with_suffix(".img")
    )


def loops_backed_by(image: Path) -> list[str]:
    """The loop devices attached to `image` (deleted or not)."""
    real = os.path.realpath(image)
    return [device for device, backing, _ in attached_loops() if backing == real]


def sh(
    sandbox: DockerSandbox,
    run: RunRef,
    command: str,
    *,
    call_id: str | None = None,
    timeout_s: float = 20,
    max_output_bytes: int = 64 << 10,
    policy: SandboxPolicy = POLICY,
) -> ExecOutcome:
    """Run one command in the run's sandbox (a fresh call id unless one is given)."""
    return sandbox.exec(
        run,
        call_id or f"c-{uuid.uuid4().hex[:10]}",
        command,
        policy=policy,
        timeout_s=timeout_s,
        max_output_bytes=max_output_bytes,
    )


class Trimmer:
    """The janitor of a worker with `pool_size` (default: none) that takes every other
    pool for retired (`retired_pool_s=0`): it removes every unclaimed container of the
    other pools it finds, claiming each first, so it races each claim for them."""

    def __init__(self, config: SandboxConfig, pool_size: int = 0) -> None:
        client = docker.from_env(timeout=60)
        self._connections = Connections(client)
        own = replace(config, pool_size=pool_size)
        containers = Containers(own, client, self._connections)
        self._janitor = Janitor(containers, self._connections, retired_pool_s=0)

    def janitor(self, is_live: Callable[[RunRef], bool]) -> JanitorReport:
        return self._janitor.sweep(is_live)

    def close(self) -> None:
        self._connections.close()
