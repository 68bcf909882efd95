"""`agentrun secrets`: values go in through stdin, a file or a silent prompt, never
argv, and never come back out; against a real API (uvicorn, Temporal, a worker).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from accounts.roles import Role
from cli import main as cli
from secretstore import SecretStore, open_secret_store
from tests.api_fixtures import Stack, api_stack, unique

AGENTRUN = Path(sys.executable).parent / "agentrun"
VALUE = "cli-secret-value-93e1f0a7"


@pytest.fixture(scope="module")
async def stack(client: Client, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with api_stack(client, tmp_path_factory.mktemp("cli-secrets")) as running:
        yield running


async def agentrun(
    stack: Stack, *argv: str, stdin: str = "", role: Role = Role.OPERATOR
) -> tuple[int, str]:
    out = io.StringIO()
    args = ["--api-url", stack.url, "--api-key", stack.keys[role], *argv]
    code = await asyncio.to_thread(cli.main, args, out, io.StringIO(stdin))
    return code, out.getvalue()


def secret_name() -> str:
    return f"CLI_{unique('s').replace('-', '_')}"


async def test_put_from_stdin_list_and_delete(stack: Stack) -> None:
    name = secret_name()
    code, shown = await agentrun(stack, "secrets", "put", name, stdin=VALUE + "\n")
    assert (code, shown) == (0, f"secret {name} stored (version 1)\n")
    code, shown = await agentrun(stack, "secrets", "ls", role=Role.VIEWER)
    assert code == 0 and name in shown and VALUE not in shown
    code, listed = await agentrun(stack, "secrets", "ls", "--json")
    [meta] = [m for m in json.loads(listed) if m["name"] == name]
    assert meta["version"] == 1
    code, shown = await agentrun(stack, "secrets", "delete", name)
    assert (code, shown) == (0, f"secret {name} deleted\n")
    code, _ = await agentrun(stack, "secrets", "delete", name)
    assert code == 1


async def test_one_trailing_newline_is_dropped_and_the_rest_kept(
    stack: Stack, tmp_path: Path
) -> None:
    name = secret_name()
    pem = "-----BEGIN KEY-----\nabcdefgh\n-----END KEY-----\n"
    (tmp_path / "key.pem").write_text(pem)
    code, shown = await agentrun(
        stack, "secrets", "put", name, "--from-file", str(tmp_path / "key.pem")
    )
    assert code == 0, shown
    store = stack_store(stack)
    assert store.get(stack.tenant, name).reveal() == pem.removesuffix("\n")
    await agentrun(stack, "secrets", "put", name, stdin=VALUE + "\n\n")
    assert store.get(stack.tenant, name).reveal() == VALUE + "\n"
    store.close()


def stack_store(stack: Stack) -> SecretStore:
    """The store the stack's API writes to (its state directory's database and key)."""
    return open_secret_store(stack.settings)


async def test_empty_input_a_missing_file_and_a_short_value_are_refused(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await agentrun(stack, "secrets", "put", "EMPTY_ONE", stdin=""))[0] == 2
    missing = tmp_path / "nope"
    assert (await agentrun(stack, "secrets", "put", "X1", "--from-file", str(missing)))[0] == 2
    code, _ = await agentrun(stack, "secrets", "put", "SHORT_ONE", stdin="short")
    assert code == 1
    errors = capsys.readouterr().err
    assert "no value" in errors and "at least 8 characters" in errors
    assert "short\n" not in errors


async def test_a_viewer_is_refused_with_the_apis_reason(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = await agentrun(stack, "secrets", "put", secret_name(), stdin=VALUE, role=Role.VIEWER)
    assert code == 1
    assert "secrets" in capsys.readouterr().err


def test_the_value_cannot_be_given_on_the_command_line() -> None:
    with pytest.raises(SystemExit) as refused:
        cli.main(["secrets", "put", "NAME", VALUE])
    assert refused.value.code == 2


async def test_on_a_terminal_it_asks_without_echoing_the_value(stack: Stack) -> None:
    name = secret_name()
    code, shown = await asyncio.to_thread(
        typed_on_terminal, stack.url, stack.keys[Role.OPERATOR], name
    )
    assert code == 0, shown
    assert "not echoed" in shown and f"secret {name} stored" in shown
    assert VALUE not in shown
    store = stack_store(stack)
    assert store.get(stack.tenant, name).reveal() == VALUE
    store.close()


def typed_on_terminal(url: str, key: str, name: str) -> tuple[int, str]:
    """`agentrun secrets put NAME` on a pty; the value typed at its prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(AGENTRUN), "--api-url", url, "secrets", "put", name],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
        start_new_session=True,  # the pty becomes its controlling terminal (getpass)
        env={**os.environ, "AGENTRUN_API_KEY": key},
    )
    os.close(slave)
    shown, typed = b"", False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
            if not typed and b"not echoed" in shown:
                os.write(master, VALUE.encode() + b"\n")
                typed = True
        return proc.wait(timeout=30), shown.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
