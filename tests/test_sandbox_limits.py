"""Bad input is contained and named (`ExecOutcome.limit`), never raised (real Docker).

After each bad command the same sandbox answers a normal call, which proves the
executor and the worker survived it.
"""

from __future__ import annotations

import importlib.util

import pytest

from agentrun.contracts import LimitKind, SandboxPolicy
from sandbox._calls import parse_limit
from sandbox.base import RunRef, SandboxPolicyError
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from tests.sandbox_fixtures import ROOT, sh

pytestmark = pytest.mark.docker


def still_works(sandbox: DockerSandbox, run: RunRef) -> None:
    out = sh(sandbox, run, "echo alive")
    assert (out.exit_code, out.stdout, out.limit) == (0, b"alive\n", None)


def test_hanging_command_times_out_and_its_whole_process_tree_is_killed(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    out = sh(docker_sandbox, run_ref, "sleep 300 & (sleep 301 &) ; sleep 302", timeout_s=1)
    assert out.limit is LimitKind.TIMEOUT
    assert out.exit_code is None
    assert 900 <= out.duration_ms < 5000
    procs = sh(docker_sandbox, run_ref, "ps -eo args").stdout
    assert b"sleep 30" not in procs
    still_works(docker_sandbox, run_ref)


def test_fork_bomb_is_stopped_by_the_pids_limit(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    out = sh(docker_sandbox, run_ref, "f() { f | f & }; f; sleep 3", timeout_s=4)
    assert out.limit is LimitKind.PIDS
    procs = sh(docker_sandbox, run_ref, "ps -eo comm | wc -l")
    assert int(procs.stdout) < 10
    still_works(docker_sandbox, run_ref)


def test_memory_bomb_is_killed_by_the_memory_limit(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    bomb = "python3 -c \"a = []\nwhile True: a.append(b'x' * (8 << 20))\""
    out = sh(docker_sandbox, run_ref, bomb, timeout_s=30)
    assert out.limit is LimitKind.MEMORY
    assert out.exit_code == 137  # SIGKILL from the OOM killer, reported shell-style
    still_works(docker_sandbox, run_ref)


def test_single_file_disk_filler_stops_at_the_workspace_limit(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    policy = SandboxPolicy(workspace_mb=16)
    out = sh(
        docker_sandbox,
        run_ref,
        "head -c 200M /dev/zero > big; ls -l big",
        policy=policy,
        timeout_s=30,
    )
    assert out.limit is LimitKind.DISK
    size = int(sh(docker_sandbox, run_ref, "stat -c %s big").stdout)
    assert size <= 16 << 20
    still_works(docker_sandbox, run_ref)


def test_many_files_disk_filler_is_killed_by_the_workspace_watchdog(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    policy = SandboxPolicy(workspace_mb=16)
    filler = "i=0; while true; do head -c 1M /dev/zero > f$i; i=$((i+1)); done"
    out = sh(docker_sandbox, run_ref, filler, policy=policy, timeout_s=60)
    assert out.limit is LimitKind.DISK
    assert out.duration_ms < 30_000
    # Over the limit, the model can still clean up (a shrinking call is not killed).
    cleanup = sh(docker_sandbox, run_ref, "rm -f f*; echo cleaned", policy=policy)
    assert (cleanup.stdout, cleanup.limit) == (b"cleaned\n", None)


def test_gigabytes_of_output_are_capped_without_buffering_them(
    docker_sandbox: DockerSandbox, run_ref: RunRef, sandbox_config: SandboxConfig
) -> None:
    cap = sandbox_config.output_store_bytes
    out = sh(
        docker_sandbox,
        run_ref,
        "yes 0123456789abcdef",
        call_id="s1-c0",
        max_output_bytes=1000,
        timeout_s=60,
    )
    assert out.limit is LimitKind.OUTPUT
    assert len(out.stdout) == 1000
    assert out.stdout_total > cap
    full = docker_sandbox.read_call_output(run_ref, "s1-c0", "stdout", 64 << 20)
    assert len(full) == cap  # what was kept on disk, no more
    rss = sh(docker_sandbox, run_ref, "grep VmHWM /proc/$(pgrep -f executor.py | head -1)/status")
    assert int(rss.stdout.split()[1]) < 100_000  # kB: the executor never held the output
    still_works(docker_sandbox, run_ref)


def test_binary_output_is_returned_byte_exact(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    out = sh(docker_sandbox, run_ref, "printf '\\000\\377\\376bin\\200'; printf '\\351' >&2")
    assert out.stdout == b"\x00\xff\xfebin\x80"
    assert out.stderr == b"\xe9"
    assert (out.stdout_total, out.stderr_total) == (7, 1)


def test_exit_code_and_stderr_are_reported_not_raised(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    out = sh(docker_sandbox, run_ref, "echo oops >&2; exit 3")
    assert (out.exit_code, out.stderr, out.limit) == (3, b"oops\n", None)


def test_every_limit_the_executor_names_parses_into_a_limit_kind() -> None:
    # The executor runs inside the container and imports nothing of agentrun, so it
    # spells the limit names out; this keeps them and `LimitKind` in step.
    spec = importlib.util.spec_from_file_location(
        "agentrun_executor", ROOT / "sandbox" / "image" / "executor.py"
    )
    assert spec is not None and spec.loader is not None
    executor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(executor)
    assert sorted(executor.LIMIT_NAMES) == sorted(kind.value for kind in LimitKind)
    for name in executor.LIMIT_NAMES:
        assert parse_limit(name) is LimitKind(name)
    assert parse_limit(None) is None
    with pytest.raises(SandboxPolicyError, match="rebuild"):
        parse_limit("quota")
