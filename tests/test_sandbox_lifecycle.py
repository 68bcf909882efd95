"""Container and workspace lifecycle: pause/resume, restarts, destroy, janitor, pool."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import pytest

from agentrun.contracts import LimitKind
from sandbox import _names
from sandbox._containers import SANDBOX_USER
from sandbox._workspace_images import WorkspaceImages, older_than
from sandbox.base import RunRef
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from tests.sandbox_fixtures import (
    POLICY,
    Trimmer,
    leftovers,
    loops_backed_by,
    new_run,
    sh,
    workspace_image,
)

pytestmark = pytest.mark.docker

SMALL = POLICY.model_copy(update={"workspace_mb": 16})


def container_of(config: SandboxConfig, run: RunRef) -> Any:
    return docker.from_env().containers.get(_names.container_name(config.namespace, run))


def pool_containers(config: SandboxConfig) -> list[str]:
    """The unclaimed containers of `config`'s own pool (other tests' pools share the namespace)."""
    containers, _ = leftovers(config.namespace)
    return [
        c
        for c in containers
        if _names.is_pool_container(config.namespace, c)
        and _names.pool_of_container(config.namespace, c) == config.pool_id
    ]


def run_objects(config: SandboxConfig, run: RunRef) -> tuple[list[str], list[str]]:
    """This run's containers and volumes, found by label or name (no in-memory state)."""
    containers, volumes = leftovers(config.namespace)
    key = _names.run_key(run)
    return [c for c in containers if key in c], [v for v in volumes if key in v]


def test_first_use_creates_one_container_even_when_raced(
    docker_sandbox: DockerSandbox, run_ref: RunRef, sandbox_config: SandboxConfig
) -> None:
    other = DockerSandbox(sandbox_config)  # a second worker process, in effect
    results: list[object] = []

    def first_call(sandbox: DockerSandbox) -> None:
        try:
            results.append(sh(sandbox, run_ref, "echo ok").stdout)
        except Exception as exc:
            results.append(exc)

    try:
        threads = [
            threading.Thread(target=first_call, args=(sb,)) for sb in (docker_sandbox, other)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.close()
    assert results == [b"ok\n", b"ok\n"]
    containers, volumes = run_objects(sandbox_config, run_ref)
    assert len(containers) == 1 and len(volumes) == 1
    labels = container_of(sandbox_config, run_ref).labels
    assert (
        labels["agentrun.tenant"] == run_ref.tenant_id and labels["agentrun.run"] == run_ref.run_id
    )
    assert labels["agentrun.managed"] == "true"


def test_pause_freezes_the_run_and_resume_keeps_the_workspace(
    docker_sandbox: DockerSandbox, run_ref: RunRef, sandbox_config: SandboxConfig
) -> None:
    sh(docker_sandbox, run_ref, "echo kept > notes.txt")
    docker_sandbox.pause(run_ref)
    assert container_of(sandbox_config, run_ref).status == "paused"
    docker_sandbox.pause(run_ref)  # idempotent
    docker_sandbox.resume(run_ref)
    assert container_of(sandbox_config, run_ref).status == "running"
    assert sh(docker_sandbox, run_ref, "cat notes.txt").stdout == b"kept\n"


def test_workspace_survives_a_container_restart(
    docker_sandbox: DockerSandbox, run_ref: RunRef, sandbox_config: SandboxConfig
) -> None:
    sh(docker_sandbox, run_ref, "echo kept > notes.txt")
    container_of(sandbox_config, run_ref).restart(timeout=1)
    assert sh(docker_sandbox, run_ref, "cat notes.txt").stdout == b"kept\n"


def test_destroy_leaves_nothing_behind_and_is_idempotent(
    docker_sandbox: DockerSandbox, sandbox_config: SandboxConfig
) -> None:
    run = new_run()
    sh(docker_sandbox, run, "echo x > f")
    assert run_objects(sandbox_config, run) != ([], [])
    docker_sandbox.destroy(run, keep_workspace=False)
    docker_sandbox.destroy(run, keep_workspace=False)
    assert run_objects(sandbox_config, run) == ([], [])


def test_destroy_keeping_the_workspace_lets_the_run_continue_later(
    docker_sandbox: DockerSandbox, run_ref: RunRef, sandbox_config: SandboxConfig
) -> None:
    sh(docker_sandbox, run_ref, "echo kept > notes.txt", call_id="s0-c0")
    docker_sandbox.destroy(run_ref, keep_workspace=True)
    assert container_of(sandbox_config, run_ref).status == "exited"  # no processes left
    assert sh(docker_sandbox, run_ref, "cat notes.txt").stdout == b"kept\n"
    assert docker_sandbox.exec(
        run_ref, "s0-c0", "echo again >> notes.txt", policy=POLICY, timeout_s=5, max_output_bytes=10
    ).reattached


def test_janitor_removes_dead_runs_and_keeps_live_ones(
    docker_sandbox: DockerSandbox, sandbox_config: SandboxConfig
) -> None:
    live, dead = new_run(), new_run()
    try:
        sh(docker_sandbox, live, "true")
        sh(docker_sandbox, dead, "true")
        docker_sandbox.destroy(dead, keep_workspace=True)  # a kept workspace is still collected
        report = docker_sandbox.janitor(lambda run: run != dead)
        assert _names.container_name(sandbox_config.namespace, dead) in report.removed_containers
        assert run_objects(sandbox_config, dead) == ([], [])
        assert sh(docker_sandbox, live, "echo alive").stdout == b"alive\n"
    finally:
        docker_sandbox.destroy(live, keep_workspace=False)
        docker_sandbox.destroy(dead, keep_workspace=False)


def test_pool_gives_each_run_its_own_fresh_workspace_and_refills(
    sandbox_config: SandboxConfig,
) -> None:
    config = replace(sandbox_config, pool_size=2)
    pooled = DockerSandbox(config)
    first, second = new_run(), new_run()
    try:
        assert pooled.warm_pool() == 2
        sh(pooled, first, "echo mine > mine.txt")
        out = sh(pooled, second, "ls -A /workspace; cat /proc/1/cmdline | tr '\\0' ' '")
        assert b"mine.txt" not in out.stdout
        # Both runs got pool containers (renamed), each with its own pool volume.
        a, b = container_of(config, first), container_of(config, second)
        assert a.labels["agentrun.pool"] == b.labels["agentrun.pool"] == "true"
        assert a.labels["agentrun.volume"] != b.labels["agentrun.volume"]
        deadline = time.monotonic() + 30
        while len(pool_containers(config)) < 2:  # the background refill
            assert time.monotonic() < deadline, "the pool was not refilled"
            time.sleep(0.1)
        assert len(pool_containers(config)) == 2
        # A second worker process finds the claimed container by name.
        other = DockerSandbox(config)
        assert sh(other, first, "cat mine.txt").stdout == b"mine\n"
        other.close()
    finally:
        pooled.close()
        report = pooled.janitor(lambda _run: False)
    # Dead runs go; unclaimed pool containers stay, up to the pool size...
    assert sorted(report.removed_containers) == sorted(
        _names.container_name(config.namespace, r) for r in (first, second)
    )
    assert len(pool_containers(config)) == 2
    # ...and another worker's janitor, once it takes the pool for retired (its workers
    # gone), removes them, volumes included.
    spare = pool_containers(config)
    trimmer = Trimmer(sandbox_config)
    assert set(spare) <= set(trimmer.janitor(lambda _run: False).removed_containers)
    trimmer.close()
    assert leftovers(config.namespace) == ([], [])


def test_a_run_asking_for_another_workspace_size_gets_a_container_of_its_own(
    sandbox_config: SandboxConfig,
) -> None:
    # A pool container's workspace is a filesystem of the default size, made ahead.
    config = replace(sandbox_config, pool_size=1)
    pooled = DockerSandbox(config)
    run = RunRef("t-pool", new_run().run_id)
    try:
        pooled.warm_pool()
        policy = POLICY.model_copy(update={"workspace_mb": 8})
        out = sh(pooled, run, "head -c 50M /dev/zero > big", policy=policy)
        assert out.limit is LimitKind.DISK
        assert "agentrun.pool" not in container_of(config, run).labels
        assert len(pool_containers(config)) == 1  # the pool container was left for others
        size = sh(pooled, run, "stat -f -c '%b %S' /workspace", policy=policy).stdout.split()
        assert int(size[0]) * int(size[1]) <= 8 << 20
    finally:
        pooled.close()
        # Swept with no pool to keep, so nothing of this test outlives it.
        sweeper = DockerSandbox(replace(config, pool_size=0))
        sweeper.janitor(lambda _run: False)
        sweeper.close()


def test_destroy_and_the_janitor_release_workspace_images_and_loop_devices(
    docker_sandbox: DockerSandbox, sandbox_config: SandboxConfig
) -> None:
    destroyed, kept = new_run(), new_run()
    images = {
        run: workspace_image(sandbox_config, _names.volume_name(sandbox_config.namespace, run))
        for run in (destroyed, kept)
    }
    try:
        for run in (destroyed, kept):
            sh(docker_sandbox, run, "echo x > f")
            assert images[run].exists() and loops_backed_by(images[run])
        docker_sandbox.destroy(destroyed, keep_workspace=False)
        assert not images[destroyed].exists()
        assert loops_backed_by(images[destroyed]) == []
        docker_sandbox.destroy(kept, keep_workspace=True)
        assert images[kept].exists() and loops_backed_by(images[kept])  # kept means kept
        report = docker_sandbox.janitor(lambda run: run != kept)
        assert _names.volume_name(sandbox_config.namespace, kept) in report.released_workspaces
        assert not images[kept].exists()
        assert loops_backed_by(images[kept]) == []
    finally:
        docker_sandbox.destroy(destroyed, keep_workspace=False)
        docker_sandbox.destroy(kept, keep_workspace=False)


def test_a_kept_workspace_comes_back_after_its_loop_device_is_gone(
    docker_sandbox: DockerSandbox, run_ref: RunRef, sandbox_config: SandboxConfig
) -> None:
    # What a host reboot does to a stopped run: loop devices are gone (and their
    # numbers go to other images), the image file stays.
    image = workspace_image(sandbox_config, _names.volume_name(sandbox_config.namespace, run_ref))
    sh(docker_sandbox, run_ref, "echo kept > notes.txt", policy=SMALL)
    docker_sandbox.destroy(run_ref, keep_workspace=True)
    for device in loops_backed_by(image):
        subprocess.run(["losetup", "--detach", device], check=True)
    assert loops_backed_by(image) == []
    assert sh(docker_sandbox, run_ref, "cat notes.txt", policy=SMALL).stdout == b"kept\n"
    assert len(loops_backed_by(image)) == 1
    # ...and its size limit with it.
    out = sh(docker_sandbox, run_ref, "head -c 100M /dev/zero > big", policy=SMALL)
    assert out.limit is LimitKind.DISK


def test_with_the_quota_off_the_workspace_is_a_plain_volume_without_an_image(
    sandbox_config: SandboxConfig,
) -> None:
    config = replace(sandbox_config, workspace_images=None)
    plain = DockerSandbox(config)
    run = new_run()
    try:
        assert sh(plain, run, "echo fine > f && cat f").stdout == b"fine\n"
        volume = docker.from_env().volumes.get(_names.volume_name(config.namespace, run))
        assert "agentrun.quota_mb" not in (volume.attrs.get("Labels") or {})
        assert not volume.attrs.get("Options")
    finally:
        plain.destroy(run, keep_workspace=False)
        plain.close()
    assert run_objects(config, run) == ([], [])


def test_a_sweep_never_fails_on_the_temp_files_of_provisions_under_way(tmp_path: Path) -> None:
    # Issue 9's pool race failed once in CI with a bare FileNotFoundError: a sweep
    # listed a provision's temp image, and the provision deleted it before the sweep
    # read its age. Provisions and sweeps race here for real (root, losetup, mkfs).
    images = WorkspaceImages(tmp_path, "ns", SANDBOX_USER)
    volumes = [f"vol-{i}" for i in range(12)]
    errors: list[BaseException] = []
    provisioned = threading.Event()

    def sweep_until_provisioned() -> None:
        try:
            while not provisioned.is_set():
                assert images.sweep(set(volumes), grace_s=3600) == []
        except BaseException as exc:
            errors.append(exc)

    sweeper = threading.Thread(target=sweep_until_provisioned, daemon=True)
    sweeper.start()
    try:
        for volume in volumes:
            images.provision(volume, size_mb=8)
    finally:
        provisioned.set()
        sweeper.join(timeout=60)
        released = images.sweep(set(), grace_s=0)
    assert not errors, errors
    assert sorted(released) == sorted(volumes)
    assert [p.name for p in (tmp_path / "ns").iterdir()] == []


def test_a_path_that_vanished_is_not_older_than_anything(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    kept.write_bytes(b"")
    now = time.time()
    assert older_than(kept, 60, now + 61)
    assert not older_than(kept, 60, now)
    assert not older_than(tmp_path / "gone", 0, now + 1e9)
