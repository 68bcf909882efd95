"""From deployment settings to the providers the `call_model` activity uses.

``build_providers(settings)`` is called once where the worker starts (settings are
read at the edges) and its result is injected into the activity. It never fails
for a provider that is merely *unconfigured*: a run that asks for it gets a
non-retryable ``ModelConfigError`` telling the operator what to set, while runs
on other providers keep working.

Where the values come from (first match wins; :func:`openai_endpoint`):

* OpenAI-compatible base URL: ``AGENTRUN_OPENAI_BASE_URL`` → ``OPENAI_BASE_URL`` →
  ``https://api.openai.com/v1`` when an OpenAI key is set (``AGENTRUN_OPENAI_API_KEY``
  or ``OPENAI_API_KEY``: a key alone means OpenAI, as the README promises) → the
  embedded model (``http://127.0.0.1:8081/v1``).
* OpenAI API key: ``AGENTRUN_OPENAI_API_KEY`` → ``OPENAI_API_KEY``, the latter
  only when the base URL is OpenAI's own or came from ``OPENAI_BASE_URL``: the
  conventional variables travel together, so a key exported for OpenAI is never
  sent to some other server configured through ``AGENTRUN_OPENAI_BASE_URL``.
  So ``OPENAI_API_KEY`` alone → api.openai.com with that key; ``OPENAI_BASE_URL``
  plus ``OPENAI_API_KEY`` → that server with that key.
* For api.openai.com reached that way, unless set explicitly: native tool calls
  (OpenAI has no llama.cpp-style ``json_object`` schema) and the default model
  ``OPENAI_DEFAULT_MODEL`` (the embedded model's name means nothing there).
* Anthropic base URL: ``AGENTRUN_ANTHROPIC_BASE_URL`` → ``ANTHROPIC_BASE_URL`` →
  ``https://api.anthropic.com``.
* Anthropic API key: ``AGENTRUN_ANTHROPIC_API_KEY`` → ``ANTHROPIC_API_KEY`` (same
  pairing rule as OpenAI's).
* Either key may instead live in the secret store (``AGENTRUN_OPENAI_API_KEY_SECRET``,
  ``AGENTRUN_ANTHROPIC_API_KEY_SECRET``: a secret of the system tenant), read by the
  worker at start (:func:`with_stored_keys`); it then counts as the ``AGENTRUN_…``
  setting.
* Model name: ``ModelRef.name`` → ``AGENTRUN_DEFAULT_MODEL``, the latter only for
  the default provider (a smollm2 default means nothing to Anthropic).
* Tool choice: ``ModelRef.tool_choice`` → ``AGENTRUN_TOOL_CHOICE``.

Provider failures leave :meth:`ModelProviders.complete` with one log line each
(type and message) and the ``BENIGN`` category, which makes Temporal log them at
debug level instead of a traceback per retry; an HTTP 500 that repeats on every
attempt becomes non-retryable there (``errors.bounded_attempts``).

Keys are held by the provider clients only; nothing here logs or returns them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import urlsplit

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.models.anthropic import AnthropicProvider
from activities.models.base import ModelProvider, ModelReply, ModelRequest
from activities.models.errors import bounded_attempts, config_error
from activities.models.openai_compat import OpenAICompatProvider
from activities.models.scripted import ScriptedProvider
from agentrun.config import Settings
from agentrun.contracts import ModelRef
from telemetry.metrics import record_model_call

__all__ = [
    "ModelProviders",
    "OpenAIEndpoint",
    "ProviderName",
    "build_providers",
    "openai_endpoint",
]

ProviderName = Literal["openai", "anthropic", "scripted"]
ToolChoice = Literal["auto", "required", "none"]

OPENAI_HOST = "api.openai.com"
OPENAI_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"
"""The model for default refs when only an OpenAI key is configured."""
ANTHROPIC_URL = "https://api.anthropic.com"

log = logging.getLogger("agentrun.models")


@dataclass(frozen=True)
class OpenAIEndpoint:
    """Where the OpenAI-compatible provider sends requests, and how."""

    base_url: str
    api_key: str | None
    json_schema_tools: bool
    default_model: str
    """``AGENTRUN_DEFAULT_MODEL``, or ``OPENAI_DEFAULT_MODEL`` for OpenAI unless set."""

    def __repr__(self) -> str:  # never the key
        return f"OpenAIEndpoint(base_url={self.base_url!r}, key={'set' if self.api_key else None})"


def openai_endpoint(settings: Settings, environ: Mapping[str, str]) -> OpenAIEndpoint:
    """The OpenAI-compatible endpoint the settings and environment select (see the module).

    The dev stack asks this too, so it starts the embedded model exactly when the
    worker will call it.
    """
    explicit = settings.model_fields_set
    if "openai_base_url" in explicit:
        url, paired = settings.openai_base_url, False
    elif environ.get("OPENAI_BASE_URL"):
        url, paired = environ["OPENAI_BASE_URL"], True
    elif settings.openai_api_key or environ.get("OPENAI_API_KEY"):
        url, paired = OPENAI_URL, True
    else:
        url, paired = settings.openai_base_url, False
    key = settings.openai_api_key
    if not key and (paired or _host(url) == OPENAI_HOST):
        key = environ.get("OPENAI_API_KEY") or None
    openai = _host(url) == OPENAI_HOST
    schema_tools = settings.openai_json_schema_tools
    model = settings.default_model
    if openai and "openai_json_schema_tools" not in explicit:
        schema_tools = False
    if openai and "default_model" not in explicit:
        model = OPENAI_DEFAULT_MODEL
    return OpenAIEndpoint(url, key, schema_tools, model)


class _Unconfigured:
    """Stands in for a provider whose configuration is missing; fails at call time."""

    def __init__(self, provider: str, message: str) -> None:
        self._provider = provider
        self._message = message

    async def complete(self, request: ModelRequest) -> ModelReply:
        raise config_error(self._provider, self._message)

    async def aclose(self) -> None:
        """Nothing to close."""


class ModelProviders:
    """Routes a request to its provider with the model name resolved.

    It is itself a ``ModelProvider``, so the activity just calls ``complete``:

    >>> providers = build_providers(settings)  # doctest: +SKIP
    >>> reply = await providers.complete(request)  # doctest: +SKIP
    >>> await providers.aclose()  # doctest: +SKIP
    """

    def __init__(
        self,
        providers: Mapping[ProviderName, ModelProvider],
        *,
        default_provider: ProviderName,
        default_model: str | None,
        default_tool_choice: ToolChoice = "auto",
    ) -> None:
        self._providers = dict(providers)
        self.default_provider: ProviderName = default_provider
        self.default_model = default_model
        self.default_tool_choice: ToolChoice = default_tool_choice

    def provider_name(self, ref: ModelRef) -> ProviderName:
        """``ModelRef.provider`` with ``default`` replaced by the deployment's default."""
        return self.default_provider if ref.provider == "default" else ref.provider

    def model_name(self, ref: ModelRef) -> str | None:
        """The model a ref means, or None when it cannot be resolved (scripted needs none)."""
        if ref.name:
            return ref.name
        if self.provider_name(ref) == self.default_provider:
            return self.default_model
        return None

    def provider(self, ref: ModelRef) -> ModelProvider:
        name = self.provider_name(ref)
        found = self._providers.get(name)
        if found is None:
            return _Unconfigured(name, "provider not configured in this deployment")
        return found

    async def complete(self, request: ModelRequest) -> ModelReply:
        name = self.provider_name(request.model)
        model = self.model_name(request.model)
        if model is None and name != "scripted":
            raise config_error(
                name,
                f"ModelRef.name is required for provider {name!r}: the deployment's "
                f"default model belongs to {self.default_provider!r}",
            )
        resolved = request.model.model_copy(
            update={
                "provider": name,
                "name": model,
                "tool_choice": request.model.tool_choice or self.default_tool_choice,
            }
        )
        # The model's latency and tokens (`telemetry.metrics`), per attempt.
        label, started = f"{name}:{model or ''}", time.perf_counter()
        try:
            reply = await self.provider(request.model).complete(replace(request, model=resolved))
        except ApplicationError as exc:
            error = bounded_attempts(exc, request.attempt)
            record_model_call(label, time.perf_counter() - started, error.type or "error")
            # One line per failed attempt; the BENIGN category keeps Temporal from
            # logging the whole cause chain as a warning on every retry.
            log.warning(
                "model call failed on attempt %d (%s, %s): %s",
                request.attempt,
                error.type,
                "not retried" if error.non_retryable else "will retry",
                error.message,
            )
            raise ApplicationError(
                error.message,
                *error.details,
                type=error.type,
                non_retryable=error.non_retryable,
                next_retry_delay=error.next_retry_delay,
                category=ApplicationErrorCategory.BENIGN,
            ) from exc.__cause__
        record_model_call(
            label,
            time.perf_counter() - started,
            "ok",
            input_tokens=reply.usage.input_tokens,
            output_tokens=reply.usage.output_tokens,
        )
        return reply

    async def aclose(self) -> None:
        """Close every client, even when one of them fails to close."""
        errors: list[BaseException] = []
        for provider in self._providers.values():
            try:
                await provider.aclose()
            except Exception as exc:  # close the others regardless
                errors.append(exc)
        if errors:
            raise errors[0]


def with_stored_keys(settings: Settings, resolve: Callable[[str, str], str]) -> Settings:
    """`settings` with the provider keys its `*_api_key_secret` settings name, read
    from the secret store (`resolve(tenant, name)`, the system tenant's secrets).

    The worker calls it once at start, before :func:`build_providers`; resolving
    through the worker's `SecretValues` also puts the keys under log redaction."""
    keys: dict[str, str] = {}
    for field, secret in (
        ("openai_api_key", settings.openai_api_key_secret),
        ("anthropic_api_key", settings.anthropic_api_key_secret),
    ):
        if secret:
            keys[field] = resolve(settings.dev_tenant, secret)
    return settings.model_copy(update=keys) if keys else settings


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def build_providers(
    settings: Settings, *, environ: Mapping[str, str] | None = None
) -> ModelProviders:
    """Build every provider the settings allow; see the module docstring for precedence.

    ``environ`` (default ``os.environ``) supplies the conventional fallbacks
    ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``ANTHROPIC_API_KEY`` and
    ``ANTHROPIC_BASE_URL``; tests pass a dict.
    """
    env = os.environ if environ is None else environ
    explicit = settings.model_fields_set
    providers: dict[ProviderName, ModelProvider] = {"scripted": ScriptedProvider()}

    # OpenAI-compatible
    openai = openai_endpoint(settings, env)
    if _host(openai.base_url) == OPENAI_HOST and not openai.api_key:
        providers["openai"] = _Unconfigured(
            "openai", "no API key for api.openai.com: set AGENTRUN_OPENAI_API_KEY or OPENAI_API_KEY"
        )
    else:
        providers["openai"] = OpenAICompatProvider(
            base_url=openai.base_url,
            api_key=openai.api_key,
            timeout=settings.model_timeout_seconds,
            json_schema_tools=openai.json_schema_tools,
            schema_format=settings.openai_schema_format,
        )

    # Anthropic
    if "anthropic_base_url" in explicit or not env.get("ANTHROPIC_BASE_URL"):
        anthropic_url, paired = settings.anthropic_base_url, False
    else:
        anthropic_url, paired = env["ANTHROPIC_BASE_URL"], True
    anthropic_key = settings.anthropic_api_key
    if not anthropic_key and (paired or anthropic_url.rstrip("/") == ANTHROPIC_URL):
        anthropic_key = env.get("ANTHROPIC_API_KEY") or None
    if anthropic_key:
        providers["anthropic"] = AnthropicProvider(
            api_key=anthropic_key, base_url=anthropic_url, timeout=settings.model_timeout_seconds
        )
    else:
        providers["anthropic"] = _Unconfigured(
            "anthropic",
            "anthropic model requested but no API key is configured: "
            "set AGENTRUN_ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY)",
        )

    default_model = openai.default_model if settings.default_provider == "openai" else None
    return ModelProviders(
        providers,
        default_provider=settings.default_provider,
        default_model=(default_model or settings.default_model) or None,
        default_tool_choice=settings.tool_choice,
    )
