"""The egress broker: the one way a run's tools reach the network, outside the sandbox.

A run's sandbox has no route of its own (`--network none`). A run granted egress
(`RunSpec.egress`) gets it through here, in the worker: the in-container executor
proxies a command's HTTP requests over the attach channel (`sandbox/_channel.py`)
to `EgressSession.handle`, and the `http_request` tool calls `EgressSession.send`
directly. Either way the broker

1. matches the request's host (and its port, when the request names one) against
   the run's rules: default deny, a refused request is a 403 to the tool;
2. checks where the host resolves: only public addresses, unless the operator
   allow-lists the host or network (`AGENTRUN_EGRESS_ALLOW_HOSTS` / `_NETWORKS`; the
   same rules as webhooks, `agentrun.webhook_destinations`), and connects to the
   address it checked (TLS still verifies the host's name);
3. adds the rule's credential (header, query parameter or basic auth), resolving the
   secret by name in the worker, and speaks the rule's scheme upstream (tools send
   plain `http://`; a CONNECT tunnel would carry TLS the broker cannot add a header
   to, so the proxy refuses it);
4. returns the response with the credential (in every form `agentrun.redaction`
   knows) replaced by `[REDACTED:<name>]`, so an upstream that echoes request
   headers does not hand the value to the tool; and
5. records one `EgressAudit` per request (run, step, call, host, secret *name*,
   status), logged here and returned with the tool result for the workflow to emit
   as an `egress.request` event.

This module must not: put a secret value into an audit record, a log line, an
exception or anything it returns; follow redirects (the tool's client does, through
the broker again, so every hop is checked); or pass an upstream error's text on (it
may quote the URL, query included): errors are named by type only.
"""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from agentrun.contracts import DispatchToolInput, EgressAudit, EgressRule
from agentrun.redaction import Redactor, UnredactableValue
from agentrun.webhook_destinations import WebhookAllowList
from sandbox.base import EgressRequest, EgressResponse
from telemetry.tracing import untraced_http

log = logging.getLogger(__name__)

SecretResolver = Callable[[str, str], str]
"""(tenant, secret name) -> the value, resolved in the worker; raises when it cannot."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "host",
    }
)
"""Headers the broker never passes on in either direction (it sets its own framing;
httpx decodes the body, so its encoding no longer applies)."""
TEXT = "text/plain; charset=utf-8"


def _plain(status: int, text: str) -> EgressResponse:
    return EgressResponse(status, [("Content-Type", TEXT)], f"agentrun egress: {text}\n".encode())


@dataclass(frozen=True)
class _Target:
    rule: EgressRule
    host: str
    port: int
    path: str
    query: str


class EgressBroker:
    """The worker's broker: configuration shared by every call's session. Thread-safe.

    >>> broker = EgressBroker(resolve, WebhookAllowList.of([], ["127.0.0.1/32"]))
    >>> session = broker.session(inp)          # one per tool call
    >>> sandbox.exec(..., egress=session.handle); result.egress = session.audits
    """

    def __init__(
        self,
        resolve_secret: SecretResolver | None = None,
        allow: WebhookAllowList | None = None,
        *,
        timeout_s: float = 30.0,
        max_response_bytes: int = 8 << 20,
    ) -> None:
        self._resolve = resolve_secret
        self._allow = allow or WebhookAllowList()
        self._timeout_s = timeout_s
        self._max_response = max_response_bytes

    def session(self, inp: DispatchToolInput) -> EgressSession:
        return EgressSession(self, inp)

    def secret(self, tenant: str, name: str) -> str:
        """A granted secret's value (for env injection too); raises `EgressSecretError`."""
        if self._resolve is None:
            raise EgressSecretError(f"no secret store is configured to resolve {name!r}")
        try:
            return self._resolve(tenant, name)
        except Exception as exc:
            # The store's message names the secret, never the value; keep the type only.
            raise EgressSecretError(
                f"secret {name!r} could not be resolved ({type(exc).__name__})"
            ) from None


class EgressSecretError(Exception):
    """A granted secret could not be resolved (not found, or the store is down)."""


class EgressSession:
    """One tool call's view of the broker: its rules, its credentials, its audit."""

    def __init__(self, broker: EgressBroker, inp: DispatchToolInput) -> None:
        self._broker = broker
        self._inp = inp
        self.audits: list[EgressAudit] = []

    # ------------------------------------------------------------------ entry points

    def handle(self, request: EgressRequest) -> EgressResponse:
        """A proxied request from the sandbox (never raises)."""
        return self.send(request.method, request.url, request.headers, request.body)

    def send(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> EgressResponse:
        """Check, inject, perform and audit one request; the answer for the tool."""
        method = method.upper()
        host, port = _host_port(url)
        audit = EgressAudit(
            run_id=self._inp.run_id,
            step=self._inp.step,
            call_id=self._inp.call.id,
            tool=self._inp.call.name,
            method=method[:16],
            host=host[:253] or "?",
            port=port,
            allowed=False,
        )
        try:
            response = self._send(method, url, list(headers), body, audit)
        except Exception as exc:  # never leave the tool without an answer
            log.exception("egress broker failed")
            audit.error = f"broker error: {type(exc).__name__}"
            response = _plain(502, audit.error)
        self.audits.append(audit)
        log.info(
            "egress run=%s step=%s call=%s %s %s:%s allowed=%s secret=%s status=%s error=%s",
            audit.run_id,
            audit.step,
            audit.call_id,
            audit.method,
            audit.host,
            audit.port,
            audit.allowed,
            audit.secret,
            audit.status,
            audit.error,
        )
        return response

    # ------------------------------------------------------------------ the steps

    def _send(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        audit: EgressAudit,
    ) -> EgressResponse:
        target = self._match(url)
        if target is None:
            audit.error = "host not in the run's egress allow-list"
            return _plain(403, f"{audit.host} is not in this run's egress allow-list")
        audit.port = target.port
        address, refused = self._address(target.host, target.port)
        if refused is not None:
            audit.error = refused
            return _plain(403, refused)
        rule = target.rule
        scrub = Redactor()
        out_headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        query = target.query
        if rule.inject is not None:
            inj = rule.inject
            audit.secret = inj.secret
            try:
                value = self._broker.secret(self._inp.tenant_id, inj.secret)
            except EgressSecretError as exc:
                audit.error = str(exc)
                return _plain(502, str(exc))
            rendered = inj.template.replace("{value}", value)
            try:
                # Every form of the value (base64 at any offset, URL, hex, …), as E redacts.
                scrub = Redactor([(inj.secret, value), (inj.secret, rendered)])
            except UnredactableValue:
                audit.error = f"secret {inj.secret!r} is too short to inject safely"
                return _plain(502, audit.error)
            if inj.header is not None:
                name = inj.header.lower()
                out_headers = [(k, v) for k, v in out_headers if k.lower() != name]
                out_headers.append((inj.header, rendered))
            elif inj.query is not None:
                pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)]
                pairs = [(k, v) for k, v in pairs if k != inj.query] + [(inj.query, rendered)]
                query = urlencode(pairs)
            else:
                token = basic_token(inj.basic_username or "", value)
                out_headers = [(k, v) for k, v in out_headers if k.lower() != "authorization"]
                out_headers.append(("Authorization", f"Basic {token}"))
        audit.allowed = True
        return self._perform(method, target, address, out_headers, query, body, scrub, audit)

    def _match(self, url: str) -> _Target | None:
        try:
            parts = urlsplit(url)
            explicit = parts.port
        except ValueError:
            return None
        if parts.scheme not in ("http", "https") or parts.username or parts.password:
            return None
        host = (parts.hostname or "").rstrip(".").lower()
        for rule in self._inp.egress:
            if rule.host != host:
                continue
            if explicit is not None and explicit != rule.effective_port:
                continue
            if parts.scheme == "https" and rule.scheme != "https":
                continue
            return _Target(rule, host, rule.effective_port, parts.path or "/", parts.query)
        return None

    def _address(self, host: str, port: int) -> tuple[str, str | None]:
        """The address to connect to, checked; or why the host is refused (a sentence)."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return "", f"{host} does not resolve"
        addresses = [ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        for address in addresses:
            reason = self._broker._allow.refusal(host, address)
            if reason is not None:
                return "", (
                    f"{host} resolves to {reason}; egress goes only to public addresses "
                    "unless the operator allow-lists the host (AGENTRUN_EGRESS_ALLOW_HOSTS) "
                    "or its network (AGENTRUN_EGRESS_ALLOW_NETWORKS)"
                )
        first = addresses[0]
        return (f"[{first}]" if isinstance(first, IPv6Address) else str(first)), None

    def _perform(
        self,
        method: str,
        target: _Target,
        address: str,
        headers: list[tuple[str, str]],
        query: str,
        body: bytes,
        scrub: Redactor,
        audit: EgressAudit,
    ) -> EgressResponse:
        rule = target.rule
        # Connect to the address just checked (no second lookup a rebinding DNS server
        # could answer differently); Host and TLS's SNI and name check keep the name.
        url = f"{rule.scheme}://{address}:{target.port}{target.path}"
        if query:
            url += "?" + query
        default = (rule.scheme == "https" and target.port == 443) or (
            rule.scheme == "http" and target.port == 80
        )
        host_header = target.host if default else f"{target.host}:{target.port}"
        limit = self._broker._max_response
        try:
            with (
                # A tool's destination sees what it sent (and the credential), never
                # this deployment's trace context (`traceparent`) or an httpx span.
                untraced_http(),
                httpx.Client(timeout=self._broker._timeout_s, follow_redirects=False) as client,
                client.stream(
                    method,
                    url,
                    headers=[*headers, ("Host", host_header)],
                    content=body or None,
                    extensions={"sni_hostname": target.host},
                ) as upstream,
            ):
                data = bytearray()
                for chunk in upstream.iter_bytes():
                    data += chunk
                    if len(data) > limit:
                        audit.status = upstream.status_code
                        audit.error = f"response over {limit} bytes"
                        return _plain(502, audit.error)
                audit.status = upstream.status_code
                out = [
                    (k, scrub.redact(v))
                    for k, v in upstream.headers.multi_items()
                    if k.lower() not in HOP_BY_HOP
                ]
                return EgressResponse(upstream.status_code, out, scrub.redact_bytes(bytes(data)))
        except httpx.TimeoutException as exc:
            audit.error = f"upstream timed out ({type(exc).__name__})"
            return _plain(504, audit.error)
        except httpx.HTTPError as exc:
            audit.error = f"upstream failed ({type(exc).__name__})"
            return _plain(502, audit.error)


def _host_port(url: str) -> tuple[str, int | None]:
    """The host and explicit port a URL names, for the audit (empty when unparsable)."""
    try:
        parts = urlsplit(url)
        return (parts.hostname or "").rstrip(".").lower(), parts.port
    except ValueError:
        return "", None


def basic_token(username: str, value: str) -> str:
    """What basic auth sends for `username`/`value` (tests check the server saw it)."""
    return base64.b64encode(f"{username}:{value}".encode()).decode()
