"""The accounts settings read from the environment: comma-separated host and origin
lists, a price table checked as JSON at start-up, a database URL never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from accounts.usage import PriceTable
from agentrun.config import ConfigError, load_settings


def test_the_defaults_lock_the_api_to_loopback_with_keys() -> None:
    settings = load_settings(state_dir=Path("/srv/state"))
    assert settings.auth == "keys"
    assert settings.api_allowed_hosts == ["127.0.0.1", "localhost", "::1", "[::1]"]
    assert settings.api_cors_origins == []
    assert settings.database_url is None
    assert settings.admin_key_path == Path("/srv/state/admin.key")


def test_host_and_origin_lists_are_comma_separated_and_ports_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTRUN_API_ALLOWED_HOSTS", "api.example.com:8443, [::1]:8080,LocalHost")
    monkeypatch.setenv("AGENTRUN_API_CORS_ORIGINS", "https://ui.example.com/,http://127.0.0.1:3000")
    settings = load_settings()
    assert settings.api_allowed_hosts == ["api.example.com", "[::1]", "localhost"]
    assert settings.api_cors_origins == ["https://ui.example.com", "http://127.0.0.1:3000"]


@pytest.mark.parametrize("origin", ["*", "ui.example.com", "https://ui.example.com/app"])
def test_an_origin_that_is_not_scheme_host_port_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, origin: str
) -> None:
    monkeypatch.setenv("AGENTRUN_API_CORS_ORIGINS", origin)
    with pytest.raises(ConfigError, match=r"AGENTRUN_API_CORS_ORIGINS.*scheme://host"):
        load_settings()


def test_a_price_table_is_checked_at_start_up_and_read_by_the_ledger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTRUN_PRICE_TABLE", '{"gpt-4o": {"input": 2.5, "output": 10}}')
    table = PriceTable.from_json(load_settings().price_table)
    assert table.root["gpt-4o"].output == 10
    monkeypatch.setenv("AGENTRUN_PRICE_TABLE", '{"gpt-4o": {"input": "cheap"}}')
    with pytest.raises(ConfigError, match=r"AGENTRUN_PRICE_TABLE.*USD per million"):
        load_settings()


def test_auth_is_keys_or_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRUN_AUTH", "off")
    assert load_settings().auth == "off"
    monkeypatch.setenv("AGENTRUN_AUTH", "none")
    with pytest.raises(ConfigError, match="AGENTRUN_AUTH"):
        load_settings()


def test_an_invalid_setting_never_echoes_the_database_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTRUN_DATABASE_URL", "postgresql://agentrun:hunter2@db/agentrun")
    assert "hunter2" not in repr(load_settings())
    monkeypatch.setenv("AGENTRUN_API_RATE_LIMIT_BURST", "0")
    monkeypatch.setenv("AGENTRUN_AUTH", "maybe")
    with pytest.raises(ConfigError) as raised:
        load_settings(database_url=["not", "a", "string"])
    assert "hunter2" not in str(raised.value)
    assert "AGENTRUN_DATABASE_URL=<hidden>" in str(raised.value)
