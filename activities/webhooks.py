"""Webhook delivery: signed POSTs that reach only the destinations the deployment allows.

Signing. A delivery is signed with HMAC-SHA256 over `"<timestamp>.<body>"` using
the deployment's `AGENTRUN_WEBHOOK_SECRET` (never an activity input, so it never
reaches history). Headers sent with every delivery:

- `X-Agentrun-Timestamp`: unix seconds when this attempt was signed;
- `X-Agentrun-Signature`: `v1=<hex hmac>`;
- `X-Agentrun-Event`: the event type; `X-Agentrun-Delivery`: `<run_id>:<seq>`
  (stable across retries, so receivers can de-duplicate).

A receiver verifies by recomputing the HMAC and rejecting timestamps older than a
few minutes (replay protection): :func:`verify`.

Design (why it looks like this): the URL is the tenant's and the worker sits inside
the operator's network, so every attempt

1. applies the URL rules again (`agentrun.webhook_destinations`; runs launched
   before they existed reach this activity too);
2. resolves the host once (:data:`Resolver`; the system's `getaddrinfo` in
   production) and refuses it when *any* address is non-public and not
   allow-listed: a name with one internal address is an internal name, and which
   address a client picks is not ours to bet on;
3. connects to an address it checked (:class:`_PinnedTransport`). The URL keeps its
   host, so the request carries the original `Host` header and TLS sends the
   original name as SNI and verifies the certificate against it, but nothing
   resolves the name a second time: a DNS answer that changes between the check
   and the connection (rebinding) cannot move the connection. Proxies from the
   environment are ignored for the same reason (a proxy resolves names itself);
4. follows no redirect: a 3xx is a final failure (`WebhookRedirected`). The
   receiver asked to go somewhere that was never checked, and asking again will not
   change its mind: point the webhook at the final URL;
5. tells the tenant a coarse outcome only. The error type is one of the constants
   below and its message a fixed sentence: never a resolved address, the status
   code of a failure, the response, or the connection error, which together would
   make deliveries a port scanner of whatever the worker can reach. The worker's
   log keeps the details for the operator.

Outcomes (error type → retried by Temporal?):

    WebhookDestinationRefused  no   the URL breaks a rule, or the host is not public
                                    and not allow-listed
    WebhookRedirected          no   the receiver answered 3xx
    WebhookRejected            no   the receiver answered 4xx other than 408 and 429
    WebhookUnavailable         yes  no DNS answer, no connection, a timeout, 5xx, 408, 429
    WebhookConfigError         no   the deployment has no signing secret

This module must not: follow redirects, resolve a host twice in one attempt, use
proxies from the environment, read a response body, or put an exception's text in
an error a tenant sees (causes are dropped with `from None` for that reason: the
workflow reports the innermost cause of a failed activity).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address

import httpx
from temporalio.exceptions import ApplicationError

from agentrun.contracts import WebhookInput, canonical_json
from agentrun.webhook_destinations import (
    ALLOW_HOSTS_VAR,
    ALLOW_NETWORKS_VAR,
    Destination,
    IPAddress,
    WebhookAllowList,
    parse_destination,
    refusal_message,
)

__all__ = [
    "CONFIG_ERROR",
    "REDIRECTED",
    "REFUSED",
    "REJECTED",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "UNAVAILABLE",
    "IPAddress",
    "Resolver",
    "VettedDestination",
    "WebhookSender",
    "sign",
    "system_resolver",
    "verify",
]

log = logging.getLogger("agentrun.webhooks")

SIGNATURE_HEADER = "X-Agentrun-Signature"
TIMESTAMP_HEADER = "X-Agentrun-Timestamp"

REFUSED = "WebhookDestinationRefused"
REDIRECTED = "WebhookRedirected"
REJECTED = "WebhookRejected"
UNAVAILABLE = "WebhookUnavailable"
CONFIG_ERROR = "WebhookConfigError"

RESOLVE_TIMEOUT_SECONDS = 5.0
"""A resolver slower than this counts as no answer (retried)."""
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
ATTEMPT_DEADLINE_SECONDS = 20.0
"""Connecting and reading the answer's head, all addresses included. With the
resolver's 5 s it stays under `workflows.policies.WEBHOOK_TIMEOUT` (30 s), whose
expiry would not stop this activity (it does not heartbeat) but would start a retry
beside the attempt still running."""
MAX_ADDRESSES_TRIED = 2
"""A dual-stack name gets a second chance on its next address if the first does not
connect; every address it resolved to was checked either way."""

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""Host and port → addresses. Tests pass a stand-in that answers from a table."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`v1=` + hex HMAC-SHA256 of `"<timestamp>." + body`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance: int = 300) -> bool:
    """Receiver side of :func:`sign` (used by tests and documented for users)."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The host's TCP addresses from the system resolver, in its order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ip_address(sockaddr[0])
            if address not in found:
                found.append(address)
    return found


@dataclass(frozen=True)
class VettedDestination:
    """A destination and the addresses it resolved to, every one of them checked."""

    destination: Destination
    addresses: list[IPAddress]


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """Connects to one checked address, whatever the URL's host resolves to by now."""

    def __init__(self, address: IPAddress, server_name: str, tls: ssl.SSLContext) -> None:
        super().__init__(verify=tls, trust_env=False, retries=0)
        self._address = address
        self._server_name = server_name

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # The Host header was set from the URL when the request was built; only the
        # connection's target changes. TLS still names and verifies the URL's host.
        request.url = request.url.copy_with(host=str(self._address))
        if request.url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": self._server_name}
        return await super().handle_async_request(request)


def _refused(message: str) -> ApplicationError:
    return ApplicationError(message, type=REFUSED, non_retryable=True)


class WebhookSender:
    """Signs and POSTs one event to a run's webhook, after the destination checks.

    >>> sender = WebhookSender(secret, WebhookAllowList.of(hosts=(), networks=["10.0.0.0/8"]))
    >>> status = await sender.deliver(webhook_input)  # doctest: +SKIP
    """

    def __init__(
        self,
        secret: str | None,
        allow: WebhookAllowList,
        *,
        resolver: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._secret = secret
        self._allow = allow
        self._resolve = resolver
        # One TLS context for every delivery: loading the CA bundle is the slow part.
        self._tls = (
            verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify)
        )

    async def vet(self, url: str) -> VettedDestination:
        """Apply the URL rules, resolve the host once, and check every address."""
        try:
            destination = parse_destination(url)
        except ValueError as exc:
            raise _refused(f"the webhook url is not allowed: {exc}") from None
        host = destination.host
        if destination.address is not None:  # the tenant wrote the address: naming it is fine
            reason = self._allow.refusal(host, destination.address)
            if reason is not None:
                raise _refused(refusal_message(host, reason))
            return VettedDestination(destination, [destination.address])
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
                addresses = list(await self._resolve(host, destination.port))
        except (OSError, TimeoutError) as exc:
            log.warning("webhook host %s did not resolve: %r", host, exc)
            addresses = []
        if not addresses:
            raise ApplicationError(
                f"webhook host {host} did not resolve; the delivery is retried",
                type=UNAVAILABLE,
            )
        refused = [(a, r) for a in addresses if (r := self._allow.refusal(host, a)) is not None]
        if refused:
            log.warning(
                "webhook host %s refused: it resolves to %s",
                host,
                ", ".join(f"{a} ({r})" for a, r in refused),
            )
            # Not the addresses nor their kind: the tenant learns nothing about what
            # the operator's DNS says beyond "not a public name".
            raise _refused(
                f"webhook host {host} resolves to a non-public address; webhooks go only to "
                f"public addresses unless the operator allow-lists the host ({ALLOW_HOSTS_VAR}) "
                f"or its network ({ALLOW_NETWORKS_VAR})"
            )
        return VettedDestination(destination, addresses)

    async def deliver(self, inp: WebhookInput) -> int:
        """POST `inp.event` to `inp.url`; the receiver's 2xx status, or an `ApplicationError`."""
        if not self._secret:
            raise ApplicationError(
                "the run names a webhook but the deployment has no AGENTRUN_WEBHOOK_SECRET",
                type=CONFIG_ERROR,
                non_retryable=True,
            )
        vetted = await self.vet(inp.url)
        body = canonical_json(
            {
                "run_id": inp.run_id,
                "tenant_id": inp.tenant_id,
                "event": inp.event.model_dump(mode="json"),
            }
        )
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
            "X-Agentrun-Event": inp.event.type.value,
            "X-Agentrun-Delivery": f"{inp.run_id}:{inp.event.seq}",
        }
        try:
            async with asyncio.timeout(ATTEMPT_DEADLINE_SECONDS):
                status = await self._post(vetted, inp.url, body, headers)
        except (httpx.HTTPError, TimeoutError) as exc:
            log.warning("webhook delivery to %s failed: %r", vetted.destination.host, exc)
            raise ApplicationError(
                "the webhook receiver could not be reached; the delivery is retried",
                type=UNAVAILABLE,
            ) from None
        return _accepted(status, vetted.destination.host)

    async def _post(
        self, vetted: VettedDestination, url: str, body: bytes, headers: dict[str, str]
    ) -> int:
        """The status of the first address that connects (the others are not tried)."""
        addresses = vetted.addresses[:MAX_ADDRESSES_TRIED]
        for address in addresses[:-1]:
            with contextlib.suppress(httpx.ConnectError, httpx.ConnectTimeout):
                return await self._post_to(address, vetted.destination.host, url, body, headers)
        return await self._post_to(addresses[-1], vetted.destination.host, url, body, headers)

    async def _post_to(
        self, address: IPAddress, host: str, url: str, body: bytes, headers: dict[str, str]
    ) -> int:
        transport = _PinnedTransport(address, host, self._tls)
        async with (
            httpx.AsyncClient(
                transport=transport, timeout=HTTP_TIMEOUT, follow_redirects=False, trust_env=False
            ) as client,
            client.stream("POST", url, content=body, headers=headers) as resp,
        ):
            return resp.status_code  # the body is never read: a receiver may send anything


def _accepted(status: int, host: str) -> int:
    """`status` when it is a 2xx; otherwise the coarse failure a tenant may see."""
    if 200 <= status < 300:
        return status
    log.warning("webhook receiver %s answered HTTP %d", host, status)
    if 300 <= status < 400:
        raise ApplicationError(
            "the webhook receiver answered with a redirect, and redirects are never "
            "followed; point the webhook at the final URL",
            type=REDIRECTED,
            non_retryable=True,
        )
    if 400 <= status < 500 and status not in (408, 429):
        raise ApplicationError(
            "the webhook receiver rejected the delivery (a 4xx answer); it is not retried",
            type=REJECTED,
            non_retryable=True,
        )
    raise ApplicationError(
        "the webhook receiver is unavailable (a 5xx, 408 or 429 answer); the delivery is retried",
        type=UNAVAILABLE,
    )
