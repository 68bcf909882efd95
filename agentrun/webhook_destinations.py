"""Where a webhook may go: the URL rules and the address rules, for launch and delivery.

A webhook URL comes from a tenant, while the worker that posts to it sits inside
the operator's network, next to Temporal, the Docker API and the cloud metadata
service. Unchecked, the URL turns the worker into a proxy into that network (SSRF)
and the delivery outcome into a port scanner. The rules, in one place:

- **URL rules** (:func:`parse_destination`, run by `WebhookSpec` at launch and again
  at delivery): `http` or `https` only; no credentials (`user:pass@`); a port from 1
  to 65535; a host that is a valid DNS name, or an IP address written plainly. IPv4
  is four decimal octets: WHATWG URL parsing reads a host whose last label is a
  number as IPv4, so `2130706433`, `0x7f000001`, `0177.0.0.1` and `127.1` all mean
  127.0.0.1 to browsers and resolvers; they are refused, not guessed at. IPv6 forms
  that embed an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64)
  and zone ids are refused too (write the IPv4 address), as are addresses that are
  never a destination (unspecified, multicast, broadcast).
- **Address rules** (:func:`address_refusal`): only globally routable unicast
  addresses are public. Loopback, private, link-local (cloud metadata lives at
  169.254.169.254), shared (100.64/10), reserved and documentation ranges are not,
  and an IPv6 address that embeds an IPv4 one is judged by what it embeds.
- **The operator's allow-list** (:class:`WebhookAllowList`, from
  `AGENTRUN_WEBHOOK_ALLOW_HOSTS` and `AGENTRUN_WEBHOOK_ALLOW_NETWORKS`): an exact host
  name admits every address it resolves to; a network admits the addresses in it.
  Unspecified and multicast addresses are refused even when allow-listed.

At launch only what the URL itself says can be checked (:func:`launch_refusal`: an
IP literal, or a `localhost` name); host names are checked at delivery, after DNS,
by `activities.webhooks`, which then connects to the address it checked.

This module must not: resolve names, open connections or read the environment (the
API and the worker pass the allow-list from their settings). The workflow sandbox
runs :func:`parse_destination` whenever it decodes a run's spec, so it stays pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import (
    AddressValueError,
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_network,
)
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from agentrun.config import Settings

__all__ = [
    "ALLOW_HOSTS_VAR",
    "ALLOW_NETWORKS_VAR",
    "Destination",
    "IPAddress",
    "IPNetwork",
    "WebhookAllowList",
    "address_refusal",
    "allow_list_host",
    "launch_refusal",
    "parse_destination",
    "refusal_message",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

ALLOW_HOSTS_VAR = "AGENTRUN_WEBHOOK_ALLOW_HOSTS"
ALLOW_NETWORKS_VAR = "AGENTRUN_WEBHOOK_ALLOW_NETWORKS"

_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x20\x7f\\]")
_NETLOC = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<name>[^:\[\]]*))(?::(?P<port>[^:]*))?$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMBER_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_BROADCAST = IPv4Address("255.255.255.255")
_IPV4_COMPATIBLE = IPv6Network("::/96")
_NAT64 = (IPv6Network("64:ff9b::/96"), IPv6Network("64:ff9b:1::/48"))
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Destination:
    """A webhook URL's scheme, host and port, after the URL rules."""

    scheme: str
    host: str
    """Lower case, without a trailing dot; an IP address in its canonical form."""
    port: int
    address: IPAddress | None
    """The host's address when the URL names one (an IP literal)."""


def parse_destination(url: str) -> Destination:
    """Apply the URL rules; the `ValueError` says which rule `url` breaks.

    >>> parse_destination("https://Hooks.Example.com./agentrun").host
    'hooks.example.com'
    """
    if _UNSAFE_CHARACTERS.search(url):
        raise ValueError("webhook url must not contain spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("webhook url must be an absolute http(s) URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"webhook url must use http or https, not {scheme or 'no scheme'!r}")
    if "@" in parts.netloc:
        raise ValueError(
            "webhook url must not carry credentials (user:password@host); "
            "receivers authenticate deliveries by their signature headers"
        )
    netloc = _NETLOC.match(parts.netloc)
    if netloc is None or not (netloc["v6"] or netloc["name"]):
        raise ValueError("webhook url must be an absolute http(s) URL with a host")
    port = _port(netloc["port"], scheme)
    address: IPAddress | None
    if netloc["v6"] is not None:
        host, address = _ipv6_literal(netloc["v6"])
    else:
        host, address = _name_or_ipv4(netloc["name"].lower())
    if address is not None and (
        address.is_unspecified or address.is_multicast or address == _BROADCAST
    ):
        raise ValueError(
            f"webhook url host {host} is not a destination (an unspecified, multicast "
            "or broadcast address)"
        )
    return Destination(scheme=scheme, host=host, port=port, address=address)


def _port(text: str | None, scheme: str) -> int:
    if text is None:
        return _DEFAULT_PORTS[scheme]
    if not _PORT.match(text) or not 1 <= int(text) <= 65535:
        raise ValueError("webhook url port must be a number from 1 to 65535")
    return int(text)


def _ipv6_literal(text: str) -> tuple[str, IPAddress]:
    if "%" in text:
        raise ValueError("webhook url must not name an IPv6 zone (`%…`)")
    try:
        address = IPv6Address(text)
    except AddressValueError:
        raise ValueError(f"webhook url host [{text}] is not a valid IPv6 address") from None
    if _embeds_ipv4(address):
        raise ValueError(
            f"webhook url host [{text}] embeds an IPv4 address in an IPv6 form "
            "(IPv4-mapped, IPv4-compatible, 6to4, Teredo or NAT64); write the IPv4 address"
        )
    return str(address), address


def _name_or_ipv4(name: str) -> tuple[str, IPAddress | None]:
    labels = name.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # one trailing dot: the fully qualified form of the same name
    if _NUMBER_LABEL.match(labels[-1]):
        try:
            address = IPv4Address(name)
        except AddressValueError:
            raise ValueError(
                f"webhook url host {name!r} reads as an IPv4 address in an unusual form "
                "(decimal, octal, hex or shortened); write four decimal octets, "
                "like 203.0.113.7"
            ) from None
        return str(address), address
    if not name.isascii():
        raise ValueError(f"webhook url host {name!r} is not ASCII; use its punycode (xn--) form")
    host = ".".join(labels)
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"webhook url host {name!r} is not a valid host name")
    return host, None


def _embeds_ipv4(address: IPv6Address) -> bool:
    return (
        address.ipv4_mapped is not None
        or address.sixtofour is not None
        or address.teredo is not None
        or any(address in net for net in _NAT64)
        or (address in _IPV4_COMPATIBLE and int(address) > 1)  # not :: nor ::1
    )


def address_refusal(address: IPAddress) -> str | None:
    """Why `address` is not public (a phrase naming the range), or `None` if it is.

    >>> address_refusal(IPv4Address("169.254.169.254"))
    'a link-local address (where cloud metadata services answer)'
    """
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address_refusal(address.ipv4_mapped)
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, IPv6Address) and _embeds_ipv4(address):
        return "an IPv6 form that embeds an IPv4 address"
    if address.is_reserved:
        return "an address in a reserved range"
    if address.is_private:
        return "a private-network address"
    if not address.is_global:
        return "an address that is not globally routable"
    return None


def allow_list_host(value: str) -> str:
    """An `AGENTRUN_WEBHOOK_ALLOW_HOSTS` entry, normalised (lower case, no trailing dot)."""
    problem = ValueError(
        f"{value!r} is not a host name: list exact names here (no wildcards, ports, paths "
        f"or schemes) and put addresses in {ALLOW_NETWORKS_VAR} (e.g. 10.0.0.5/32)"
    )
    if not value or any(c in value for c in "/?#@:[]*"):
        raise problem
    try:
        destination = parse_destination(f"http://{value}/")
    except ValueError:
        raise problem from None
    if destination.address is not None:
        raise problem
    return destination.host


@dataclass(frozen=True)
class WebhookAllowList:
    """The operator's exceptions to "public destinations only"."""

    hosts: frozenset[str] = frozenset()
    """Exact host names (normalised); every address they resolve to is admitted."""
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, hosts: Iterable[str], networks: Iterable[str | IPNetwork]) -> WebhookAllowList:
        return cls(
            hosts=frozenset(allow_list_host(h) for h in hosts),
            networks=tuple(ip_network(n, strict=False) for n in networks),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookAllowList:
        return cls.of(settings.webhook_allow_hosts, settings.webhook_allow_networks)

    def admits_address(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            a in net for a in candidates for net in self.networks if a.version == net.version
        )

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why a delivery to `host` at `address` is refused, or `None` if it may go."""
        plain = address.ipv4_mapped if isinstance(address, IPv6Address) else None
        never = (plain or address).is_unspecified or (plain or address).is_multicast
        if not never and (host in self.hosts or self.admits_address(address)):
            return None
        return address_refusal(address)


def refusal_message(host: str, reason: str) -> str:
    """The tenant-facing sentence for a refused destination (it names the settings)."""
    return (
        f"webhook host {host} is {reason}; webhooks go only to public addresses unless "
        f"the operator allow-lists the host ({ALLOW_HOSTS_VAR}) or its network "
        f"({ALLOW_NETWORKS_VAR})"
    )


def launch_refusal(url: str, allow: WebhookAllowList) -> str | None:
    """What the API answers (422) when a spec's webhook URL cannot be delivered to.

    Only what the URL itself says is checked here (the URL rules, an IP literal, a
    `localhost` name); other names are checked after DNS, at delivery.
    """
    try:
        destination = parse_destination(url)
    except ValueError as exc:
        return str(exc)
    if destination.address is not None:
        reason = allow.refusal(destination.host, destination.address)
    elif _is_localhost(destination.host) and destination.host not in allow.hosts:
        reason = "a loopback address"  # RFC 6761: `localhost` names always resolve there
    else:
        reason = None
    return None if reason is None else refusal_message(destination.host, reason)


def _is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")
