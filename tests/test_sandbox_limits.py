"""Bad input is contained and named (`ExecOutcome.limit`), never raised (real Docker).

After each bad command the same sandbox answers a normal call, which proves the
executor and the worker survived it.
"""

from __future__ import annotations

import time

import pytest

from agentrun.contracts import LimitKind, SandboxPolicy
from sandbox._calls import parse_limit
from sandbox.base import RunRef, SandboxPolicyError, SandboxWorkspaceFull
from sandbox.config import SandboxConfig
from sandbox.docker_sandbox import DockerSandbox
from tests.sandbox_fixtures import executor_module, sh

pytestmark = pytest.mark.docker

EXECUTOR_PID = "pgrep -f '^python3 .*executor.py'"
"""Shell: the executor's pid (pid 1 is docker-init, whose arguments name it too)."""


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
    out = sh(docker_sandbox, run_ref, "f() { f | f & }; f; sleep 3", call_id="s2-c0", timeout_s=4)
    assert out.limit is LimitKind.PIDS
    # Its output (stderr only: "Cannot fork") is recorded whole, stdout stayed empty.
    err = docker_sandbox.read_call_output(run_ref, "s2-c0", "stderr", 64 << 20)
    assert len(err) == out.stderr_total > 0
    assert docker_sandbox.read_call_output(run_ref, "s2-c0", "stdout", 64 << 20) == b""
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


def test_a_command_and_its_children_are_the_oom_killers_first_choice_from_the_start(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    # Set on the command after it started, its first children could fork before it.
    scores = {
        sh(docker_sandbox, run_ref, "cat /proc/$$/oom_score_adj /proc/self/oom_score_adj").stdout
        for _ in range(20)
    }
    assert scores == {b"1000\n1000\n"}
    executor = sh(docker_sandbox, run_ref, f"cat /proc/$({EXECUTOR_PID})/oom_score_adj")
    assert executor.stdout == b"0\n"


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


QUOTA_MB = 50


def disk_usage(sandbox: DockerSandbox, run: RunRef) -> tuple[int, int]:
    """Bytes the workspace holds on disk (allocated blocks, like `du`) and its block size."""
    out = sh(sandbox, run, "du -sB1 /workspace | cut -f1; stat -f -c %S /workspace")
    used, block = out.stdout.split()
    return int(used), int(block)


@pytest.mark.parametrize(
    "writer",
    [
        pytest.param("for i in $(seq 12); do head -c 8M /dev/zero > f$i; done", id="12x8MB"),
        pytest.param("head -c 200M /dev/zero > big", id="one-big-file"),
        pytest.param(
            "for i in 1 2 3 4; do head -c 30M /dev/zero > p$i & done; wait", id="parallel"
        ),
        pytest.param("(head -c 100M /dev/zero > bg &); sleep 2", id="background"),
    ],
)
def test_writes_past_the_quota_stop_within_one_block_and_report_disk(
    docker_sandbox: DockerSandbox, run_ref: RunRef, writer: str
) -> None:
    policy = SandboxPolicy(workspace_mb=QUOTA_MB)
    out = sh(docker_sandbox, run_ref, writer, policy=policy, timeout_s=60)
    assert out.limit is LimitKind.DISK
    used, block = disk_usage(docker_sandbox, run_ref)
    assert used <= (QUOTA_MB << 20) + block
    # Over the limit, the model can still clean up and write again.
    cleanup = sh(docker_sandbox, run_ref, "rm -f f* big p* bg; echo ok > ok.txt && cat ok.txt")
    assert (cleanup.stdout, cleanup.limit) == (b"ok\n", None)


def test_a_full_workspace_blames_only_the_calls_that_write_to_it(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    policy = SandboxPolicy(workspace_mb=16)
    assert sh(docker_sandbox, run_ref, "head -c 100M /dev/zero > big", policy=policy).limit is (
        LimitKind.DISK
    )
    unrelated = sh(docker_sandbox, run_ref, "echo unrelated; ls nothing-here", policy=policy)
    assert (unrelated.stdout, unrelated.exit_code, unrelated.limit) == (b"unrelated\n", 2, None)
    writer = sh(docker_sandbox, run_ref, "head -c 1M /dev/zero > more", policy=policy)
    assert writer.limit is LimitKind.DISK  # its write failed with ENOSPC
    assert sh(docker_sandbox, run_ref, "rm big more; echo x > x", policy=policy).limit is None


def test_a_file_written_past_the_quota_is_refused_as_a_full_workspace(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    policy = SandboxPolicy(workspace_mb=16)
    with pytest.raises(SandboxWorkspaceFull, match="workspace limit"):
        docker_sandbox.write_file(run_ref, "big.bin", b"x" * (20 << 20), policy=policy)
    docker_sandbox.write_file(run_ref, "small.txt", b"fits", policy=policy)
    assert sh(docker_sandbox, run_ref, "ls; cat small.txt", policy=policy).stdout == (
        b"small.txt\nfits"
    )


def ps_args(sandbox: DockerSandbox, run: RunRef) -> bytes:
    return sh(sandbox, run, "ps -eo args").stdout


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(
            "nohup sh -c 'while :; do echo x >> bg.log; sleep 0.05; done # bg-marker'"
            " >/dev/null 2>&1 &",
            id="nohup-writer",
        ),
        pytest.param("setsid sh -c 'sleep 1001 & exit' </dev/null >/dev/null 2>&1 &", id="setsid"),
        pytest.param("sleep 1002 &", id="sleep"),
        pytest.param(
            "python3 -c 'import os, time\n"
            "if os.fork(): os._exit(0)\n"
            "os.setsid()\n"
            "if os.fork(): os._exit(0)\n"
            "os.closerange(0, 3); time.sleep(1003)'",
            id="python-daemon",
        ),
    ],
)
def test_processes_a_call_started_end_with_it(
    docker_sandbox: DockerSandbox, run_ref: RunRef, start: str
) -> None:
    out = sh(docker_sandbox, run_ref, f"{start}\necho started")
    assert (out.stdout, out.limit) == (b"started\n", None)
    left = ps_args(docker_sandbox, run_ref)
    for marker in (b"bg-marker", b"sleep 100", b"time.sleep"):
        assert marker not in left, left.decode()


def test_a_background_writer_cannot_fill_the_workspace_after_its_call(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    policy = SandboxPolicy(workspace_mb=16)
    writer = "i=0; while :; do head -c 1M /dev/zero > bg$i; i=$((i+1)); sleep 0.05; done"
    start = sh(docker_sandbox, run_ref, f"nohup sh -c '{writer}' >/dev/null 2>&1 & echo started")
    assert start.limit is None
    count = "ls | grep -c '^bg' || true"
    before = sh(docker_sandbox, run_ref, count, policy=policy)
    time.sleep(1)  # a surviving writer would add about 20 files meanwhile
    after = sh(docker_sandbox, run_ref, count, policy=policy)
    assert (before.limit, after.limit) == (None, None)
    assert before.stdout == after.stdout


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
    assert docker_sandbox.read_call_output(run_ref, "s1-c0", "stderr", 64 << 20) == b""
    rss = sh(docker_sandbox, run_ref, f"grep VmHWM /proc/$({EXECUTOR_PID})/status")
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
    executor = executor_module()
    assert sorted(executor.LIMIT_NAMES) == sorted(kind.value for kind in LimitKind)
    for name in executor.LIMIT_NAMES:
        assert parse_limit(name) is LimitKind(name)
    assert parse_limit(None) is None
    with pytest.raises(SandboxPolicyError, match="rebuild"):
        parse_limit("quota")
