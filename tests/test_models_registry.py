"""build_providers: routing, model-name resolution, configuration errors, key precedence.

Where keys go is checked on the wire: the fake provider records each request's
headers, so "this key is never sent there" is observed, not inferred.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.models.base import ModelRequest
from activities.models.errors import SERVER_ERROR_ATTEMPTS
from activities.models.registry import (
    OPENAI_DEFAULT_MODEL,
    build_providers,
    openai_endpoint,
    with_stored_keys,
)
from activities.secret_values import SecretValues
from activities.tools import tool_schemas
from agentrun.config import Settings
from agentrun.contracts import Message, ModelRef, ScriptedTurn
from cli.devstack import DevStack
from secretstore import open_secret_store
from tests.model_fixtures import FakeProvider

OK_CHAT = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
OK_MESSAGE = {"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"}


def settings(**values: object) -> Settings:
    """Settings from explicit values only, whatever AGENTRUN_* the test process has."""
    base: dict[str, object] = {
        "default_provider": "openai",
        "default_model": "smollm2-135m-instruct",
        "openai_api_key": None,
        "anthropic_api_key": None,
    }
    return Settings(**{**base, **values})  # type: ignore[arg-type]


def request(ref: ModelRef) -> ModelRequest:
    return ModelRequest(model=ref, messages=[Message(role="user", content="hi")], tools=[])


async def call(
    fake: FakeProvider, name: str, cfg: Settings, env: dict[str, str], ref: ModelRef
) -> tuple[dict[str, str], Any]:
    providers = build_providers(cfg, environ=env)
    try:
        await providers.complete(request(ref))
    finally:
        await providers.aclose()
    (sent,) = fake.requests(name)
    return {k.lower(): v for k, v in sent.headers.items()}, sent.json()


async def test_default_provider_and_model_come_from_settings(fake_provider: FakeProvider) -> None:
    name = fake_provider.scenario(200, OK_CHAT)
    cfg = settings(openai_base_url=fake_provider.url(name, "/v1"), default_model="tiny")
    _, body = await call(fake_provider, name, cfg, {}, ModelRef())
    assert body["model"] == "tiny"


async def test_model_ref_name_overrides_the_default_model(fake_provider: FakeProvider) -> None:
    name = fake_provider.scenario(200, OK_CHAT)
    cfg = settings(openai_base_url=fake_provider.url(name, "/v1"))
    _, body = await call(fake_provider, name, cfg, {}, ModelRef(provider="openai", name="big"))
    assert body["model"] == "big"


async def test_default_scripted_deployment_routes_default_refs_to_the_script() -> None:
    providers = build_providers(settings(default_provider="scripted"), environ={})
    req = request(ModelRef())
    req.script = [ScriptedTurn(content="scripted!")]
    reply = await providers.complete(req)
    await providers.aclose()
    assert reply.text == "scripted!"


async def test_anthropic_without_any_key_fails_at_call_time_with_config_error() -> None:
    providers = build_providers(settings(), environ={})
    with pytest.raises(ApplicationError) as info:
        await providers.complete(request(ModelRef(provider="anthropic", name="claude-x")))
    await providers.aclose()
    assert info.value.type == "ModelConfigError"
    assert info.value.non_retryable
    assert "AGENTRUN_ANTHROPIC_API_KEY" in str(info.value)


async def test_non_default_provider_needs_an_explicit_model_name() -> None:
    providers = build_providers(settings(anthropic_api_key="k"), environ={})
    with pytest.raises(ApplicationError) as info:
        await providers.complete(request(ModelRef(provider="anthropic")))
    await providers.aclose()
    assert info.value.type == "ModelConfigError"
    assert "ModelRef.name is required" in str(info.value)


async def test_openai_com_without_a_key_is_a_config_error_not_a_401() -> None:
    providers = build_providers(settings(openai_base_url="https://api.openai.com/v1"), environ={})
    with pytest.raises(ApplicationError) as info:
        await providers.complete(request(ModelRef()))
    await providers.aclose()
    assert info.value.type == "ModelConfigError"
    assert "OPENAI_API_KEY" in str(info.value)


async def test_conventional_openai_variables_are_used_together(fake_provider: FakeProvider) -> None:
    name = fake_provider.scenario(200, OK_CHAT)
    env = {"OPENAI_BASE_URL": fake_provider.url(name, "/v1"), "OPENAI_API_KEY": "sk-env-key-0001"}
    headers, _ = await call(fake_provider, name, settings(), env, ModelRef())
    assert headers["authorization"] == "Bearer sk-env-key-0001"


async def test_agentrun_settings_win_over_conventional_variables(
    fake_provider: FakeProvider,
) -> None:
    name = fake_provider.scenario(200, OK_CHAT)
    other = fake_provider.scenario(200, OK_CHAT)
    cfg = settings(
        openai_base_url=fake_provider.url(name, "/v1"), openai_api_key="sk-agentrun-0002"
    )
    env = {"OPENAI_BASE_URL": fake_provider.url(other, "/v1"), "OPENAI_API_KEY": "sk-env-key-0001"}
    headers, _ = await call(fake_provider, name, cfg, env, ModelRef())
    assert headers["authorization"] == "Bearer sk-agentrun-0002"
    assert fake_provider.requests(other) == []


async def test_openai_api_key_is_never_sent_to_a_server_set_by_agentrun_base_url(
    fake_provider: FakeProvider,
) -> None:
    name = fake_provider.scenario(200, OK_CHAT)
    cfg = settings(openai_base_url=fake_provider.url(name, "/v1"))
    headers, _ = await call(
        fake_provider, name, cfg, {"OPENAI_API_KEY": "sk-env-key-0001"}, ModelRef()
    )
    assert "authorization" not in headers


async def test_conventional_anthropic_variables_are_used_together(
    fake_provider: FakeProvider,
) -> None:
    name = fake_provider.scenario(200, OK_MESSAGE)
    env = {"ANTHROPIC_BASE_URL": fake_provider.url(name), "ANTHROPIC_API_KEY": "sk-ant-env-0003"}
    headers, body = await call(
        fake_provider, name, settings(), env, ModelRef(provider="anthropic", name="claude-x")
    )
    assert headers["x-api-key"] == "sk-ant-env-0003"
    assert body["model"] == "claude-x"


async def test_anthropic_api_key_is_never_sent_to_a_server_set_by_agentrun_base_url(
    fake_provider: FakeProvider,
) -> None:
    name = fake_provider.scenario(200, OK_MESSAGE)
    cfg = settings(anthropic_base_url=fake_provider.url(name))
    providers = build_providers(cfg, environ={"ANTHROPIC_API_KEY": "sk-ant-env-0003"})
    with pytest.raises(ApplicationError) as info:
        await providers.complete(request(ModelRef(provider="anthropic", name="claude-x")))
    await providers.aclose()
    assert info.value.type == "ModelConfigError"
    assert fake_provider.requests(name) == []


def test_settings_repr_never_shows_keys() -> None:
    cfg = settings(openai_api_key="sk-secret-0004", anthropic_api_key="sk-ant-secret-0005")
    assert "sk-secret-0004" not in repr(cfg) and "sk-ant-secret-0005" not in repr(cfg)


def test_openai_api_key_alone_means_api_openai_com_with_that_key_and_native_tools() -> None:
    unset_model = Settings(default_provider="openai", openai_api_key=None)
    assert "default_model" not in unset_model.model_fields_set
    endpoint = openai_endpoint(unset_model, {"OPENAI_API_KEY": "sk-env-key-0001"})
    assert endpoint.base_url == "https://api.openai.com/v1"
    assert endpoint.api_key == "sk-env-key-0001"
    assert endpoint.json_schema_tools is False  # OpenAI has no llama.cpp json_object schema
    assert endpoint.default_model == OPENAI_DEFAULT_MODEL
    assert "sk-env-key-0001" not in repr(endpoint)


def test_without_any_openai_variable_the_embedded_model_is_used() -> None:
    endpoint = openai_endpoint(settings(), {})
    assert endpoint.base_url == "http://127.0.0.1:8081/v1" and endpoint.api_key is None
    assert endpoint.json_schema_tools is True


async def test_openai_base_url_and_key_send_the_key_to_that_server_as_bearer(
    fake_provider: FakeProvider,
) -> None:
    # The README's documented path: OPENAI_BASE_URL + OPENAI_API_KEY, nothing else.
    name = fake_provider.scenario(200, OK_CHAT)
    env = {"OPENAI_BASE_URL": fake_provider.url(name, "/v1"), "OPENAI_API_KEY": "sk-env-key-0009"}
    assert openai_endpoint(settings(), env).base_url == fake_provider.url(name, "/v1")
    headers, body = await call(fake_provider, name, settings(), env, ModelRef())
    assert headers["authorization"] == "Bearer sk-env-key-0009"
    assert body["model"] == "smollm2-135m-instruct"


@pytest.mark.parametrize(
    ("ref_choice", "deployment", "sent"),
    [(None, "auto", "auto"), (None, "required", "required"), ("auto", "required", "auto")],
)
async def test_tool_choice_unset_in_the_run_takes_the_deployment_setting(
    fake_provider: FakeProvider, ref_choice: str | None, deployment: str, sent: str
) -> None:
    name = fake_provider.scenario(200, OK_CHAT)
    cfg = settings(
        openai_base_url=fake_provider.url(name, "/v1"),
        openai_json_schema_tools=False,
        tool_choice=deployment,
    )
    providers = build_providers(cfg, environ={})
    req = request(ModelRef(tool_choice=ref_choice))
    req.tools = tool_schemas(["shell", "finish"])
    try:
        await providers.complete(req)
    finally:
        await providers.aclose()
    (seen,) = fake_provider.requests(name)
    assert seen.json()["tool_choice"] == sent


async def failed_call(fake: FakeProvider, status: int, attempt: int) -> ApplicationError:
    name = fake.scenario(status, {"error": {"message": "bad message shape", "code": status}})
    providers = build_providers(settings(openai_base_url=fake.url(name, "/v1")), environ={})
    req = request(ModelRef())
    req.attempt = attempt
    try:
        with pytest.raises(ApplicationError) as info:
            await providers.complete(req)
    finally:
        await providers.aclose()
    return info.value


@pytest.mark.parametrize(
    ("status", "attempt", "kind", "retryable"),
    [
        (500, 1, "ModelUnavailable", True),
        (500, 2, "ModelUnavailable", True),
        (500, SERVER_ERROR_ATTEMPTS, "ModelServerError", False),
        (503, 8, "ModelUnavailable", True),
    ],
)
async def test_a_500_repeated_on_every_attempt_stops_being_retried(
    fake_provider: FakeProvider, status: int, attempt: int, kind: str, retryable: bool
) -> None:
    error = await failed_call(fake_provider, status, attempt)
    assert (error.type, error.non_retryable) == (kind, not retryable)
    assert "bad message shape" in error.message


async def test_each_failed_attempt_logs_one_line_and_spares_temporal_the_traceback(
    fake_provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="agentrun.models"):
        error = await failed_call(fake_provider, 500, 1)
    (record,) = [r for r in caplog.records if r.name == "agentrun.models"]
    line = record.getMessage()
    assert "\n" not in line and record.exc_info is None
    assert "attempt 1" in line and "ModelUnavailable" in line and "will retry" in line
    # BENIGN: Temporal logs the failure at debug level instead of a warning with a
    # traceback on each retry.
    assert error.category == ApplicationErrorCategory.BENIGN


def test_devstack_starts_the_embedded_model_exactly_when_the_worker_calls_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    embedded = settings(state_dir=tmp_path, openai_base_url="http://127.0.0.1:8081/v1")
    keyed = settings(
        state_dir=tmp_path,
        openai_base_url="http://127.0.0.1:8081/v1",
        openai_api_key="sk-for-llama-0006",
    )
    assert DevStack(embedded).embedded_model_needed()
    # A key for the embedded server does not move the worker elsewhere.
    assert DevStack(keyed).embedded_model_needed()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-0001")
    # The key alone sends the worker to OpenAI; nothing calls the embedded model.
    assert not DevStack(settings(state_dir=tmp_path)).embedded_model_needed()


async def test_provider_keys_named_in_the_secret_store_are_sent_and_redacted_from_logs(
    fake_provider: FakeProvider, tmp_path: Path
) -> None:
    name = fake_provider.scenario(200, OK_CHAT)
    cfg = settings(
        openai_base_url=fake_provider.url(name, "/v1"),
        openai_api_key_secret="openai-key",
        state_dir=tmp_path,
    )
    stored = "sk-from-the-store-0003-abcdef"
    store = open_secret_store(cfg)
    try:
        store.put(cfg.dev_tenant, "openai-key", stored)
    finally:
        store.close()
    values = SecretValues(lambda tenant, secret: _reveal(cfg, tenant, secret))
    keyed = with_stored_keys(cfg, values.value)
    headers, _ = await call(fake_provider, name, keyed, {}, ModelRef())
    assert headers["authorization"] == f"Bearer {stored}"
    assert values.active_redactor().redact(f"key={stored}") == "key=[REDACTED:openai-key]"
    assert with_stored_keys(settings(), values.value).openai_api_key is None  # none named


def _reveal(cfg: Settings, tenant: str, secret: str) -> str:
    store = open_secret_store(cfg)
    try:
        return store.get(tenant, secret).reveal()
    finally:
        store.close()
