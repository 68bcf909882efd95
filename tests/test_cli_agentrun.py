"""The `agentrun` CLI against a real API server, real Temporal and a real worker.

The CLI is synchronous (httpx), so each invocation runs in a thread while the
server, worker and Temporal client keep running in the test's event loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import pwd
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from agentrun.contracts import ToolResultPayload, new_event
from cli import main as cli
from cli.event_format import format_event
from tests.api_fixtures import (
    NOOP_TURN,
    Stack,
    api_settings,
    api_stack,
    finish_turn,
    scripted,
    serve_api,
    tool_turn,
    unique,
    wait_until,
)
from tests.model_fixtures import free_port
from worker import build_worker

AGENTRUN = Path(sys.executable).parent / "agentrun"


@pytest.fixture(scope="module")
async def stack(
    client: Client, tmp_path_factory: pytest.TempPathFactory, sandbox_image: str
) -> AsyncIterator[Stack]:
    async with api_stack(client, tmp_path_factory.mktemp("cli-state")) as running:
        yield running


async def agentrun(stack: Stack, *argv: str, actor: str = "cli-user") -> tuple[int, str]:
    """Run the CLI in a thread; returns (exit code, stdout)."""
    out = io.StringIO()
    code = await asyncio.to_thread(cli.main, ["--api-url", stack.url, "--actor", actor, *argv], out)
    return code, out.getvalue()


def on_terminal(url: str, *argv: str, answer: bytes | None = None) -> tuple[int, str]:
    """`agentrun` as a process on a real terminal (a pty): its exit code and what it
    showed. `answer` is typed once the process asks `[y/N]`."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(AGENTRUN), "--api-url", url, "--actor", "tty-user", *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if answer is not None and b"[y/N]" in shown:
                os.write(master, answer)
                answer = None
        return proc.wait(timeout=30), shown.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def spec_file(tmp_path: Path, spec: dict[str, Any], name: str = "spec.json") -> str:
    path = tmp_path / name
    if name.endswith(".yaml"):
        import yaml  # type: ignore[import-untyped, unused-ignore]

        path.write_text(yaml.safe_dump(spec))
    else:
        path.write_text(json.dumps(spec))
    return str(path)


async def test_run_follow_prints_the_id_then_every_event_and_exits_0(
    stack: Stack, tmp_path: Path
) -> None:
    path = spec_file(tmp_path, scripted(NOOP_TURN, finish_turn("cli done")))
    code, out = await agentrun(stack, "run", path, "--goal", "from the cli", "--follow")
    assert code == 0, out
    lines = out.splitlines()
    run_id = lines[0]
    assert lines[1].startswith("#1") and "run.started" in lines[1] and "from the cli" in lines[1]
    assert "model.called" in out and "step 1" in out
    assert lines[-1].startswith("#") and "run.finished" in lines[-1]
    assert "completed (completed): cli done" in lines[-1]

    code, shown = await agentrun(stack, "show", run_id)
    assert code == 0
    assert "status:     completed (completed)" in shown
    assert "answer:     cli done" in shown and "by cli-user" in shown

    code, raw = await agentrun(stack, "show", run_id, "--json")
    assert code == 0 and json.loads(raw)["final_answer"] == "cli done"


async def test_follow_shows_token_deltas_live_and_keeps_escapes_off_the_terminal(
    stack: Stack, tmp_path: Path
) -> None:
    hostile = "streamed \x1b[2Jwords\x07 arrive"
    path = spec_file(tmp_path, scripted({"content": hostile, "delay_seconds": 0.5}, finish="text"))
    code, out = await agentrun(stack, "run", path, "--follow")
    assert code == 0, out
    lines = out.splitlines()
    live = next(i for i, line in enumerate(lines) if line.startswith("      ▸ "))
    called = next(i for i, line in enumerate(lines) if "model.called" in line)
    assert live < called
    assert (
        lines[live]
        == "      ▸ streamed \N{REPLACEMENT CHARACTER}[2Jwords\N{REPLACEMENT CHARACTER} arrive"
    )
    assert "\x1b" not in out and "\x07" not in out

    code, raw = await agentrun(stack, "logs", lines[0], "-f", "--json")
    assert code == 0
    messages = [json.loads(line) for line in raw.splitlines()]
    deltas = [m for m in messages if m["type"] == "model.delta"]
    assert "".join(d["text"] for d in deltas) == hostile  # JSON output is exact
    assert [d["n"] for d in deltas] == list(range(1, len(deltas) + 1))


async def test_run_from_yaml_with_labels_is_idempotent_and_listed(
    stack: Stack, tmp_path: Path
) -> None:
    path = spec_file(tmp_path, scripted(finish_turn()), name="spec.yaml")
    batch = unique("cli")
    argv = ["run", path, "--label", f"batch={batch}", "--idempotency-key", batch]
    code, first = await agentrun(stack, *argv)
    assert code == 0
    code, second = await agentrun(stack, *argv)
    assert code == 0 and first == second
    run_id = first.strip()

    async def listed() -> str | None:
        code, out = await agentrun(stack, "ls", "--label", f"batch={batch}")
        assert code == 0
        return out if run_id in out else None

    table = await wait_until(listed, timeout=20)
    assert table.splitlines()[0].split() == ["RUN", "STATUS", "STEPS", "CREATED", "GOAL"]
    assert len(table.splitlines()) == 2
    code, raw = await agentrun(stack, "ls", "--label", f"batch={batch}", "--json")
    assert [r["run_id"] for r in json.loads(raw)["runs"]] == [run_id]


async def test_logs_prints_events_and_follows_a_live_run(stack: Stack, tmp_path: Path) -> None:
    path = spec_file(tmp_path, scripted(dict(NOOP_TURN, delay_seconds=0.5), finish_turn()))
    code, out = await agentrun(stack, "run", path)
    run_id = out.strip()
    code, followed = await agentrun(stack, "logs", "-f", run_id)
    assert code == 0
    seqs = [int(line.split()[0][1:]) for line in followed.splitlines() if line.startswith("#")]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 5
    code, logged = await agentrun(stack, "logs", run_id, "--json")
    assert code == 0
    assert [json.loads(line)["seq"] for line in logged.splitlines()] == seqs
    code, tail = await agentrun(stack, "logs", run_id, "--after", str(seqs[-2]))
    assert code == 0 and len(tail.splitlines()) == 1 and "run.finished" in tail


async def test_pause_resume_cancel_and_a_refused_transition(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slow = dict(NOOP_TURN, delay_seconds=1.0)
    path = spec_file(tmp_path, scripted(*[slow] * 20, finish_turn()))
    code, out = await agentrun(stack, "run", path)
    run_id = out.strip()
    code, out = await agentrun(stack, "pause", run_id, "--reason", "coffee")
    assert code == 0 and out.strip() == f"{run_id}: paused (no new step starts until resumed)"
    code, out = await agentrun(stack, "message", run_id, "be brief")
    assert code == 0 and "delivered with the next model call" in out
    code, out = await agentrun(stack, "resume", run_id)
    assert code == 0 and out.strip() == f"{run_id}: running"
    code, out = await agentrun(stack, "cancel", run_id, "--abort")
    assert code == 0 and "cancelling: aborting the in-flight step" in out
    capsys.readouterr()

    async def cancelled() -> bool:
        _, shown = await agentrun(stack, "show", run_id)
        return "status:     cancelled" in shown

    await wait_until(cancelled, timeout=30)
    code, out = await agentrun(stack, "resume", run_id)
    assert code == 1 and out == ""
    err = capsys.readouterr().err
    assert "HTTP 409" in err and "run status: cancelled" in err


async def test_follow_exits_3_when_the_run_fails(stack: Stack, tmp_path: Path) -> None:
    # One noop turn and no more script: the scripted model fails the run.
    path = spec_file(tmp_path, scripted(NOOP_TURN))
    code, out = await agentrun(stack, "run", path, "-f")
    assert code == 3, out
    assert "run.finished" in out and "failed" in out.splitlines()[-1]


@pytest.mark.docker
async def test_deny_finds_the_pending_approval_by_itself(stack: Stack, tmp_path: Path) -> None:
    spec = scripted(
        tool_turn("list_files", path="."),
        finish_turn("denied and done"),
        approval={"mode": "tools", "tools": ["list_files"]},
    )
    code, out = await agentrun(stack, "run", spec_file(tmp_path, spec))
    run_id = out.strip()

    async def pending() -> bool:
        _, shown = await agentrun(stack, "show", run_id)
        return "approval:   ap-" in shown

    await wait_until(pending, timeout=60)
    code, out = await agentrun(
        stack, "deny", run_id, "--reason", "not today", "--yes", actor="dana"
    )
    assert code == 0, out
    assert out.splitlines()[0].startswith("deny list_files")
    assert "denied" in out.splitlines()[-1]
    code, followed = await agentrun(stack, "logs", "-f", run_id)
    assert code == 0
    assert "denied by dana" in followed and "denied and done" in followed
    assert f"approve: agentrun approve {run_id} ap-" in followed  # the real run, no <run>


@pytest.mark.docker
async def test_approve_asks_first_on_a_terminal_and_refuses_without_one(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The approval policy comes from the flags alone: the run waits only if they reached it.
    spec = scripted(tool_turn("list_files", path="."), finish_turn("listed"))
    code, out = await agentrun(
        stack, "run", spec_file(tmp_path, spec), "--approve-tools", "list_files"
    )
    assert code == 0
    run_id = out.strip()

    async def pending() -> bool:
        _, shown = await agentrun(stack, "show", run_id)
        return "approval:   ap-" in shown

    await wait_until(pending, timeout=60)
    capsys.readouterr()
    code, out = await agentrun(stack, "approve", run_id)  # stdin: no terminal, no --yes
    assert code == 2 and out == ""
    assert "pass --yes to approve" in capsys.readouterr().err

    code, shown = await asyncio.to_thread(on_terminal, stack.url, "approve", run_id, answer=b"n\n")
    assert code == 0, shown
    assert 'approve list_files {"path": "."}' in shown and "Approve this call? [y/N]" in shown
    assert f"{run_id}: nothing done" in shown
    assert await pending()  # still waiting

    code, shown = await asyncio.to_thread(on_terminal, stack.url, "approve", run_id, answer=b"y\n")
    assert code == 0, shown
    assert f"{run_id}: approved" in shown
    code, followed = await agentrun(stack, "logs", "-f", run_id)
    assert code == 0 and "approved by tty-user" in followed and "listed" in followed


async def test_a_silent_model_call_shows_a_spinner_on_a_terminal_only(
    stack: Stack, tmp_path: Path
) -> None:
    path = spec_file(tmp_path, scripted(dict(NOOP_TURN, delay_seconds=1.5), finish_turn()))
    code, out = await agentrun(stack, "run", path)
    run_id = out.strip()
    code, shown = await asyncio.to_thread(on_terminal, stack.url, "logs", "-f", run_id)
    assert code == 0, shown
    assert "\r\x1b[K      ⠋ model call, step 1 · " in shown
    lines = [line.rsplit("\x1b[K", 1)[-1] for line in shown.splitlines()]
    assert any(line.startswith("#") and "run.finished" in line for line in lines)
    code, piped = await agentrun(stack, "logs", "-f", run_id)
    assert code == 0 and "\x1b" not in piped and "⠋" not in piped
    code, raw = await agentrun(stack, "logs", "-f", run_id, "--json")
    assert code == 0 and "⠋" not in raw and all(json.loads(line) for line in raw.splitlines())


async def test_the_actor_falls_back_to_the_login_name_without_user(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AGENTRUN_ACTOR", "USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    path = spec_file(tmp_path, scripted(finish_turn()))
    out = io.StringIO()
    code = await asyncio.to_thread(cli.main, ["--api-url", stack.url, "run", path], out)
    assert code == 0
    code, shown = await agentrun(stack, "show", out.getvalue().strip())
    assert f"by {pwd.getpwuid(os.getuid()).pw_name}\n" in shown and "anonymous" not in shown


async def test_logs_of_an_ended_run_without_a_worker_prints_its_recorded_outcome(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task_queue = unique("tq-cli-noworker")
    settings = api_settings(tmp_path, task_queue)
    path = spec_file(tmp_path, scripted(NOOP_TURN, finish_turn("recorded answer")))
    async with serve_api(settings, client) as url:
        async with build_worker(client, settings, task_queue=task_queue):
            out = io.StringIO()
            argv = ["--api-url", url, "run", path, "--follow"]
            assert await asyncio.to_thread(cli.main, argv, out) == 0
            run_id = out.getvalue().splitlines()[0]
        # The worker is gone: nothing can replay the run's event log now.
        capsys.readouterr()
        for follow in ([], ["-f"]):
            out = io.StringIO()
            argv = ["--api-url", url, "logs", run_id, *follow]
            assert await asyncio.to_thread(cli.main, argv, out) == 0
            assert out.getvalue().splitlines()[:3] == [
                "status:     completed (completed)",
                "steps:      2",
                "answer:     recorded answer",
            ]
            assert "needs an agentrun worker" in capsys.readouterr().err
        out = io.StringIO()
        argv = ["--api-url", url, "logs", run_id, "--json"]
        assert await asyncio.to_thread(cli.main, argv, out) == 0
        assert json.loads(out.getvalue())["final_answer"] == "recorded answer"


async def test_usage_errors_and_unreachable_api(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = io.StringIO()
    code = await asyncio.to_thread(cli.main, ["--api-url", url, "ls"], out)
    assert code == 1 and "cannot reach the agentrun API" in capsys.readouterr().err
    code = await asyncio.to_thread(cli.main, ["--api-url", url, "run"], out)
    assert code == 2 and "needs a goal" in capsys.readouterr().err
    code = await asyncio.to_thread(cli.main, ["run", "--goal", "x", "--label", "nolabel"], out)
    assert code == 2 and "key=value" in capsys.readouterr().err


def test_console_script_is_installed_and_lists_every_command() -> None:
    script = Path(sys.executable).parent / "agentrun"
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in (
        "run",
        "ls",
        "show",
        "logs",
        "pause",
        "resume",
        "cancel",
        "approve",
        "deny",
        "message",
        "api",
        "worker",
    ):
        assert command in result.stdout


def test_an_event_type_this_cli_does_not_know_prints_its_fields_instead_of_failing() -> None:
    newer = {
        "seq": 12,
        "type": "run.brand_new",
        "at": "2031-01-02T03:04:05.678Z",
        "payload": {"widget": "w-1", "count": 2, "absent": None, "escape": "\x1b[2J"},
    }
    assert format_event(newer) == (
        "#12   03:04:05  run.brand_new          "
        "widget=w-1, count=2, escape=\N{REPLACEMENT CHARACTER}[2J"
    )


def test_a_failed_tool_result_without_an_error_type_prints_failed_error() -> None:
    payload = ToolResultPayload(call_id="c-1", tool="shell", ok=False, summary="exit 2")
    event = new_event(7, datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC), payload)
    line = "#7    03:04:05  tool.result            shell failed (error): exit 2"
    assert format_event(event) == line
    assert format_event(json.loads(event.model_dump_json())) == line
