"""Which Docker engine the sandbox uses, and what that engine's placement allows.

The engine is Docker's own setting, read as every Docker client reads it:
`DOCKER_HOST` (`unix:///var/run/docker.sock` when unset; `tcp://host:2376` for an
engine on another host), with `DOCKER_TLS_VERIFY=1` and `DOCKER_CERT_PATH` (a
directory holding `ca.pem`, `cert.pem`, `key.pem`) for mutual TLS. docker-py's
`docker.from_env` applies all three, so the sandbox needs no setting of its own.

Design (why it looks like this):

* **Everything but workspace quotas works on a remote engine.** Containers,
  volumes, the executor channel (an attach stream over the Docker API), files in and
  out (archives over the API), the egress proxy (relayed over that same channel),
  limits, the pool, the janitor and the idle stop all go through the engine's API.
  Workspace quotas do not: their ext4 images are files the worker creates and
  attaches to loop devices on *its* host, which the engine then mounts by path, so
  the engine must run on the worker's host.
* **The engine's TLS is the engine's only** (`engine_client`): docker-py's client is
  a `requests` session, and `requests` lets `REQUESTS_CA_BUNDLE` and
  `CURL_CA_BUNDLE` replace the session's CA (and `HTTPS_PROXY` route its calls), so
  on a host that sets them the engine's `ca.pem` was ignored and its certificate
  refused. The client ignores the environment's HTTP settings: the engine's API
  goes straight to the engine, verified against `DOCKER_CERT_PATH/ca.pem`.
* **Remote is decided from `DOCKER_HOST` alone, before any connection**: a `tcp://`
  or `ssh://` address whose host is not loopback is another host. A worker in a
  container reaching its host's engine through the mounted socket (Compose, a
  DaemonSet) is local, as it should be. Deciding before connecting means a
  misconfigured worker is refused at start-up with the setting to change, not
  after its first run fails to mount a workspace.

This module must not: read settings other than Docker's own environment variables,
or connect anywhere but the engine.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import docker

DEFAULT_HOST = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Engine:
    """The engine `DOCKER_HOST` names, as far as can be told without connecting."""

    host: str
    tls: bool

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Engine:
        return cls(
            host=environ.get("DOCKER_HOST") or DEFAULT_HOST,
            tls=environ.get("DOCKER_TLS_VERIFY", "") not in ("", "0"),
        )

    @property
    def remote(self) -> bool:
        """Whether the engine runs on another host than this process."""
        parts = urlsplit(self.host)
        if parts.scheme in ("unix", "npipe", "fd", ""):
            return False
        hostname = parts.hostname or ""
        if hostname == "localhost":
            return False
        try:
            return not ipaddress.ip_address(hostname).is_loopback
        except ValueError:
            return True  # a name: another host, as far as anyone can tell here

    def describe(self) -> str:
        return f"{self.host}{' (TLS)' if self.tls else ''}"


class _EngineAPIClient(docker.APIClient):  # type: ignore[misc]  # docker-py has no types
    """docker-py's API client, deaf to the environment's HTTP settings: `requests`
    sessions read `trust_env` on every request, and docker-py's constructor already
    asks the engine its version, so the attribute is fixed before any request."""

    @property
    def trust_env(self) -> bool:
        return False

    @trust_env.setter
    def trust_env(self, value: bool) -> None:
        pass  # requests.Session.__init__ sets it; the engine's client keeps False


class _EngineClient(docker.DockerClient):  # type: ignore[misc]
    def __init__(self, **kwargs: Any) -> None:
        self.api = _EngineAPIClient(**kwargs)


def engine_client(timeout: int = 60) -> docker.DockerClient:
    """A client of the engine `DOCKER_HOST` names (connects: it asks the API version)."""
    return _EngineClient(
        timeout=timeout, version="auto", **docker.utils.kwargs_from_env(environment=os.environ)
    )


def placement_problem(engine: Engine, workspace_quota: str) -> str | None:
    """Why this worker cannot use `engine` as configured, or None."""
    if workspace_quota == "loop" and engine.remote:
        return (
            f"workspace quotas (AGENTRUN_SANDBOX_WORKSPACE_QUOTA=loop) need the Docker "
            f"engine on this host, and DOCKER_HOST={engine.host} is another host: set "
            "AGENTRUN_SANDBOX_WORKSPACE_QUOTA=off, or run the worker on the engine's host"
        )
    if urlsplit(engine.host).scheme == "tcp" and engine.remote and not engine.tls:
        return (
            f"DOCKER_HOST={engine.host} is a remote engine without TLS: anyone who reaches "
            "that port is root on its host. Set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH "
            "(ca.pem, cert.pem, key.pem)"
        )
    return None
