"""The CLI's authentication, without a server: which key it sends, from where, what a
refusal tells the user, and how the admin commands parse their flags.

What needs the API (a key created, used, revoked) is in `test_cli_agentrun.py`.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from agentrun.config import load_settings
from cli.admin_commands import key_id_of, point_in_time, quota_text
from cli.api_client import auth_headers, refusal_hint
from cli.credentials import Credentials, bootstrap_key_file, read_key_file, resolve_credentials
from cli.errors import CliError
from cli.main import build_parser

LOCAL = "http://127.0.0.1:8080"
KEY = "ar_abcdefghijkl_" + "s" * 43  # the shape of a key, not a credential


def key_file(path: Path, key: str = KEY, mode: int = 0o600) -> Path:
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


def test_the_flag_beats_the_environment_which_beats_the_key_file(tmp_path: Path) -> None:
    file = key_file(tmp_path / "k", "ar_fromthefile0_secret")
    env = {"AGENTRUN_API_KEY": "ar_fromtheenv00_secret", "AGENTRUN_API_KEY_FILE": str(file)}
    flag = resolve_credentials("ar_fromtheflag0_secret", LOCAL, env)
    assert (flag.api_key, flag.source) == ("ar_fromtheflag0_secret", "--api-key")
    from_env = resolve_credentials(None, LOCAL, env)
    assert (from_env.api_key, from_env.source) == ("ar_fromtheenv00_secret", "$AGENTRUN_API_KEY")
    from_file = resolve_credentials(None, LOCAL, {"AGENTRUN_API_KEY_FILE": str(file)})
    assert from_file.api_key == "ar_fromthefile0_secret"
    assert from_file.source == f"the file {file} ($AGENTRUN_API_KEY_FILE)"


def test_the_dev_stacks_bootstrap_key_is_used_for_a_loopback_api_only(tmp_path: Path) -> None:
    key_file(tmp_path / "admin.key")
    env = {"AGENTRUN_STATE_DIR": str(tmp_path)}
    for url in (LOCAL, "http://localhost:9000", "http://[::1]:8080"):
        assert resolve_credentials(None, url, env).api_key == KEY
    remote = resolve_credentials(None, "https://agentrun.example.com", env)
    assert remote.api_key is None
    assert any("skipped" in place for place in remote.looked_at)


def test_no_key_anywhere_lists_every_place_looked(tmp_path: Path) -> None:
    creds = resolve_credentials(None, LOCAL, {"AGENTRUN_STATE_DIR": str(tmp_path)})
    assert creds.api_key is None
    assert creds.looked_at == [
        "--api-key",
        "$AGENTRUN_API_KEY",
        "$AGENTRUN_API_KEY_FILE",
        str(tmp_path / "admin.key"),
    ]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_may_read_is_refused_with_the_chmod_that_fixes_it(
    tmp_path: Path, mode: int
) -> None:
    file = key_file(tmp_path / "admin.key", mode=mode)
    with pytest.raises(CliError) as err:
        resolve_credentials(None, LOCAL, {"AGENTRUN_API_KEY_FILE": str(file)})
    assert err.value.code == 2
    assert f"mode is {mode:04o}" in str(err.value) and f"chmod 600 {file}" in str(err.value)
    assert KEY not in str(err.value)
    with pytest.raises(CliError, match="chmod 600"):  # the bootstrap key file as well
        resolve_credentials(None, LOCAL, {"AGENTRUN_STATE_DIR": str(tmp_path)})


def test_a_private_key_file_is_read_and_a_malformed_one_refused(tmp_path: Path) -> None:
    assert read_key_file(key_file(tmp_path / "a", mode=0o400)) == KEY
    with pytest.raises(CliError, match="must hold one key"):
        read_key_file(key_file(tmp_path / "b", key="two keys"))
    with pytest.raises(CliError, match="cannot read the API key file"):
        read_key_file(tmp_path / "missing")


def test_the_cli_finds_the_bootstrap_key_where_the_api_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTRUN_ADMIN_KEY_FILE", raising=False)
    monkeypatch.setenv("AGENTRUN_STATE_DIR", str(tmp_path / "state"))
    settings = load_settings()
    assert bootstrap_key_file() == settings.admin_key_path == tmp_path / "state" / "admin.key"
    monkeypatch.setenv("AGENTRUN_ADMIN_KEY_FILE", str(tmp_path / "elsewhere.key"))
    assert bootstrap_key_file() == load_settings().admin_key_path == tmp_path / "elsewhere.key"
    monkeypatch.delenv("AGENTRUN_STATE_DIR")
    monkeypatch.delenv("AGENTRUN_ADMIN_KEY_FILE")
    assert bootstrap_key_file() == load_settings().admin_key_path


def test_a_key_replaces_the_actor_header_and_on_behalf_of_needs_one() -> None:
    assert auth_headers(KEY, None, "dana") == {"Authorization": f"Bearer {KEY}"}
    assert auth_headers(KEY, "alice", "dana") == {
        "Authorization": f"Bearer {KEY}",
        "X-Agentrun-On-Behalf-Of": "alice",
    }
    # Without a key (an API with AGENTRUN_AUTH=off) the actor still names who acts.
    assert auth_headers(None, None, "dana") == {"X-Agentrun-Actor": "dana"}
    assert auth_headers(None, "alice", "dana") == {"X-Agentrun-Actor": "alice"}
    assert auth_headers(None, None, None) == {}


def test_the_credentials_never_show_the_key() -> None:
    assert KEY not in repr(Credentials(KEY, "--api-key", ["--api-key"]))


def problem(status: int, kind: str, **extra: object) -> httpx.Response:
    body = {"type": f"https://agentrun.dev/problems/{kind}", "title": kind, "status": status}
    return httpx.Response(status, json={**body, **extra})


def test_a_401_without_a_key_says_where_the_cli_looked_and_how_to_get_one() -> None:
    creds = Credentials(None, None, ["--api-key", "$AGENTRUN_API_KEY", ".state/admin.key"])
    hint = refusal_hint(problem(401, "unauthenticated"), creds)
    assert hint.count("\n") == 1 and hint.startswith("\nhint: no API key found")
    assert "looked at --api-key, $AGENTRUN_API_KEY, .state/admin.key" in hint
    assert "agentrun keys create --tenant T --role operator" in hint and ".state/admin.key" in hint
    # An API with keys refuses the actor header a keyless CLI sends: the same hint.
    assert refusal_hint(problem(400, "actor-header-not-accepted"), creds) == hint


def test_a_401_with_a_key_names_where_the_refused_key_came_from() -> None:
    hint = refusal_hint(problem(401, "unauthenticated"), Credentials(KEY, "$AGENTRUN_API_KEY"))
    assert "refused the key from $AGENTRUN_API_KEY (unknown, revoked or expired)" in hint
    assert KEY not in hint


def test_a_403_names_the_role_the_api_asked_for() -> None:
    creds = Credentials(KEY, "--api-key")
    hint = refusal_hint(problem(403, "forbidden", required_role="admin"), creds)
    assert hint == "\nhint: this needs a key with the role admin"
    hint = refusal_hint(problem(403, "forbidden", required_permission="decide"), creds)
    assert hint == "\nhint: this needs a key with the role admin or operator or approver"
    assert refusal_hint(problem(403, "forbidden"), creds) == ""
    assert refusal_hint(problem(404, "not-found"), creds) == ""


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_actor_is_a_hidden_alias_of_on_behalf_of() -> None:
    assert parse("--actor", "alice", "ls").on_behalf_of == "alice"
    assert parse("--on-behalf-of", "bob", "ls").on_behalf_of == "bob"
    assert "--actor" not in build_parser().format_help()
    assert parse("--api-key", KEY, "ls").api_key == KEY


def test_keys_create_parses_role_subject_expiry_and_act_as() -> None:
    args = parse(
        "keys", "create", "--tenant", "team-a", "--role", "operator", "--subject", "ci-bot",
        "--expires-in", "30d", "--act-as",
    )  # fmt: skip
    assert (args.command, args.keys_command, args.tenant) == ("keys", "create", "team-a")
    assert (args.role, args.subject, args.act_as) == ("operator", "ci-bot", True)
    assert args.expires_in == timedelta(days=30)
    assert parse("keys", "revoke", "k1").key_id == "k1"
    assert parse("keys", "ls", "--tenant", "t").keys_command == "ls"


KEYS_CREATE = ["keys", "create", "--tenant", "t", "--role", "viewer", "--subject", "s"]


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "create", "--tenant", "t", "--role", "root", "--subject", "s"],
        [*KEYS_CREATE, "--expires-in", "30"],  # a duration needs its unit
        ["keys", "create", "--role", "viewer", "--subject", "s"],
        ["keys", "ls"],
        ["tenants", "quota", "t", "--max-concurrent-runs", "-1"],
        ["tenants", "quota", "t", "--budget-period", "year"],
        ["audit", "--since", "yesterday"],
        ["audit", "check"],
    ],
)
def test_bad_admin_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)
    assert exit_.value.code == 2


def test_tenants_quota_parses_only_the_limits_given() -> None:
    args = parse(
        "tenants", "quota", "team-a", "--max-concurrent-runs", "4", "--token-budget", "1000",
        "--budget-period", "day", "--queue-when-busy",
    )  # fmt: skip
    assert (args.max_concurrent_runs, args.token_budget, args.budget_period) == (4, 1000, "day")
    assert args.queue_when_busy is True and args.max_steps_per_run is None
    assert parse("tenants", "quota", "t", "--no-queue-when-busy").queue_when_busy is False
    assert parse("tenants", "create", "team-b", "--name", "Team B").name == "Team B"


def test_audit_and_usage_take_times_or_durations_back() -> None:
    args = parse("audit", "verify")
    assert args.verify == "verify"
    args = parse("audit", "--action", "run.cancel", "--since", "2031-01-02T03:04:05Z")
    assert args.verify is None and args.action == "run.cancel"
    assert args.since == datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    before = datetime.now(UTC)
    since = parse("usage", "--since", "24h").since
    after = datetime.now(UTC)
    assert before - timedelta(hours=24) <= since <= after - timedelta(hours=24)
    assert point_in_time("2031-01-02T03:04:05").tzinfo is UTC


def test_revoke_takes_a_key_id_or_a_whole_key() -> None:
    assert key_id_of(KEY) == "abcdefghijkl"
    assert key_id_of(" abcdefghijkl ") == "abcdefghijkl"


def test_a_quota_prints_only_the_limits_that_are_set() -> None:
    assert quota_text(None) == "no limits"
    assert quota_text({"max_concurrent_runs": None, "queue_when_busy": False}) == "no limits"
    quota = {"max_concurrent_runs": 4, "token_budget": 10, "budget_period": "day",
             "queue_when_busy": True}  # fmt: skip
    assert quota_text(quota) == "max_concurrent_runs=4, token_budget=10/day, queue_when_busy"
