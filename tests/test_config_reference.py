"""The configuration reference is generated from `Settings`, complete and committed up to
date; settings that cannot hold together stop the processes at start-up, in one line.

What they guard (issue 10): six settings were missing from the hand-kept table, and
`AGENTRUN_SANDBOX_MEMORY_MB=8192` (above its 4096 maximum) passed start-up and then
failed every run, blaming the run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentrun.config import ConfigError, Settings, load_settings
from agentrun.config_docs import DEFAULT_OUTPUT, env_var, render, undocumented
from tests.conftest import ROOT

REGENERATE = "run `python -m agentrun.config_docs` and commit docs/configuration.md"


def test_every_setting_has_a_docstring_for_the_reference() -> None:
    assert undocumented() == [], f"give these fields of Settings a docstring: {undocumented()}"


def test_the_committed_configuration_reference_names_every_setting_and_is_up_to_date() -> None:
    committed = DEFAULT_OUTPUT.read_text() if DEFAULT_OUTPUT.exists() else ""
    listed = set(re.findall(r"^\| `(AGENTRUN_[A-Z0-9_]+)`", committed, flags=re.M))
    missing = [env_var(name) for name in Settings.model_fields if env_var(name) not in listed]
    assert not missing, f"docs/configuration.md lacks {missing}: {REGENERATE}"
    stale = sorted(listed - {env_var(name) for name in Settings.model_fields})
    assert not stale, f"docs/configuration.md lists settings that no longer exist {stale}"
    assert committed == render(), f"docs/configuration.md is out of date: {REGENERATE}"


def test_the_readme_points_to_the_generated_reference() -> None:
    section = (ROOT / "README.md").read_text().split("## Configuration reference", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert "docs/configuration.md" in section
    # No second, hand-kept table to drift again.
    assert not re.search(r"^\| `AGENTRUN_", section, flags=re.M)


def test_the_generator_check_mode_fails_on_an_outdated_reference(tmp_path: Path) -> None:
    outdated = tmp_path / "configuration.md"
    outdated.write_text(render().replace("AGENTRUN_SANDBOX_TMP_MB", "AGENTRUN_SANDBOX_TMP"))
    cmd = [sys.executable, "-m", "agentrun.config_docs", "--check", "--output", str(outdated)]
    stale = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert stale.returncode == 1, stale
    fresh = tmp_path / "fresh.md"
    written = subprocess.run(
        [sys.executable, "-m", "agentrun.config_docs", "--output", str(fresh)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert written.returncode == 0, written
    assert fresh.read_text() == render()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"AGENTRUN_SANDBOX_MEMORY_MB": "8192"},
            "AGENTRUN_SANDBOX_MEMORY_MB=8192 is above AGENTRUN_SANDBOX_MAX_MEMORY_MB=4096",
        ),
        (
            {"AGENTRUN_SANDBOX_CPUS": "4"},
            "AGENTRUN_SANDBOX_CPUS=4 is above AGENTRUN_SANDBOX_MAX_CPUS=2",
        ),
        (
            {"AGENTRUN_SANDBOX_PIDS": "512", "AGENTRUN_SANDBOX_MAX_PIDS": "256"},
            "AGENTRUN_SANDBOX_PIDS=512 is above AGENTRUN_SANDBOX_MAX_PIDS=256",
        ),
        (
            {"AGENTRUN_SANDBOX_WORKSPACE_MB": "20000"},
            "AGENTRUN_SANDBOX_WORKSPACE_MB=20000 is above AGENTRUN_SANDBOX_MAX_WORKSPACE_MB=16384",
        ),
        (
            {"AGENTRUN_SANDBOX_TMP_MB": "512"},
            "AGENTRUN_SANDBOX_TMP_MB=512 is not below AGENTRUN_SANDBOX_MEMORY_MB=512",
        ),
        (
            {
                "AGENTRUN_SANDBOX_OUTPUT_STORE_BYTES": str(8 << 20),
                "AGENTRUN_SANDBOX_WORKSPACE_MB": "16",
            },
            "AGENTRUN_SANDBOX_OUTPUT_STORE_BYTES=8388608 keeps up to 16777216 bytes",
        ),
    ],
)
def test_settings_that_cannot_hold_together_are_refused_naming_both_variables_and_values(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert named in str(err.value)
    assert "\n" not in str(err.value)  # one problem, one line


def test_several_incoherent_settings_are_all_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRUN_SANDBOX_MEMORY_MB", "8192")
    monkeypatch.setenv("AGENTRUN_SANDBOX_CPUS", "3")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "AGENTRUN_SANDBOX_MEMORY_MB=8192" in str(err.value)
    assert "AGENTRUN_SANDBOX_CPUS=3" in str(err.value)


def test_the_api_server_stops_at_start_up_on_incoherent_settings_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "api.server"],
        env={"AGENTRUN_SANDBOX_MEMORY_MB": "8192", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 1, proc
    assert proc.stderr.strip().splitlines() == [
        "invalid configuration: AGENTRUN_SANDBOX_MEMORY_MB=8192 is above "
        "AGENTRUN_SANDBOX_MAX_MEMORY_MB=4096: lower the default or raise the maximum "
        "(every run asking for nothing would be refused)"
    ]


def test_the_worker_stops_at_start_up_on_incoherent_settings_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        env={"AGENTRUN_SANDBOX_MEMORY_MB": "8192", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    # 2: the configuration is wrong (as for any invalid setting); 1 is "cannot start".
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "MEMORY_MB=8192 is above AGENTRUN_SANDBOX_MAX_MEMORY_MB=4096" in lines[0], lines
