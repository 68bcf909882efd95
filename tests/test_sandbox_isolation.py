"""The sandbox's isolation, observed from inside the container (real Docker).

Network isolation is judged from inside only (interfaces and routes); no test sends
a packet anywhere, not even to prove it cannot.
"""

from __future__ import annotations

import os

import docker
import pytest

from agentrun.contracts import SandboxPolicy
from sandbox import _names
from sandbox.base import RunRef, SandboxPolicyError, SandboxUnavailable
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from tests.sandbox_fixtures import new_run, sh

pytestmark = pytest.mark.docker


def test_container_has_only_loopback_and_no_routes(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    out = sh(docker_sandbox, run_ref, "cat /proc/net/dev; echo ---; cat /proc/net/route")
    dev, routes = out.stdout.decode().split("---\n")
    interfaces = [line.split(":")[0].strip() for line in dev.splitlines()[2:]]
    assert interfaces == ["lo"]
    assert routes.strip().splitlines()[1:] == []  # only the header line


def test_worker_environment_is_not_visible_inside(
    docker_sandbox: DockerSandbox, run_ref: RunRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRUN_TEST_CANARY", "sekrit-canary-value")
    out = sh(docker_sandbox, run_ref, "env; cat /proc/1/environ | tr '\\0' '\\n'")
    assert out.exit_code == 0
    assert b"sekrit-canary-value" not in out.stdout
    names = {line.split(b"=", 1)[0] for line in out.stdout.splitlines() if b"=" in line}
    assert names <= {
        b"PATH",
        b"HOME",
        b"LANG",
        b"TERM",
        b"USER",
        b"LOGNAME",
        b"PWD",
        b"HOSTNAME",
        b"SHLVL",
        b"_",
    }


def test_root_filesystem_is_read_only_and_etc_is_not_writable(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    out = sh(docker_sandbox, run_ref, "echo x > /etc/evil; echo $?; touch /usr/evil; echo $?")
    codes = out.stdout.split()
    assert codes == [b"1", b"1"] or all(c != b"0" for c in codes)
    assert b"Read-only file system" in out.stderr
    ok = sh(docker_sandbox, run_ref, "echo fine > inside.txt && cat inside.txt")
    assert ok.stdout == b"fine\n"


def test_commands_run_as_uid_10001_with_no_capabilities(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    out = sh(
        docker_sandbox, run_ref, "grep -E '^(Uid|Gid|CapEff|CapPrm|NoNewPrivs)' /proc/self/status"
    )
    fields = {
        k: v.split() for k, v in (line.split(":", 1) for line in out.stdout.decode().splitlines())
    }
    assert fields["Uid"] == ["10001"] * 4
    assert fields["Gid"] == ["10001"] * 4
    assert fields["CapEff"] == ["0000000000000000"]
    assert fields["CapPrm"] == ["0000000000000000"]
    assert fields["NoNewPrivs"] == ["1"]


def test_no_docker_socket_and_no_host_mounts_inside(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    out = sh(
        docker_sandbox,
        run_ref,
        "ls -la /var/run/docker.sock /run/docker.sock 2>&1; cat /proc/self/mountinfo",
    )
    assert b"docker.sock" in out.stdout and b"No such file" in out.stdout
    mounts = [line.split()[4] for line in out.stdout.decode().splitlines() if " - " in line]
    assert "/var/run/docker.sock" not in mounts
    # Only the workspace volume and Docker's own files; no host directory.
    writable_data = [
        m for m in mounts if m.startswith(("/workspace", "/home", "/tmp", "/mnt", "/host"))
    ]
    assert sorted(writable_data) == ["/home/agent", "/tmp", "/workspace"]


def test_container_is_created_hardened(
    docker_sandbox: DockerSandbox, run_ref: RunRef, sandbox_config: SandboxConfig
) -> None:
    sh(docker_sandbox, run_ref, "true")
    name = _names.container_name(sandbox_config.namespace, run_ref)
    host = docker.from_env().containers.get(name).attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Init"] is True
    assert host["Memory"] == host["MemorySwap"] == 256 << 20
    assert host["PidsLimit"] == 128
    assert not host.get("Binds")
    assert host["LogConfig"]["Type"] == "none"


def test_run_cannot_see_another_runs_workspace(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    other = new_run()
    try:
        sh(docker_sandbox, other, "echo other-run-secret > secret.txt")
        out = sh(
            docker_sandbox,
            run_ref,
            "ls -a /workspace; grep -rs other-run-secret / --exclude-dir=proc --exclude-dir=sys;"
            " echo done",
        )
        assert b"secret.txt" not in out.stdout
        assert b"other-run-secret" not in out.stdout
        assert out.stdout.endswith(b"done\n")
    finally:
        docker_sandbox.destroy(other, keep_workspace=False)


def test_network_is_refused_unless_the_operator_allows_it(docker_sandbox: DockerSandbox) -> None:
    with pytest.raises(SandboxPolicyError, match="ALLOW_NETWORK"):
        docker_sandbox.resources(SandboxPolicy(network=True))


def test_limits_over_the_operator_maximum_are_refused(
    docker_sandbox: DockerSandbox, sandbox_config: SandboxConfig
) -> None:
    with pytest.raises(SandboxPolicyError, match="memory_mb"):
        docker_sandbox.resources(SandboxPolicy(memory_mb=sandbox_config.max_memory_mb + 1))
    with pytest.raises(SandboxPolicyError, match="pids"):
        docker_sandbox.resources(SandboxPolicy(pids=sandbox_config.max_pids + 1))
    with pytest.raises(SandboxPolicyError, match="workspace_mb"):
        docker_sandbox.resources(SandboxPolicy(workspace_mb=sandbox_config.max_workspace_mb + 1))


def test_image_outside_the_allow_list_is_refused(docker_sandbox: DockerSandbox) -> None:
    with pytest.raises(SandboxPolicyError, match="not allowed"):
        docker_sandbox.exec(
            RunRef("t", "r"),
            "s0-c0",
            "true",
            policy=SandboxPolicy(image="alpine:latest"),
            timeout_s=5,
            max_output_bytes=10,
        )
    assert not SandboxPolicyError.retryable


def test_unreachable_docker_engine_is_retryable_unavailable(sandbox_config: SandboxConfig) -> None:
    client = docker.DockerClient(
        base_url="unix:///nonexistent/agentrun-docker.sock", version="1.41"
    )
    sandbox = DockerSandbox(sandbox_config, client)
    with pytest.raises(SandboxUnavailable) as info:
        sandbox.exec(
            RunRef("t", "r"),
            "s0-c0",
            "true",
            policy=SandboxPolicy(),
            timeout_s=5,
            max_output_bytes=10,
        )
    assert info.value.retryable


def test_host_pid_namespace_is_not_shared(docker_sandbox: DockerSandbox, run_ref: RunRef) -> None:
    out = sh(docker_sandbox, run_ref, "ls /proc | grep -c '^[0-9]'")
    assert int(out.stdout) < 20  # only the sandbox's own few processes
    assert str(os.getpid()).encode() not in sh(docker_sandbox, run_ref, "ps -eo pid").stdout.split()
