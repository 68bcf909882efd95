"""Which Docker engine the sandbox uses, and what that engine's placement allows.

The engine is Docker's own setting, read as every Docker client reads it:
`DOCKER_HOST` (`unix:///var/run/docker.sock` when unset; `tcp://host:2376` for an
engine on another host), with `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` (a
directory holding `ca.pem`, `cert.pem`, `key.pem`) for mutual TLS. docker-py's
`kwargs_from_env` applies all three, so the sandbox needs no setting of its own, and
this module reads them exactly as docker-py and the docker CLI do: any non-empty
`DOCKER_TLS_VERIFY` (`0` too) verifies the engine, and `DOCKER_CERT_PATH` alone
turns TLS on without verifying it.

Design (why it looks like this):

* **Everything but workspace quotas works on a remote engine.** Containers,
  volumes, the executor channel (an attach stream over the Docker API), files in and
  out (through that channel), the egress proxy (relayed over that same channel),
  limits, the pool, the janitor and the idle stop all go through the engine's API.
  Workspace quotas do not: their ext4 images are files the worker creates and
  attaches to loop devices on *its* host, which the engine then mounts by path, so
  the engine must run on the worker's host and see the worker's workspace directory
  at the same path.
* **Where the engine runs is decided twice, cheaply first.** Before connecting,
  `placement_problem` refuses what `DOCKER_HOST` alone proves wrong: a `tcp://`
  address that is not loopback is another host, so no quotas there, and no plain
  TCP (the engine's API is root on its host). That cannot catch an engine that only
  looks local: a loopback port or a unix socket forwarded to another host, an engine
  in a VM (Docker Desktop), a worker in a container whose workspace directory is not
  mounted at the same path on the host. So with quotas on, the worker then *asks the
  engine* to mount a probe workspace and read a token back
  (`sandbox/_quota_probe.py`): the only answer that cannot be fooled. Comparing the
  engine's `info` with this host (kernel, memory, host name) was the alternative: a
  difference proves another host, but equality proves nothing (two identical VMs; a
  container on the right kernel without the right paths).
* **`ssh://` is refused**, with what to use instead: docker-py needs paramiko for
  it, and the executor channel (a raw attach socket) has not been proven over an
  SSH channel. A socket forwarded with `ssh -L` is a unix socket, which works.
* **The engine's TLS is the engine's only** (`engine_client`): docker-py's client is
  a `requests` session, and `requests` lets `REQUESTS_CA_BUNDLE` and
  `CURL_CA_BUNDLE` replace the session's CA (and `HTTPS_PROXY` route its calls), so
  on a host that sets them the engine's `ca.pem` was ignored and its certificate
  refused. The client ignores the environment's HTTP settings: the engine's API
  goes straight to the engine, verified against `DOCKER_CERT_PATH/ca.pem`.
* **A missing certificate file is named before connecting**: docker-py's own error
  names neither the variable nor the file; and a TLS refusal is said in words of the
  files (`tls_refusal`), read from the `ssl` error's type and reason code under
  docker-py's and requests' wrappers, not from their message text.

This module must not: read settings other than Docker's own environment variables,
read a certificate's contents (only whether the file is there), or connect anywhere
but the engine.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker

DEFAULT_HOST = "unix:///var/run/docker.sock"
TCP_SCHEMES = ("tcp", "http", "https")
"""The schemes docker-py reaches over TCP (`tcp` is `http`, or `https` with TLS)."""
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")


@dataclass(frozen=True)
class Engine:
    """The engine `DOCKER_HOST` names, as far as can be told without connecting."""

    host: str
    verify: bool = False
    """`DOCKER_TLS_VERIFY` is set and not empty: the engine's certificate is checked."""
    cert_path: str = ""
    """`DOCKER_CERT_PATH`; empty when unset (docker-py then uses `~/.docker`)."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Engine:
        return cls(
            host=environ.get("DOCKER_HOST") or DEFAULT_HOST,
            verify=environ.get("DOCKER_TLS_VERIFY") not in (None, ""),
            cert_path=environ.get("DOCKER_CERT_PATH") or "",
        )

    @property
    def scheme(self) -> str:
        return urlsplit(self.host).scheme

    @property
    def tls(self) -> bool:
        """Whether the client speaks TLS to the engine (only over TCP; docker-py
        ignores the TLS variables for a unix socket)."""
        return self.scheme in TCP_SCHEMES and (self.verify or bool(self.cert_path))

    @property
    def remote(self) -> bool:
        """Whether `DOCKER_HOST` names another host (a loopback address does not,
        though it may be forwarded to one: see `sandbox/_quota_probe.py`)."""
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

    def certificates(self) -> Path:
        """The directory docker-py reads `ca.pem`, `cert.pem` and `key.pem` from."""
        return Path(self.cert_path or os.path.join(os.path.expanduser("~"), ".docker"))

    def describe(self) -> str:
        if not self.tls:
            return self.host
        return f"{self.host} (TLS{'' if self.verify else ', engine not verified'})"


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
    """Why this worker cannot use `engine` as configured, or None (without connecting).

    Each answer is one sentence naming the setting to change.
    """
    if engine.scheme == "ssh":
        return (
            f"DOCKER_HOST={engine.host}: ssh:// engines are not supported. Forward the "
            "engine's socket (ssh -L /run/agentrun-docker.sock:/var/run/docker.sock host) "
            "and set DOCKER_HOST=unix:///run/agentrun-docker.sock, or use tcp:// with "
            "DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH"
        )
    if workspace_quota == "loop" and engine.remote:
        return (
            f"workspace quotas (AGENTRUN_SANDBOX_WORKSPACE_QUOTA=loop) need the Docker "
            f"engine on this host, and DOCKER_HOST={engine.host} is another host: set "
            "AGENTRUN_SANDBOX_WORKSPACE_QUOTA=off, or run the worker on the engine's host"
        )
    if engine.scheme in TCP_SCHEMES and engine.remote and not engine.verify:
        return (
            f"DOCKER_HOST={engine.host} is a remote engine without verified TLS: anyone who "
            "reaches that port (or sits between) is root on its host. Set "
            "DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem)"
        )
    if engine.tls:
        where = engine.certificates()
        missing = [name for name in TLS_FILES if not (where / name).is_file()]
        if missing:
            return (
                f"TLS to the Docker engine at {engine.host} needs {', '.join(TLS_FILES)} in "
                f"DOCKER_CERT_PATH={where}, which has no {', '.join(missing)}"
            )
    return None


CLIENT_CERT_REFUSED = frozenset(
    {"SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA", "TLSV13_ALERT_CERTIFICATE_REQUIRED"}
)
"""The engine's TLS alerts that mean it did not accept the worker's client certificate."""


def tls_refusal(exc: BaseException) -> str | None:
    """What a failed connection to the engine means when TLS refused it, or None."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ssl.SSLCertVerificationError):
            return (
                "this worker does not trust the engine's certificate: DOCKER_CERT_PATH/ca.pem "
                "must be the CA that signed it, for the address in DOCKER_HOST"
            )
        if isinstance(error, ssl.SSLError) and error.reason in CLIENT_CERT_REFUSED:
            return (
                "the engine refused this worker's client certificate: DOCKER_CERT_PATH/cert.pem "
                "must be signed by the CA the engine trusts (its --tlscacert)"
            )
        linked = (error.__cause__, error.__context__, getattr(error, "reason", None), *error.args)
        stack += [e for e in linked if isinstance(e, BaseException)]
    return None
