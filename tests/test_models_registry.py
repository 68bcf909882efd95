"""build_providers: routing, model-name resolution, configuration errors, key precedence.

Where keys go is checked on the wire: the fake provider records each request's
headers, so "this key is never sent there" is observed, not inferred.
"""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.models.base import ModelRequest
from activities.models.registry import build_providers
from agentrun.config import Settings
from agentrun.contracts import Message, ModelRef, ScriptedTurn
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
