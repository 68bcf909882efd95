"""From deployment settings to the providers the `call_model` activity uses.

``build_providers(settings)`` is called once where the worker starts (settings are
read at the edges) and its result is injected into the activity. It never fails
for a provider that is merely *unconfigured*: a run that asks for it gets a
non-retryable ``ModelConfigError`` telling the operator what to set, while runs
on other providers keep working.

Where the values come from (first match wins):

* OpenAI-compatible base URL: ``AGENTRUN_OPENAI_BASE_URL`` → ``OPENAI_BASE_URL`` →
  the embedded model (``http://127.0.0.1:8081/v1``).
* OpenAI API key: ``AGENTRUN_OPENAI_API_KEY`` → ``OPENAI_API_KEY``, the latter
  only when the base URL is OpenAI's own or came from ``OPENAI_BASE_URL``: the
  conventional variables travel together, so a key exported for OpenAI is never
  sent to some other server configured through ``AGENTRUN_OPENAI_BASE_URL``.
* Anthropic base URL: ``AGENTRUN_ANTHROPIC_BASE_URL`` → ``ANTHROPIC_BASE_URL`` →
  ``https://api.anthropic.com``.
* Anthropic API key: ``AGENTRUN_ANTHROPIC_API_KEY`` → ``ANTHROPIC_API_KEY`` (same
  pairing rule as OpenAI's).
* Model name: ``ModelRef.name`` → ``AGENTRUN_DEFAULT_MODEL``, the latter only for
  the default provider (a smollm2 default means nothing to Anthropic).

Keys are held by the provider clients only; nothing here logs or returns them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Literal
from urllib.parse import urlsplit

from activities.models.anthropic import AnthropicProvider
from activities.models.base import ModelProvider, ModelReply, ModelRequest
from activities.models.errors import config_error
from activities.models.openai_compat import OpenAICompatProvider
from activities.models.scripted import ScriptedProvider
from agentrun.config import Settings
from agentrun.contracts import ModelRef

__all__ = ["ModelProviders", "ProviderName", "build_providers"]

ProviderName = Literal["openai", "anthropic", "scripted"]

OPENAI_HOST = "api.openai.com"
ANTHROPIC_URL = "https://api.anthropic.com"


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
    ) -> None:
        self._providers = dict(providers)
        self.default_provider: ProviderName = default_provider
        self.default_model = default_model

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
        resolved = request.model.model_copy(update={"provider": name, "name": model})
        return await self.provider(request.model).complete(replace(request, model=resolved))

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
    if "openai_base_url" in explicit or not env.get("OPENAI_BASE_URL"):
        openai_url, paired = settings.openai_base_url, False
    else:
        openai_url, paired = env["OPENAI_BASE_URL"], True
    openai_key = settings.openai_api_key
    if not openai_key and (paired or _host(openai_url) == OPENAI_HOST):
        openai_key = env.get("OPENAI_API_KEY") or None
    if _host(openai_url) == OPENAI_HOST and not openai_key:
        providers["openai"] = _Unconfigured(
            "openai", "no API key for api.openai.com: set AGENTRUN_OPENAI_API_KEY or OPENAI_API_KEY"
        )
    else:
        providers["openai"] = OpenAICompatProvider(
            base_url=openai_url,
            api_key=openai_key,
            timeout=settings.model_timeout_seconds,
            json_schema_tools=settings.openai_json_schema_tools,
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

    return ModelProviders(
        providers,
        default_provider=settings.default_provider,
        default_model=settings.default_model or None,
    )
