"""Whether the Docker engine can mount this worker's workspace images: asked, not guessed.

Workspace quotas (`sandbox/_workspace_images.py`) work only when the engine resolves
an image's link, a path in the worker's workspace directory, to the loop device the
worker attached: the same kernel, and that directory at the same path in the
engine's mount namespace. `DOCKER_HOST` shows only part of that (`sandbox/engine.py`
refuses a TCP engine on another host before connecting). An engine behind a
forwarded loopback port or unix socket, in a VM (Docker Desktop), or a worker in a
container whose workspace directory is not mounted at the same path on the host,
all look local; their first run's container would fail to start, and be retried as
a transient engine error.

Design (why it looks like this):

* **The probe is the real thing, once, at worker start**: a workspace of
  `PROBE_MB` holding a random token in its root, attached to a loop device like any
  workspace, a volume that mounts it, and a container using that volume that is
  created but never started. Docker mounts a container's volumes to create it (to
  copy the image's `/workspace` into an empty volume) and to copy files out of it;
  the engine reading the token back is proof, anything else stops the worker with
  the setting to change. It costs about a tenth of a second; no process runs.
* **Its objects are labelled like the namespace's others**, with this worker as
  owner, and named `<namespace>-probe-<hex>`, so a worker that dies mid-probe leaves
  them to the janitors. A janitor of another worker may remove the container under
  the probe (this worker does not poll yet, so it counts as gone): that is a race,
  not an answer, and the probe tries again (`ATTEMPTS`).

This module must not: start a container, keep anything after it returns (container,
volume, image and loop device are removed whatever happened), or let an engine error
pass for a placement problem when the engine was merely unreachable.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import tarfile
from collections.abc import Iterator
from typing import Any

import docker.errors
import docker.types
import requests.exceptions

from sandbox._containers import (
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    SANDBOX_USER,
    WORKSPACE,
    Containers,
)
from sandbox._docker_errors import docker_errors
from sandbox._workspace_images import release
from sandbox.base import SandboxPolicyError, SandboxUnavailable

PROBE_MB = 2
PROBE_FILE = "agentrun-probe"
ATTEMPTS = 3
_GONE_OR_UNREACHABLE = (docker.errors.DockerException, requests.exceptions.RequestException)


class _Raced(Exception):
    """The probe's container or volume was removed under it (a janitor)."""


def check_workspace_mounts(containers: Containers) -> None:
    """Raise `SandboxPolicyError` naming the setting to change when the engine cannot
    mount this worker's workspace images; nothing when the quota is off."""
    if not containers.images.enabled:
        return
    for _ in range(ATTEMPTS):
        try:
            _probe(containers)
            return
        except _Raced:
            continue
    raise SandboxUnavailable(
        f"the workspace probe's container was removed {ATTEMPTS} times under it "
        "(another worker's janitor); start the worker again"
    )


def _probe(containers: Containers) -> None:
    client = containers.docker
    name = f"{containers.ns}-probe-{secrets.token_hex(6)}"
    token = secrets.token_hex(16).encode()
    labels = {LABEL_MANAGED: "true", LABEL_NAMESPACE: containers.ns, **containers.owner_label()}
    container_id: str | None = None
    try:
        containers.images.provision(name, PROBE_MB, {PROBE_FILE: token})
        with docker_errors("workspace probe"), _refusals(containers):
            client.volumes.create(
                name=name,
                driver="local",
                driver_opts=containers.images.volume_options(name),
                labels=labels,
            )
            container_id = client.api.create_container(
                image=containers.config.image,
                command=["true"],
                name=name,
                user=SANDBOX_USER,
                labels=labels,
                network_disabled=True,
                host_config=client.api.create_host_config(
                    mounts=[docker.types.Mount(WORKSPACE, name, type="volume")],
                    network_mode="none",
                    read_only=True,
                    cap_drop=["ALL"],
                    log_config=docker.types.LogConfig(type="none"),
                ),
            )["Id"]
            read = _read_token(client, container_id)
        if read != token:
            raise SandboxPolicyError(
                "the Docker engine did not find this worker's probe token in the workspace "
                f"it mounted from {containers.images.link_for(name)}: {_hint(containers)}"
            )
    finally:
        # Best effort (the janitor removes what is left); the image goes in any case.
        if container_id is not None:
            with contextlib.suppress(*_GONE_OR_UNREACHABLE):
                client.api.remove_container(container_id, force=True)
        with contextlib.suppress(*_GONE_OR_UNREACHABLE):
            client.api.remove_volume(name, force=True)
        release(containers.images.link_for(name))


def _read_token(client: Any, container_id: str) -> bytes | None:
    """The probe file as the engine sees it in the container's workspace; None when
    the workspace has no such file (the engine mounted something else)."""
    try:
        stream, _ = client.api.get_archive(container_id, f"{WORKSPACE}/{PROBE_FILE}")
    except docker.errors.NotFound:
        client.api.inspect_container(container_id)  # NotFound here: removed under us
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile(PROBE_FILE)
        return member.read() if member is not None else None


def _hint(containers: Containers) -> str:
    assert containers.images.dir is not None, "the workspace quota is off"
    workspaces = containers.images.dir.parent
    return (
        "workspace quotas (AGENTRUN_SANDBOX_WORKSPACE_QUOTA=loop) need the engine on "
        "this worker's host, seeing its AGENTRUN_SANDBOX_WORKSPACE_DIR "
        f"({workspaces}) at the same path (a worker in a container: mount it "
        "and /dev at the same paths); set AGENTRUN_SANDBOX_WORKSPACE_QUOTA=off for an "
        "engine on another host or in a VM"
    )


@contextlib.contextmanager
def _refusals(containers: Containers) -> Iterator[None]:
    """The engine's refusals as the placement problem they are, and a probe object
    that vanished as a race; the image's absence and an unreachable engine are left
    to `docker_errors` (they are no placement problem)."""
    try:
        yield
    except docker.errors.ImageNotFound:
        raise
    except docker.errors.NotFound as exc:
        raise _Raced from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:  # a janitor is removing it: a race too
            raise _Raced from exc
        explanation = " ".join(str(exc.explanation or exc).split())[:300]
        raise SandboxPolicyError(
            f"the Docker engine cannot mount this worker's probe workspace ({explanation}): "
            + _hint(containers)
        ) from exc
