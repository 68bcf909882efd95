"""`/codec`: the codec server, so operators read encrypted payloads (system admins only).

    POST /codec/decode   {"payloads": [{"metadata": {"encoding": "YmluYXJ5L2VuY3J5cHRlZA==",
                                                    "encryption-key-id": "a2V5LTI…"},
                                       "data": "…"}]}
                         → the same shape, each payload decrypted
    POST /codec/encode   → the same shape, each payload encrypted with the current key

Temporal's remote codec protocol: a `Payloads` protobuf as JSON (metadata values
and data are base64), the endpoint named by its last path segment. The Temporal
Web UI (its "codec server" setting) and `temporal … --codec-endpoint
http://<api>/codec --codec-auth "Bearer <key>"` call it; both send `X-Namespace`,
which is ignored (the keys are the deployment's, not a namespace's).

Design (why it looks like this):

* **System admins only.** The keys decrypt every tenant's payloads, so the routes
  need the `admin` permission *and* a key of the system tenant (the same rule as
  tenant management, `api.routes.admin.is_system_admin`); another tenant's admin
  gets 403.
* **Cross-site for the Web UI only**: the UI calls from the browser, on its own
  origin. `AGENTRUN_CODEC_CORS_ORIGINS` (default the dev server's UI,
  `http://127.0.0.1:8233` and `http://localhost:8233`) are let through the
  browser guard's Origin check and get CORS answers (preflight included) for
  these two routes and nothing else (`CodecCors`, installed by `api.app`).
* **Not audited**: neither route changes state; reading a run's events is not
  audited either. Both routes are POSTs because the protocol says so.
* **Not rate limited** (`Rule.rate_limited`): `temporal workflow show` calls the
  codec for each event with payloads, about five times per run step, so a key's
  burst would cut off the history of any run longer than a few dozen steps.
* **Unencrypted payloads pass through** `decode` unchanged (runs recorded before
  encryption); a payload under a key the file no longer lists is a 422 naming
  the key id, never a guess.

This module must not: log a payload or a key, or answer when encryption is off
(404: there are no keys to use).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payloads

from agentrun.payload_codec import EncryptionCodec, KeyFileError, PayloadDecryptError
from api.deps import CodecDep, PrincipalDep, SettingsDep
from api.errors import BadRequest, Forbidden, NotFound, Unavailable
from api.routes.admin import is_system_admin

__all__ = ["CODEC_PATH_PREFIX", "CODEC_REQUEST_HEADERS", "CodecCors", "router"]

CODEC_PATH_PREFIX = "/codec/"
CODEC_REQUEST_HEADERS = ["Authorization", "Content-Type", "X-Namespace"]
"""What the Web UI and the CLI send (`Authorization` only when configured to)."""

router = APIRouter(prefix="/codec", tags=["codec"])


class EncodedPayload(BaseModel):
    """One `temporal.api.common.v1.Payload` in protobuf JSON."""

    model_config = ConfigDict(extra="allow")  # further Payload fields pass through

    metadata: dict[str, str] = Field(
        default_factory=dict, description="Metadata values, base64 (`encoding`, …)"
    )
    data: str = Field(default="", description="The payload's bytes, base64")


class CodecPayloads(BaseModel):
    """A `temporal.api.common.v1.Payloads` in protobuf JSON."""

    payloads: list[EncodedPayload] = Field(default_factory=list)


CODEC_PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: {"description": "Not an admin key of the system tenant, or a foreign `Origin`"},
    404: {"description": "Payload encryption is off (`AGENTRUN_PAYLOAD_ENCRYPTION=off`)"},
    503: {"description": "The payload key file is missing or malformed"},
}
UNDECRYPTABLE = (
    "Not a `Payloads` message, or a payload under a key id the key file does not list "
    "(`undecryptable-payload`, naming the key id)"
)


class UndecryptablePayload(BadRequest):
    kind = "undecryptable-payload"
    title = "Undecryptable payload"


async def _codec(
    source: CodecDep, settings: SettingsDep, principal: PrincipalDep
) -> EncryptionCodec:
    if not is_system_admin(principal, settings):
        raise Forbidden(
            "the codec server decrypts every tenant's payloads: only an admin of the "
            f"system tenant ({settings.dev_tenant!r}) may use it"
        )
    if not settings.payload_encryption:
        raise NotFound(
            "payload encryption is off (AGENTRUN_PAYLOAD_ENCRYPTION=off): payloads are "
            "stored as they are, there is nothing to decode"
        )
    try:
        return await source.get()
    except KeyFileError as exc:
        raise Unavailable(f"the codec server has no keys: {exc}") from None


_BASE64 = re.compile(r"^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2,3}={0,2})?$")
"""Standard or URL-safe base64, padded or not (protobuf JSON accepts all four)."""


def _parse(body: CodecPayloads) -> Payloads:
    # Protobuf's parser skips what is not base64; a value it silently dropped would
    # come back as an empty payload instead of an error.
    for n, payload in enumerate(body.payloads):
        fields = {f"metadata.{k}": v for k, v in payload.metadata.items()} | {"data": payload.data}
        bad = [name for name, value in fields.items() if not _BASE64.match(value)]
        if bad:
            raise BadRequest(f"payloads[{n}]: {', '.join(bad)} must be base64")
    try:
        return json_format.ParseDict(body.model_dump(), Payloads(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise BadRequest(f"not a Payloads message in protobuf JSON: {exc}") from None


def _render(payloads: Payloads) -> CodecPayloads:
    document: dict[str, Any] = json_format.MessageToDict(payloads)
    return CodecPayloads.model_validate({"payloads": document.get("payloads", [])})


@router.post(
    "/decode",
    response_model=CodecPayloads,
    summary="Decrypt payloads (Temporal remote codec protocol; system admins)",
    responses={**CODEC_PROBLEMS, 422: {"description": UNDECRYPTABLE}},
)
async def decode(
    body: CodecPayloads, source: CodecDep, settings: SettingsDep, principal: PrincipalDep
) -> CodecPayloads:
    codec = await _codec(source, settings, principal)
    payloads = _parse(body)
    try:
        decoded = await codec.decode(payloads.payloads)
    except PayloadDecryptError as exc:
        raise UndecryptablePayload(str(exc)) from None
    return _render(Payloads(payloads=decoded))


@router.post(
    "/encode",
    response_model=CodecPayloads,
    summary="Encrypt payloads with the current key (Temporal remote codec protocol; system admins)",
    responses=CODEC_PROBLEMS,
)
async def encode(
    body: CodecPayloads, source: CodecDep, settings: SettingsDep, principal: PrincipalDep
) -> CodecPayloads:
    codec = await _codec(source, settings, principal)
    payloads = _parse(body)
    return _render(Payloads(payloads=await codec.encode(payloads.payloads)))


class CodecCors:
    """CORS for the codec routes only, for the Web UI's origins (module docstring).

    Outside the app-wide CORS middleware: it answers the preflights of the codec
    paths itself and sets the allow headers on their answers (replacing any the
    app-wide one set), and hands every other path on untouched."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["POST"],
            allow_headers=CODEC_REQUEST_HEADERS,
            # The UI's "include cross-origin credentials" option sends cookies.
            allow_credentials=True,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(CODEC_PATH_PREFIX):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
