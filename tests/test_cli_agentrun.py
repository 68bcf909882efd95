"""The `agentrun` CLI against a real API server, real Temporal and a real worker.

The CLI is synchronous (httpx), so each invocation runs in a thread while the
server, worker and Temporal client keep running in the test's event loop.
Authentication is on: the API bootstraps its admin key into the stack's state
directory on start, and each test's caller is a key of the stack's tenant whose
subject names it (`key_for`, made by the stack's admin through the admin API).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.client import Client

from accounts.db import Database, default_database_url
from accounts.roles import Role
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
from worker import build_worker

AGENTRUN = Path(sys.executable).parent / "agentrun"


@pytest.fixture(scope="module")
async def stack(
    client: Client, tmp_path_factory: pytest.TempPathFactory, sandbox_image: str
) -> AsyncIterator[Stack]:
    async with api_stack(client, tmp_path_factory.mktemp("cli-state")) as running:
        yield running


_KEYS: dict[tuple[str, str, Role, bool], str] = {}


async def key_for(
    stack: Stack, subject: str, role: Role = Role.OPERATOR, act_as: bool = False
) -> str:
    """A key of the stack's tenant held by `subject` (made once per stack)."""
    ident = (stack.url, subject, role, act_as)
    if ident not in _KEYS:
        _KEYS[ident] = await stack.new_key(subject, role, act_as=act_as)
    return _KEYS[ident]


def admin_key(stack: Stack) -> str:
    """The admin key the API bootstrapped on its first start."""
    return stack.keys[Role.ADMIN]


async def agentrun(
    stack: Stack, *argv: str, actor: str = "cli-user", key: str | None = None
) -> tuple[int, str]:
    """Run the CLI in a thread with `key` (default: an operator key of `actor`);
    returns (exit code, stdout)."""
    out = io.StringIO()
    key = key or await key_for(stack, actor)
    argv = ("--api-url", stack.url, "--api-key", key, *argv)
    code = await asyncio.to_thread(cli.main, list(argv), out)
    return code, out.getvalue()


def on_terminal(url: str, *argv: str, key: str, answer: bytes | None = None) -> tuple[int, str]:
    """`agentrun` as a process on a real terminal (a pty), its key in
    `$AGENTRUN_API_KEY`: its exit code and what it showed. `answer` is typed once
    the process asks `[y/N]`."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(AGENTRUN), "--api-url", url, *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
        env={**os.environ, "AGENTRUN_API_KEY": key},
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

    tty = await key_for(stack, "tty-user")
    code, shown = await asyncio.to_thread(
        on_terminal, stack.url, "approve", run_id, key=tty, answer=b"n\n"
    )
    assert code == 0, shown
    assert 'approve list_files {"path": "."}' in shown and "Approve this call? [y/N]" in shown
    assert f"{run_id}: nothing done" in shown
    assert await pending()  # still waiting

    code, shown = await asyncio.to_thread(
        on_terminal, stack.url, "approve", run_id, key=tty, answer=b"y\n"
    )
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
    key = await key_for(stack, "cli-user")
    code, shown = await asyncio.to_thread(on_terminal, stack.url, "logs", "-f", run_id, key=key)
    assert code == 0, shown
    assert "\r\x1b[K      ⠋ model call, step 1 · " in shown
    lines = [line.rsplit("\x1b[K", 1)[-1] for line in shown.splitlines()]
    assert any(line.startswith("#") and "run.finished" in line for line in lines)
    code, piped = await agentrun(stack, "logs", "-f", run_id)
    assert code == 0 and "\x1b" not in piped and "⠋" not in piped
    code, raw = await agentrun(stack, "logs", "-f", run_id, "--json")
    assert code == 0 and "⠋" not in raw and all(json.loads(line) for line in raw.splitlines())


async def test_the_caller_is_the_keys_subject_whatever_the_environment_says(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRUN_ACTOR", "mallory")
    monkeypatch.setenv("USER", "mallory")
    path = spec_file(tmp_path, scripted(finish_turn()))
    code, out = await agentrun(stack, "run", path, actor="key-holder")
    assert code == 0
    code, shown = await agentrun(stack, "show", out.strip())
    assert "by key-holder\n" in shown and "mallory" not in shown


async def test_on_behalf_of_needs_a_key_with_act_as(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = spec_file(tmp_path, scripted(finish_turn()))
    service = await key_for(stack, "portal", act_as=True)
    code, out = await agentrun(stack, "--on-behalf-of", "alice", "run", path, key=service)
    assert code == 0, capsys.readouterr().err
    run_id = out.strip()
    code, shown = await agentrun(stack, "show", run_id)
    assert "by portal\n" in shown
    code, raw = await agentrun(
        stack, "audit", "--action", "run.create", "--json", key=admin_key(stack)
    )
    entry = next(e for e in map(json.loads, raw.splitlines()) if e["target"] == run_id)
    assert (entry["actor"], entry["on_behalf_of"]) == ("portal", "alice")
    code, table = await agentrun(stack, "audit", "--action", "run.create", key=admin_key(stack))
    assert any(run_id in line and "portal for alice" in line for line in table.splitlines())
    capsys.readouterr()
    plain = await key_for(stack, "plain-bot")
    code, out = await agentrun(stack, "--actor", "alice", "run", path, key=plain)  # old flag
    assert code == 1 and out == ""
    assert "HTTP 403" in capsys.readouterr().err


async def test_the_bootstrap_admin_key_is_found_in_the_state_dir_without_flags(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AGENTRUN_API_KEY", "AGENTRUN_API_KEY_FILE", "AGENTRUN_ADMIN_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENTRUN_STATE_DIR", str(stack.state_dir))
    assert (stack.state_dir / "admin.key").stat().st_mode & 0o777 == 0o600
    out = io.StringIO()
    code = await asyncio.to_thread(cli.main, ["--api-url", stack.url, "tenants", "ls"], out)
    assert code == 0
    assert out.getvalue().splitlines()[1].startswith(stack.settings.dev_tenant)


async def test_without_a_key_the_refusal_says_where_the_cli_looked(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    for name in ("AGENTRUN_API_KEY", "AGENTRUN_API_KEY_FILE", "AGENTRUN_ADMIN_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENTRUN_STATE_DIR", str(tmp_path))  # no admin.key there
    out = io.StringIO()
    code = await asyncio.to_thread(cli.main, ["--api-url", stack.url, "ls"], out)
    assert code == 1 and out.getvalue() == ""
    err = capsys.readouterr().err
    assert "hint: no API key found (looked at --api-key, $AGENTRUN_API_KEY" in err
    assert str(tmp_path / "admin.key") in err and "agentrun keys create" in err


async def test_keys_create_prints_the_key_once_and_the_key_works_with_its_role(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = admin_key(stack)
    tenant = stack.settings.dev_tenant
    subject = unique("viewer")
    capsys.readouterr()
    code, out = await agentrun(
        stack, "keys", "create", "--tenant", tenant, "--role", "viewer", "--subject", subject,
        "--expires-in", "30d", key=admin,
    )  # fmt: skip
    assert code == 0
    new_key = out.strip()
    assert new_key.startswith("ar_") and len(out.splitlines()) == 1
    err = capsys.readouterr().err
    assert "only time it is shown" in err and new_key not in err
    key_id = new_key.split("_")[1]

    code, listed = await agentrun(stack, "ls", key=new_key)
    assert code == 0 and listed.startswith("RUN")
    code, out = await agentrun(stack, "run", "--goal", "g", key=new_key)
    assert code == 1 and out == ""
    err = capsys.readouterr().err
    assert "HTTP 403" in err and "permission" in err

    code, keys = await agentrun(stack, "keys", "ls", "--tenant", tenant, key=admin)
    assert code == 0 and new_key.split("_")[2] not in keys
    row = next(line for line in keys.splitlines() if line.startswith(key_id))
    assert row.split()[1:4] == ["viewer", subject, "no"] and row.endswith("active")


async def test_a_revoked_key_is_refused_with_a_hint_naming_where_it_came_from(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = admin_key(stack)
    code, out = await agentrun(
        stack, "keys", "create", "--tenant", stack.settings.dev_tenant, "--role", "operator",
        "--subject", unique("leaver"), key=admin,
    )  # fmt: skip
    doomed = out.strip()
    assert code == 0 and (await agentrun(stack, "ls", key=doomed))[0] == 0
    code, out = await agentrun(stack, "keys", "revoke", doomed, key=admin)  # the whole key
    assert code == 0 and out.strip() == f"key {doomed.split('_')[1]} revoked"
    capsys.readouterr()
    code, out = await agentrun(stack, "ls", key=doomed)
    assert code == 1 and out == ""
    err = capsys.readouterr().err
    assert "HTTP 401" in err
    assert "hint: the API refused the key from --api-key (unknown, revoked or expired)" in err
    assert doomed not in err


async def test_tenants_create_and_quota_change_only_the_limits_given(stack: Stack) -> None:
    admin = admin_key(stack)
    tenant = unique("team")
    code, out = await agentrun(stack, "tenants", "create", tenant, "--name", "Team", key=admin)
    assert code == 0 and out.strip() == f"tenant {tenant} created"
    argv = ("tenants", "quota", tenant)
    code, out = await agentrun(stack, *argv, "--max-concurrent-runs", "2", key=admin)
    assert code == 0 and out.strip() == f"tenant {tenant}: max_concurrent_runs=2"
    code, out = await agentrun(
        stack, *argv, "--token-budget", "5000", "--budget-period", "day", key=admin
    )
    assert out.strip() == f"tenant {tenant}: max_concurrent_runs=2, token_budget=5000/day"
    code, listed = await agentrun(stack, "tenants", "ls", key=admin)
    row = next(line for line in listed.splitlines() if line.startswith(tenant))
    assert row.split()[1] == "Team" and "max_concurrent_runs=2" in row
    code, raw = await agentrun(stack, "tenants", "ls", "--json", key=admin)
    quota = next(t for t in json.loads(raw) if t["tenant_id"] == tenant)["quota"]
    assert (quota["max_concurrent_runs"], quota["token_budget"]) == (2, 5000)
    code, out = await agentrun(stack, *argv, "--clear", key=admin)
    assert code == 0 and out.strip() == f"tenant {tenant}: no limits"


async def test_audit_lists_the_calls_and_verify_checks_the_chain_naming_a_broken_entry(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = admin_key(stack)
    tenant = unique("audited")
    assert (await agentrun(stack, "tenants", "create", tenant, key=admin))[0] == 0
    code, raw = await agentrun(stack, "audit", "--action", "tenant.create", "--json", key=admin)
    assert code == 0
    entry = next(e for e in map(json.loads, raw.splitlines()) if e["target"] == tenant)
    assert entry["key_id"] == admin.split("_")[1] and entry["outcome"] == "ok"
    code, table = await agentrun(stack, "audit", "--since", "1h", key=admin)
    assert code == 0 and any(tenant in line for line in table.splitlines()[1:])

    code, out = await agentrun(stack, "audit", "verify", key=admin)
    assert code == 0 and re.fullmatch(r"chain verified: \d+ entries\n", out), out
    assert int(out.split()[2]) >= entry["seq"]

    # One entry altered in the database: the chain names it, then holds again once restored.
    db = Database(stack.settings.database_url or default_database_url(stack.state_dir))
    altered = text("UPDATE audit_log SET target = :target WHERE seq = :seq")
    try:
        with db.session() as session:
            session.execute(altered, {"target": "someone-else", "seq": entry["seq"]})
        capsys.readouterr()
        code, out = await agentrun(stack, "audit", "verify", key=admin)
        assert code == 1 and out == ""
        assert f"audit chain broken at entry {entry['seq']}" in capsys.readouterr().err
    finally:
        with db.session() as session:
            session.execute(altered, {"target": tenant, "seq": entry["seq"]})
        db.close()
    assert (await agentrun(stack, "audit", "verify", key=admin))[0] == 0


async def test_usage_prints_the_totals_of_the_tenants_ended_runs(
    stack: Stack, tmp_path: Path
) -> None:
    path = spec_file(tmp_path, scripted(NOOP_TURN, finish_turn("counted")))
    code, out = await agentrun(stack, "run", path, "--follow")
    assert code == 0
    run_id = out.splitlines()[0]
    code, raw = await agentrun(stack, "usage", "--json")
    assert code == 0
    totals = json.loads(raw)
    runs = {run["run_id"]: run for run in totals["by_run"]}
    assert run_id in runs and runs[run_id]["input_tokens"] > 0
    assert totals["runs"] == len(runs)
    assert totals["input_tokens"] == sum(run["input_tokens"] for run in runs.values())
    code, shown = await agentrun(stack, "usage", "--since", "1d")
    assert code == 0
    assert f"runs:       {totals['runs']}" in shown
    assert f"tokens:     {totals['input_tokens']} in, {totals['output_tokens']} out" in shown
    seconds = f"{totals['tool_seconds']:.1f} s   sandbox time: {totals['sandbox_seconds']:.1f} s"
    assert f"tool time:  {seconds}" in shown
    assert any(line.startswith(run_id) for line in shown.splitlines())


async def test_logs_of_an_ended_run_without_a_worker_prints_its_recorded_outcome(
    client: Client,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No key flag: the CLI finds the key the API bootstrapped in its state directory.
    monkeypatch.setenv("AGENTRUN_STATE_DIR", str(tmp_path))
    for name in ("AGENTRUN_API_KEY", "AGENTRUN_API_KEY_FILE", "AGENTRUN_ADMIN_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    task_queue = unique("tq-cli-noworker")
    # Without a worker every status query runs to its timeout: a short one.
    settings = api_settings(tmp_path, task_queue, api_query_timeout_seconds=1.0)
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


async def test_usage_errors_and_unreachable_api(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refused_port: int,
) -> None:
    monkeypatch.setenv("AGENTRUN_STATE_DIR", str(tmp_path))
    url = f"http://127.0.0.1:{refused_port}"
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
        "tenants",
        "keys",
        "audit",
        "usage",
        "secrets",
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
