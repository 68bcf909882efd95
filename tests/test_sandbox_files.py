"""File operations go through the executor and never leave the workspace."""

from __future__ import annotations

import errno
import os

import pytest

from sandbox._calls import refusal
from sandbox._channel import ExecutorError
from sandbox.base import (
    RunRef,
    SandboxCallNotFound,
    SandboxError,
    SandboxPathError,
    SandboxWorkspaceFull,
)
from sandbox.docker_sandbox import DockerSandbox
from tests.sandbox_fixtures import POLICY, executor_module, sh

pytestmark = pytest.mark.docker


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../x", "a/../../x", "..", "a/../../../etc/shadow"]
)
def test_paths_escaping_the_workspace_are_rejected(
    docker_sandbox: DockerSandbox, run_ref: RunRef, path: str
) -> None:
    with pytest.raises(SandboxPathError):
        docker_sandbox.read_file(run_ref, path, policy=POLICY, max_bytes=100)
    with pytest.raises(SandboxPathError):
        docker_sandbox.write_file(run_ref, path, b"x", policy=POLICY)
    with pytest.raises(SandboxPathError):
        docker_sandbox.list_files(run_ref, path, policy=POLICY)


def test_symlinks_pointing_outside_are_rejected(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    sh(docker_sandbox, run_ref, "ln -s /etc/passwd passwd; ln -s / root; mkdir d; ln -s ../.. d/up")
    for path in ("passwd", "root/etc/hostname", "d/up/etc/passwd"):
        with pytest.raises(SandboxPathError, match="outside"):
            docker_sandbox.read_file(run_ref, path, policy=POLICY, max_bytes=100)
    with pytest.raises(SandboxPathError):
        docker_sandbox.write_file(run_ref, "root/tmp/evil", b"x", policy=POLICY)
    with pytest.raises(SandboxPathError):
        docker_sandbox.list_files(run_ref, "root", policy=POLICY)
    assert not SandboxPathError.retryable


def test_large_binary_file_round_trips_byte_exact(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    data = os.urandom(1_500_000)
    docker_sandbox.write_file(run_ref, "deep/dir/blob.bin", data, policy=POLICY)
    assert (
        docker_sandbox.read_file(run_ref, "deep/dir/blob.bin", policy=POLICY, max_bytes=2 << 20)
        == data
    )
    assert (
        docker_sandbox.read_file(run_ref, "deep/dir/blob.bin", policy=POLICY, max_bytes=10)
        == data[:10]
    )
    assert sh(docker_sandbox, run_ref, "stat -c %s deep/dir/blob.bin").stdout == b"1500000\n"


def test_non_utf8_file_names_are_listed_and_readable(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    sh(docker_sandbox, run_ref, "printf 'latin' > \"$(printf 'caf\\351')\"")
    [entry] = docker_sandbox.list_files(run_ref, "", policy=POLICY)
    assert os.fsencode(entry.path) == b"caf\xe9"
    assert docker_sandbox.read_file(run_ref, entry.path, policy=POLICY, max_bytes=100) == b"latin"
    docker_sandbox.write_file(run_ref, entry.path + ".copy", b"again", policy=POLICY)
    assert sh(docker_sandbox, run_ref, "cat caf*.copy").stdout == b"again"


def test_list_files_hides_call_records_and_caps_entries(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    sh(docker_sandbox, run_ref, "mkdir sub; for i in 1 2 3; do echo $i > sub/f$i; done")
    top = docker_sandbox.list_files(run_ref, "", policy=POLICY)
    assert [(e.path, e.is_dir) for e in top] == [("sub", True)]
    assert len(docker_sandbox.list_files(run_ref, "sub", policy=POLICY, max_entries=2)) == 2
    with pytest.raises(SandboxPathError):
        docker_sandbox.read_file(run_ref, ".agentrun/calls", policy=POLICY, max_bytes=10)


def test_collect_returns_regular_files_and_skips_hidden_dirs(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    sh(
        docker_sandbox,
        run_ref,
        "mkdir -p out .git; echo a > out/a.txt; echo b > b.txt; echo h > .git/HEAD;"
        " ln -s /etc/passwd link",
    )
    files = {f.path: f.data for f in docker_sandbox.collect(run_ref, [])}
    assert files == {"b.txt": b"b\n", "out/a.txt": b"a\n"}
    only = docker_sandbox.collect(run_ref, ["out"])
    assert [f.path for f in only] == ["out/a.txt"]


def test_collect_skips_a_file_nobody_may_read_and_keeps_the_others(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    # A command can make a file unreadable; the run still gets its other artifacts
    # (an error here would cost it all of them, its transcript too).
    sh(docker_sandbox, run_ref, "mkdir -p out; echo a > out/a; echo b > out/b; chmod 000 out/b")
    files = {f.path: f.data for f in docker_sandbox.collect(run_ref, [])}
    assert files == {"out/a": b"a\n"}


def test_full_call_output_is_readable_beyond_max_output_bytes(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    out = docker_sandbox.exec(
        run_ref, "s5-c0", "seq 1 20000", policy=POLICY, timeout_s=10, max_output_bytes=100
    )
    assert len(out.stdout) == 100 and out.stdout_total > 100_000
    full = docker_sandbox.read_call_output(run_ref, "s5-c0", "stdout", 10 << 20)
    assert full == b"".join(b"%d\n" % i for i in range(1, 20001))
    assert docker_sandbox.read_call_output(run_ref, "s5-c0", "stdout", 5) == b"1\n2\n3"


def test_full_output_is_readable_when_the_other_stream_stayed_empty(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    out = docker_sandbox.exec(
        run_ref,
        "s7-c0",
        "head -c 20000 /dev/zero | tr '\\0' a",
        policy=POLICY,
        timeout_s=10,
        max_output_bytes=1000,
    )
    assert (out.exit_code, out.limit, out.stdout_total, out.stderr_total) == (0, None, 20000, 0)
    assert out.stdout == b"a" * 1000
    assert docker_sandbox.read_call_output(run_ref, "s7-c0", "stdout", 1 << 20) == b"a" * 20000
    assert docker_sandbox.read_call_output(run_ref, "s7-c0", "stderr", 1 << 20) == b""


def test_a_file_tool_on_an_unreadable_file_is_a_path_error(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    sh(docker_sandbox, run_ref, "echo secret > locked; chmod 000 locked")
    with pytest.raises(SandboxPathError, match="ermission"):
        docker_sandbox.read_file(run_ref, "locked", policy=POLICY, max_bytes=100)


def test_the_executors_own_failures_are_never_path_errors(
    docker_sandbox: DockerSandbox, run_ref: RunRef
) -> None:
    # A record the run broke itself (its stdout file replaced by a directory): reading
    # it fails inside the executor, which is not a problem with a path the model gave.
    docker_sandbox.exec(
        run_ref, "s8-c0", "seq 1 1000", policy=POLICY, timeout_s=10, max_output_bytes=10
    )
    sh(docker_sandbox, run_ref, "cd .agentrun/calls/s8-c0.* && rm out && mkdir out")
    with pytest.raises(SandboxError) as broken:
        docker_sandbox.read_call_output(run_ref, "s8-c0", "stdout", 100)
    assert not isinstance(broken.value, SandboxPathError)
    with pytest.raises(SandboxError) as unknown:
        docker_sandbox.read_call_output(run_ref, "never-ran", "stdout", 100)
    assert not isinstance(unknown.value, SandboxPathError)


def test_only_a_file_operations_path_problems_are_path_errors() -> None:
    executor = executor_module()
    assert executor.error_kind("read", PermissionError(errno.EACCES, "denied")) == "path"
    assert executor.error_kind("commit", IsADirectoryError(errno.EISDIR, "dir")) == "path"
    assert executor.error_kind("write", OSError(errno.ENOSPC, "full")) == "disk"
    # The same errors met by the executor's own steps are its failures, not the model's.
    assert executor.error_kind("output", FileNotFoundError(errno.ENOENT, "gone")) == "os"
    assert executor.error_kind("exec", PermissionError(errno.EACCES, "denied")) == "os"
    assert refusal(ExecutorError("os", "FileNotFoundError")) is None  # retried, then unavailable
    assert isinstance(refusal(ExecutorError("path", "no such file")), SandboxPathError)
    assert isinstance(refusal(ExecutorError("disk", "full")), SandboxWorkspaceFull)
    assert isinstance(refusal(ExecutorError("call", "no record")), SandboxCallNotFound)
