"""Provider failures become the right Temporal retry posture, for both HTTP providers.

Every error goes through real HTTP against a fake provider on 127.0.0.1 (see
tests/model_fixtures.py). For Anthropic that fake is the only option: its API
cannot be reached from CI (no internet, no key), so these tests pin our side of
the contract, the documented status codes and error body shape, not Anthropic's
behaviour. The same goes for OpenAI proper; llama.cpp's server is tested for
real in test_models_embedded.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.models.anthropic import AnthropicProvider
from activities.models.base import PERMANENT_TYPES, RETRYABLE_TYPES, ModelProvider, ModelRequest
from activities.models.errors import EXCERPT_CHARS, body_excerpt, retry_after
from activities.models.openai_compat import OpenAICompatProvider
from agentrun.contracts import Message, ModelRef
from tests.model_fixtures import FakeProvider

API_KEY = "sk-test-Zq8vT3kPw9LmN2xR7sY4"

ProviderFactory = Callable[[FakeProvider, str, float], ModelProvider]


def openai(fake: FakeProvider, name: str, timeout: float = 5.0) -> ModelProvider:
    return OpenAICompatProvider(
        base_url=fake.url(name, "/v1"), api_key=API_KEY, timeout=timeout, default_model="m"
    )


def anthropic(fake: FakeProvider, name: str, timeout: float = 5.0) -> ModelProvider:
    return AnthropicProvider(
        base_url=fake.url(name), api_key=API_KEY, timeout=timeout, default_model="claude-x"
    )


MakeProvider = Callable[..., ModelProvider]
PROVIDERS = pytest.mark.parametrize("make", [openai, anthropic], ids=["openai", "anthropic"])


def request() -> ModelRequest:
    return ModelRequest(model=ModelRef(), messages=[Message(role="user", content="hi")], tools=[])


async def failure(provider: ModelProvider) -> ApplicationError:
    try:
        with pytest.raises(ApplicationError) as info:
            await provider.complete(request())
    finally:
        await provider.aclose()
    error = info.value
    # Whatever happened, the key is never in what lands in workflow history.
    assert API_KEY not in str(error)
    assert API_KEY not in repr(error.details)
    assert (error.type in RETRYABLE_TYPES) != error.non_retryable
    assert error.type in RETRYABLE_TYPES + PERMANENT_TYPES
    return error


def openai_error(message: str) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error"}}


@PROVIDERS
async def test_429_is_retryable_rate_limit_honouring_retry_after(
    make: MakeProvider, fake_provider: FakeProvider
) -> None:
    name = fake_provider.scenario(429, openai_error("slow down"), headers={"Retry-After": "7"})
    error = await failure(make(fake_provider, name))
    assert error.type == "ModelRateLimited"
    assert error.next_retry_delay == timedelta(seconds=7)
    assert "429" in str(error) and "slow down" in str(error)


@PROVIDERS
@pytest.mark.parametrize("status", [500, 503, 529, 408])
async def test_server_side_statuses_are_retryable_unavailable(
    make: MakeProvider, status: int, fake_provider: FakeProvider
) -> None:
    name = fake_provider.scenario(
        status, {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    )
    error = await failure(make(fake_provider, name))
    assert error.type == "ModelUnavailable"
    assert not error.non_retryable
    assert str(status) in str(error) and "busy" in str(error)


@PROVIDERS
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, "ModelAuthError"),
        (403, "ModelAuthError"),
        (404, "ModelNotFound"),
        (400, "ModelBadRequest"),
        (422, "ModelBadRequest"),
    ],
)
async def test_client_errors_are_permanent(
    make: MakeProvider, status: int, kind: str, fake_provider: FakeProvider
) -> None:
    name = fake_provider.scenario(status, openai_error("nope"))
    error = await failure(make(fake_provider, name))
    assert error.type == kind
    assert error.non_retryable
    assert error.next_retry_delay is None


@PROVIDERS
async def test_key_echoed_by_the_provider_is_scrubbed_from_the_message(
    make: MakeProvider, fake_provider: FakeProvider
) -> None:
    name = fake_provider.scenario(
        401, openai_error(f"Incorrect API key provided: {API_KEY}. Header: Bearer {API_KEY}")
    )
    error = await failure(make(fake_provider, name))
    assert error.type == "ModelAuthError"
    assert "Incorrect API key provided" in str(error)
    assert "[redacted]" in str(error)


@PROVIDERS
async def test_the_key_is_sent_in_the_provider_specific_header(
    make: MakeProvider, fake_provider: FakeProvider
) -> None:
    name = fake_provider.scenario(500, "boom")
    await failure(make(fake_provider, name))
    headers = {k.lower(): v for k, v in fake_provider.requests(name)[0].headers.items()}
    if make is openai:
        assert headers["authorization"] == f"Bearer {API_KEY}"
    else:
        assert headers["x-api-key"] == API_KEY
        assert headers["anthropic-version"] == "2023-06-01"


@PROVIDERS
async def test_long_error_bodies_are_quoted_as_a_short_excerpt(
    make: MakeProvider, fake_provider: FakeProvider
) -> None:
    name = fake_provider.scenario(400, "x" * 5000)
    error = await failure(make(fake_provider, name))
    assert "x" * EXCERPT_CHARS not in str(error)
    assert len(str(error)) < EXCERPT_CHARS + 120


@PROVIDERS
async def test_malformed_json_on_200_is_retryable_unavailable(
    make: MakeProvider, fake_provider: FakeProvider
) -> None:
    name = fake_provider.scenario(
        200, "{this is not json", headers={"content-type": "application/json"}
    )
    error = await failure(make(fake_provider, name))
    assert error.type == "ModelUnavailable"
    assert "unreadable response" in str(error)


@PROVIDERS
async def test_json_of_the_wrong_shape_is_retryable_unavailable(
    make: MakeProvider, fake_provider: FakeProvider
) -> None:
    name = fake_provider.scenario(200, {"unexpected": True})
    error = await failure(make(fake_provider, name))
    assert error.type == "ModelUnavailable"


@PROVIDERS
async def test_a_hanging_provider_times_out_as_retryable_model_timeout(
    make: MakeProvider, fake_provider: FakeProvider
) -> None:
    # Had the client waited out the 10 s delay, "{}" would be a bad shape instead.
    name = fake_provider.scenario(200, "{}", delay=10)
    error = await failure(make(fake_provider, name, 0.3))
    assert error.type == "ModelTimeout"


@PROVIDERS
async def test_connection_refused_is_retryable_unavailable(
    make: MakeProvider, refused_port: int
) -> None:
    provider = (OpenAICompatProvider if make is openai else AnthropicProvider)(
        base_url=f"http://127.0.0.1:{refused_port}", api_key=API_KEY, default_model="m"
    )
    error = await failure(provider)
    assert error.type == "ModelUnavailable"
    assert "cannot reach" in str(error)


@PROVIDERS
async def test_redirects_are_not_followed_and_are_a_config_error(
    make: MakeProvider, fake_provider: FakeProvider
) -> None:
    target = fake_provider.scenario(200, "{}")
    name = fake_provider.scenario(307, "", headers={"location": fake_provider.url(target, "/v1")})
    error = await failure(make(fake_provider, name))
    assert error.type == "ModelConfigError"
    assert fake_provider.requests(target) == []  # the key never went to the new location


async def test_invalid_base_url_is_a_permanent_config_error() -> None:
    provider = OpenAICompatProvider(
        base_url="ftp://example.invalid/v1", api_key=API_KEY, default_model="m"
    )
    error = await failure(provider)
    assert error.type == "ModelConfigError"


# --- the helper's pure parts -------------------------------------------------


def test_retry_after_accepts_seconds_http_dates_and_openai_milliseconds() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after(httpx.Headers({"retry-after": "3"})) == timedelta(seconds=3)
    date = "Wed, 01 Jan 2025 12:00:30 GMT"
    assert retry_after(httpx.Headers({"retry-after": date}), now=now) == timedelta(seconds=30)
    ms = httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})
    assert retry_after(ms) == timedelta(seconds=1.5)
    assert retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert retry_after(httpx.Headers({"retry-after": "-5"})) is None
    assert retry_after(httpx.Headers({})) is None


def test_excerpt_reads_openai_and_anthropic_error_shapes_and_scrubs_key_shapes() -> None:
    assert body_excerpt('{"error": {"message": "bad model", "type": "x"}}') == "x: bad model"
    anthropic_body = (
        '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    )
    assert body_excerpt(anthropic_body) == "overloaded_error: Overloaded"
    assert "sk-ant-api03-abcdefghijkl" not in body_excerpt("key sk-ant-api03-abcdefghijkl bad")
    assert body_excerpt("  multi\n line\t text ") == "multi line text"
