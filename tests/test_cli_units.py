"""The CLI's pure parts: event and delta layout, the spinner, flags → spec, the actor.

What needs a run (the API, Temporal, a worker) is in `test_cli_agentrun.py`.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from agentrun.contracts import (
    ApprovalRequestedPayload,
    ApprovalResolvedPayload,
    ControlRejectedPayload,
    ModelCalledPayload,
    ModelDelta,
    RunSpec,
    ToolResultPayload,
    new_event,
)
from cli.actor import default_actor
from cli.errors import CliError
from cli.event_format import SUMMARY_COLUMN, LiveLine, format_event
from cli.main import build_parser
from cli.spec_builder import build_spec
from cli.spinner import ERASE, Spinner, elapsed_text

AT = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def spec_from(*argv: str) -> dict[str, Any]:
    return build_spec(build_parser().parse_args(["run", *argv]))


def delta(text: str, kind: str = "text", index: int = 0, **kw: Any) -> ModelDelta:
    return ModelDelta(step=1, n=1, attempt=kw.pop("attempt", 1), kind=kind, text=text,
                      index=index, at=AT, **kw)  # fmt: skip


def test_version_prints_the_installed_package_version() -> None:
    script = Path(sys.executable).parent / "agentrun"
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"agentrun {version('agentrun')}"


def test_multi_line_tool_output_stays_indented_under_its_summary() -> None:
    payload = ToolResultPayload(
        call_id="c-1", tool="shell", ok=True, summary="exit 0\ntotal 8\n\n-rw-r--r-- hello.txt"
    )
    lines = format_event(new_event(7, AT, payload)).split("\n")
    pad = " " * SUMMARY_COLUMN
    assert lines == [
        "#7    03:04:05  tool.result            shell ok: exit 0",
        pad + "total 8",
        "",
        pad + "-rw-r--r-- hello.txt",
    ]
    assert lines[0].index("exit 0") == SUMMARY_COLUMN + len("shell ok: ")


def test_the_approval_hint_names_the_run_instead_of_a_placeholder() -> None:
    payload = ApprovalRequestedPayload(
        approval_id="ap-s1-c0", call_id="s1-c0", tool="shell", arguments_digest="ab" * 32,
        arguments='{"command": "uname -a"}',
    )  # fmt: skip
    text = format_event(new_event(4, AT, payload), "k-123")
    assert "<run>" not in text
    first, hint = text.split("\n")
    assert first.endswith('shell needs approval: {"command": "uname -a"}')
    assert hint == (
        " " * SUMMARY_COLUMN
        + f"approve: agentrun approve k-123 ap-s1-c0 --digest {'ab' * 32}   (or deny)"
    )


def test_estimated_token_counts_show_as_estimates() -> None:
    exact = ModelCalledPayload(step=2, input_tokens=114, output_tokens=9, tool_calls=["shell"])
    estimated = exact.model_copy(update={"usage_estimated": True})
    assert "step 2 · 114→9 tokens · tools: shell" in format_event(new_event(5, AT, exact))
    assert "step 2 · ~114→~9 tokens · tools: shell" in format_event(new_event(5, AT, estimated))


def test_a_rejected_control_signal_names_action_actor_and_reason() -> None:
    payload = ControlRejectedPayload(
        action="resume", actor="dana", reason="InvalidTransition: the run is not paused"
    )
    event = new_event(9, AT, payload)
    line = (
        "#9    03:04:05  control.rejected       "
        "resume by dana changed nothing: InvalidTransition: the run is not paused"
    )
    assert format_event(event) == line
    assert format_event(json.loads(event.model_dump_json())) == line


def test_a_decision_made_for_an_end_user_names_both() -> None:
    by_service = ApprovalResolvedPayload(
        approval_id="ap-s1-c0", approved=True, actor="portal", on_behalf_of="dana"
    )
    assert format_event(new_event(4, AT, by_service)).endswith(
        "ap-s1-c0 approved by portal for dana"
    )
    by_person = by_service.model_copy(update={"on_behalf_of": None})
    assert format_event(new_event(4, AT, by_person)).endswith("ap-s1-c0 approved by portal")


def test_streamed_text_and_tool_call_arguments_go_on_lines_of_their_own() -> None:
    out = io.StringIO()
    live = LiveLine(out)
    live.delta(delta("I will "))
    live.delta(delta("write it.\nThen finish."))
    live.delta(delta('{"path": ', kind="tool_call", name="write_file"))
    live.delta(delta('"a.txt"}', kind="tool_call"))
    live.delta(delta('{"answer": "ok"}', kind="tool_call", index=1, name="finish"))
    live.end()
    assert out.getvalue().split("\n") == [
        "      ▸ I will write it.",
        "        Then finish.",
        '      → write_file {"path": "a.txt"}',
        '      → finish {"answer": "ok"}',
        "",
    ]


def test_a_retried_model_call_streams_on_a_new_line_that_says_so() -> None:
    out = io.StringIO()
    live = LiveLine(out)
    live.delta(delta("partial"))
    live.delta(delta("again", attempt=2))
    live.end()
    assert out.getvalue().split("\n") == [
        "      ▸ partial",
        "      ▸ (attempt 2, the previous one failed)",
        "      ▸ again",
        "",
    ]


def test_the_spinner_shows_what_is_in_flight_and_for_how_long() -> None:
    now = [1000.0]
    out = io.StringIO()
    spinner = Spinner(out, enabled=True, indent="  ", clock=lambda: now[0], interval=None)
    spinner.start("shell running", since=datetime.fromtimestamp(935.0, UTC))
    spinner.draw()
    now[0] += 1
    spinner.draw()
    with spinner.pause():
        out.write("#8 tool.result\n")
    spinner.close()
    assert out.getvalue() == (
        f"{ERASE}  ⠋ shell running · 1m05s{ERASE}  ⠙ shell running · 1m06s{ERASE}#8 tool.result\n"
    )


def test_a_disabled_spinner_writes_nothing() -> None:
    out = io.StringIO()
    spinner = Spinner(out, enabled=False, interval=None)
    spinner.start("model call, step 1")
    spinner.draw()
    with spinner.pause():
        out.write("x\n")
    spinner.close()
    assert out.getvalue() == "x\n"


def test_elapsed_time_reads_like_gh() -> None:
    assert [elapsed_text(s) for s in (-3, 0, 59.9, 65, 3599, 7380)] == [
        "0s", "0s", "59s", "1m05s", "59m59s", "2h03m",
    ]  # fmt: skip


def test_run_flags_override_the_spec_file_and_build_a_valid_spec() -> None:
    spec = spec_from(
        str(EXAMPLES / "approval.json"),
        "--approve-tools", "shell,write_file", "--approval-timeout", "60",
        "--memory-mb", "512", "--cpus", "0.5", "--pids", "32", "--workspace-mb", "64",
        "--network", "--temperature", "0", "--tool-choice", "auto", "--finish", "text",
        "--max-steps", "3",
    )  # fmt: skip
    run = RunSpec.model_validate(spec)
    assert run.approval.mode == "tools" and run.approval.tools == ["shell", "write_file"]
    assert run.approval.timeout_seconds == 60 and run.approval.on_timeout == "deny"
    sandbox = run.sandbox
    assert (sandbox.memory_mb, sandbox.cpus, sandbox.pids, sandbox.workspace_mb) == (
        512,
        0.5,
        32,
        64,
    )
    assert sandbox.network is True
    assert run.model.temperature == 0 and run.model.tool_choice == "auto"
    assert run.finish == "text" and run.limits.max_steps == 3
    assert run.limits.tool_timeout_seconds == 30  # the file's, kept


def test_approval_flags_without_a_file() -> None:
    spec = spec_from("--goal", "g", "--approval", "always", "--no-network")
    assert spec["approval"] == {"mode": "always"} and spec["sandbox"] == {"network": False}
    assert "model" not in spec and "finish" not in spec


def test_approval_tools_without_tools_and_tools_with_another_mode_are_refused() -> None:
    with pytest.raises(CliError, match="--approve-tools shell,write_file") as err:
        spec_from("--goal", "g", "--approval", "tools")
    assert err.value.code == 2
    with pytest.raises(CliError, match="needs --approval tools"):
        spec_from("--goal", "g", "--approval", "always", "--approve-tools", "shell")


@pytest.mark.parametrize("flag", [["--max-steps", "0"], ["--approve-tools", "rm"]])
def test_bad_run_flags_are_refused_not_replaced(
    flag: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        spec_from("--goal", "g", *flag)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "must be at least 1, got 0" in err or "unknown tool rm" in err


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_example_spec_is_a_valid_run_spec(path: Path) -> None:
    RunSpec.model_validate(json.loads(path.read_text()))
    assert RunSpec.model_validate(spec_from(str(path)))  # and loads as `agentrun run FILE`


def test_the_examples_include_hello_and_an_approval_of_shell() -> None:
    approval = RunSpec.model_validate_json((EXAMPLES / "approval.json").read_text()).approval
    assert approval.mode == "tools" and approval.requires_approval("shell")
    assert (EXAMPLES / "hello.json").is_file()


def test_the_actor_is_user_else_the_login_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_actor({"AGENTRUN_ACTOR": "ops", "USER": "dana"}) == "ops"
    assert default_actor({"USER": "dana"}) == "dana"
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    login = pwd.getpwuid(os.getuid()).pw_name
    assert default_actor({}) == login
    assert default_actor({"USER": "  "}) == login
