"""Webhook destinations: no internal address is reachable, and nothing leaks back.

Every refusal here is proved without sending a packet beyond loopback: URL rules
are pure checks, and the resolver the sender uses at delivery is injected (a fake
DNS answer that maps `hooks.example.test` to whatever the test needs). Anything
that really connects goes to a receiver this test runs on 127.0.0.1 or ::1, which
counts what it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.webhooks import (
    REDIRECTED,
    REFUSED,
    REJECTED,
    UNAVAILABLE,
    IPAddress,
    WebhookSender,
    verify,
)
from agentrun.config import ConfigError, load_settings
from agentrun.contracts import (
    RunFinishedPayload,
    RunStatus,
    TerminalReason,
    WebhookDeliveredPayload,
    WebhookInput,
    WebhookSpec,
    new_event,
)
from agentrun.webhook_destinations import (
    WebhookAllowList,
    address_refusal,
    launch_refusal,
    parse_destination,
)
from tests.api_fixtures import (
    _Server,
    admin_headers,
    api_settings,
    finish_turn,
    read_body,
    scripted,
    serve_api,
    wait_until,
)
from tests.model_fixtures import free_port
from tests.workflow_harness import (
    all_events,
    finish,
    payloads,
    running_worker,
    scripted_spec,
    start_run,
)

SECRET = "webhook-unit-test-secret"  # a test key, not a credential
LOOPBACK = WebhookAllowList.of(hosts=(), networks=["127.0.0.1/32"])
NOTHING_ALLOWED = WebhookAllowList.of(hosts=(), networks=())


# ------------------------------------------------------------------ helpers


class FakeDns:
    """A resolver stand-in: answers from a table and counts the questions.

    `answers[host]` is a list of answers; the n-th question about a host gets the
    n-th answer (the last one repeats), which is how a rebinding DNS server behaves.
    """

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self._answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.asked.append(host)
        given = self._answers[host]
        answer = given[min(len(self.asked) - 1, len(given) - 1)]
        return [ipaddress.ip_address(a) for a in answer]


def dns(host: str, *addresses: str) -> FakeDns:
    return FakeDns({host: [list(addresses)]})


def hook_input(url: str) -> WebhookInput:
    event = new_event(
        7,
        dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        RunFinishedPayload(
            status=RunStatus.COMPLETED, reason=TerminalReason.COMPLETED, final_answer="hi"
        ),
    )
    return WebhookInput(run_id="run-1", tenant_id="t1", url=url, event=event)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A loopback HTTP receiver that records every request it gets."""

    host: str
    port: int
    status: int = 204
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.got.append(Received(scope["path"], headers, body))
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"receiver says hello"})


@contextlib.asynccontextmanager
async def receiving(
    receiver: Receiver, tls: tuple[Path, Path] | None = None
) -> AsyncIterator[Receiver]:
    """Serve `receiver` while inside (over TLS with `tls`: certificate and key files)."""
    config = uvicorn.Config(
        receiver,
        host=receiver.host,
        port=receiver.port,
        log_level="warning",
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started or task.done(), timeout=10)
        assert server.started, "the loopback receiver did not start"
        yield receiver
    finally:
        server.should_exit = True
        await task


async def refusal(sender: WebhookSender, url: str) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await sender.deliver(hook_input(url))
    return caught.value


# ------------------------------------------------ launch: the spec's URL rules


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://user:pass@hooks.example.com/x", "credentials"),
        ("http://user@hooks.example.com/x", "credentials"),
        ("ftp://hooks.example.com/x", "http or https"),
        ("gopher://127.0.0.1:7233/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http://2130706433/", "four decimal octets"),
        ("http://0x7f000001/", "four decimal octets"),
        ("http://0177.0.0.1/", "four decimal octets"),
        ("http://127.1/", "four decimal octets"),
        ("http://127.0.0.01/", "four decimal octets"),
        ("http://1.2.3.4./", "four decimal octets"),
        ("http://0.0.0.0:7233/", "not a destination"),
        ("http://[::]/", "not a destination"),
        ("http://224.0.0.1/", "not a destination"),
        ("http://[::ffff:127.0.0.1]/", "embeds an IPv4 address"),
        ("http://[::ffff:a9fe:a9fe]/", "embeds an IPv4 address"),
        ("http://[::127.0.0.1]/", "embeds an IPv4 address"),
        ("http://[64:ff9b::a00:5]/", "embeds an IPv4 address"),
        ("http://[2002:a00:5::1]/", "embeds an IPv4 address"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://hooks.example.com\\@127.0.0.1/", "backslash"),
        ("http://hooks.example.com:0/", "port"),
        ("http://hooks.example.com:99999/", "port"),
        ("http://hooks..example.com/", "host name"),
        ("http://hööks.example.com/", "punycode"),
    ],
)
def test_launch_refuses_a_webhook_url_that_breaks_a_destination_rule(url: str, rule: str) -> None:
    problem = launch_refusal(url, NOTHING_ALLOWED)
    assert problem is not None and rule in problem
    with pytest.raises(ValueError) as caught:
        parse_destination(url)  # and delivery refuses it again, by the same rules
    assert rule in str(caught.value)


def test_the_spec_stays_as_loose_as_old_workflows_need_it() -> None:
    # Runs started under older rules decode their spec again inside the workflow.
    assert WebhookSpec(url="http://user:pass@127.1:7233/").url.startswith("http://user")
    with pytest.raises(ValidationError):
        WebhookSpec(url="gopher://hooks.example.com/")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/agentrun",
        "https://hooks.example.com:8443/a/b?c=d",
        "http://HOOKS.Example.COM./x",
        "http://203.0.113.7/x",
        "http://[2606:4700:4700::1111]:8080/x",
        # Non-public literals pass the URL rules: the deployment's allow-list decides.
        "http://127.0.0.1:8080/hook",
        "http://localhost:8080/hook",
    ],
)
def test_the_url_rules_accept_an_ordinary_webhook_url(url: str) -> None:
    assert WebhookSpec(url=url).url == url
    parse_destination(url)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1:7233/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.10/", "private"),
        ("http://[fd00:ec2::254]/", "private"),
        ("http://100.100.100.200/", "not globally routable"),
        ("http://240.0.0.1/", "reserved"),
        ("http://localhost:8080/", "loopback"),
        ("http://api.localhost/", "loopback"),
    ],
)
def test_launch_refuses_a_non_public_destination_naming_the_rule(url: str, rule: str) -> None:
    problem = launch_refusal(url, NOTHING_ALLOWED)
    assert problem is not None and rule in problem
    assert "AGENTRUN_WEBHOOK_ALLOW_" in problem


def test_launch_accepts_public_and_allow_listed_destinations() -> None:
    allow = WebhookAllowList.of(hosts=["localhost"], networks=["10.0.0.0/8", "127.0.0.1/32"])
    for url in (
        "https://hooks.example.com/x",
        "http://8.8.8.8/x",
        "http://10.9.8.7:8080/x",
        "http://127.0.0.1:7233/x",
        "http://localhost/x",
    ):
        assert launch_refusal(url, allow) is None, url
    assert launch_refusal("http://127.0.0.2/x", allow) is not None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.5",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:10.0.0.5",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:5",
        "2002:a00:5::1",
        "ff02::1",
    ],
)
def test_every_non_public_address_has_a_refusal_reason(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111"])
def test_public_addresses_are_not_refused(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


# --------------------------------------------- delivery: resolve, check, refuse


@pytest.mark.parametrize(
    "answer",
    [
        ["10.0.0.5"],
        ["169.254.169.254"],
        ["127.0.0.1"],
        ["::ffff:10.0.0.5"],
        ["64:ff9b::a9fe:a9fe"],
        ["8.8.8.8", "10.0.0.5"],  # one bad address is enough
        ["2606:4700:4700::1111", "::1"],
    ],
)
async def test_delivery_refuses_a_host_that_resolves_to_a_non_public_address(
    answer: list[str],
) -> None:
    resolver = dns("hooks.example.test", *answer)
    sender = WebhookSender(SECRET, NOTHING_ALLOWED, resolver=resolver)
    with pytest.raises(ApplicationError) as caught:
        await sender.vet("https://hooks.example.test/hook")
    err = caught.value
    assert err.type == REFUSED and err.non_retryable
    assert "AGENTRUN_WEBHOOK_ALLOW_" in err.message
    for address in answer:  # the tenant never learns what the name resolved to
        assert address not in err.message
    assert resolver.asked == ["hooks.example.test"]


async def test_delivery_refuses_a_non_public_literal_without_resolving() -> None:
    resolver = dns("unused.example.test", "8.8.8.8")
    sender = WebhookSender(SECRET, NOTHING_ALLOWED, resolver=resolver)
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:7233/",
        "http://10.0.0.5/",
    ):
        with pytest.raises(ApplicationError) as caught:
            await sender.vet(url)
        assert caught.value.type == REFUSED and caught.value.non_retryable
    assert resolver.asked == []


async def test_delivery_refuses_urls_the_spec_would_refuse() -> None:
    # Runs launched before the URL rules existed still reach the activity with them.
    sender = WebhookSender(SECRET, LOOPBACK, resolver=dns("x", "127.0.0.1"))
    for url in ("http://2130706433/", "http://user:pass@127.0.0.1/", "gopher://127.0.0.1/"):
        with pytest.raises(ApplicationError) as caught:
            await sender.vet(url)
        assert caught.value.type == REFUSED and caught.value.non_retryable


async def test_the_allow_list_admits_named_hosts_and_networks_at_delivery() -> None:
    by_host = WebhookAllowList.of(hosts=["Hooks.Internal.Test."], networks=())
    sender = WebhookSender(SECRET, by_host, resolver=dns("hooks.internal.test", "10.0.0.5"))
    vetted = await sender.vet("http://hooks.internal.test/hook")
    assert vetted.addresses == [ipaddress.ip_address("10.0.0.5")]

    by_net = WebhookAllowList.of(hosts=(), networks=["10.0.0.0/8"])
    sender = WebhookSender(
        SECRET, by_net, resolver=dns("hooks.example.test", "10.0.0.5", "8.8.8.8")
    )
    vetted = await sender.vet("http://hooks.example.test/hook")
    assert [str(a) for a in vetted.addresses] == ["10.0.0.5", "8.8.8.8"]

    sender = WebhookSender(
        SECRET, by_net, resolver=dns("hooks.example.test", "10.0.0.5", "11.0.0.1")
    )
    assert (await sender.vet("http://hooks.example.test/hook")).addresses[1] == (
        ipaddress.ip_address("11.0.0.1")
    )
    sender = WebhookSender(
        SECRET, by_net, resolver=dns("hooks.example.test", "10.0.0.5", "192.168.0.1")
    )
    with pytest.raises(ApplicationError):
        await sender.vet("http://hooks.example.test/hook")


async def test_a_name_that_does_not_resolve_is_retried_later() -> None:
    async def nxdomain(host: str, port: int) -> Sequence[IPAddress]:
        raise OSError(-2, "Name or service not known")

    sender = WebhookSender(SECRET, NOTHING_ALLOWED, resolver=nxdomain)
    with pytest.raises(ApplicationError) as caught:
        await sender.vet("https://hooks.example.test/hook")
    assert caught.value.type == UNAVAILABLE and not caught.value.non_retryable
    assert "Name or service" not in caught.value.message


# ------------------------------------------------------- delivery on loopback


async def test_delivery_to_an_allow_listed_loopback_receiver_is_signed_and_accepted() -> None:
    async with receiving(Receiver("127.0.0.1", free_port())) as receiver:
        sender = WebhookSender(SECRET, LOOPBACK, resolver=dns("hooks.example.test", "127.0.0.1"))
        status = await sender.deliver(hook_input(f"http://hooks.example.test:{receiver.port}/h"))
    assert status == 204
    [got] = receiver.got
    assert got.path == "/h"
    assert got.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert verify(
        SECRET, got.headers["x-agentrun-timestamp"], got.body, got.headers["x-agentrun-signature"]
    )
    assert got.headers["x-agentrun-delivery"] == "run-1:7"


async def test_a_loopback_receiver_that_is_not_allow_listed_gets_nothing() -> None:
    async with receiving(Receiver("127.0.0.1", free_port())) as receiver:
        by_name = WebhookSender(
            SECRET, NOTHING_ALLOWED, resolver=dns("hooks.example.test", "127.0.0.1")
        )
        err = await refusal(by_name, f"http://hooks.example.test:{receiver.port}/h")
        assert err.type == REFUSED and "127.0.0.1" not in err.message
        literal = WebhookSender(SECRET, NOTHING_ALLOWED, resolver=dns("x", "8.8.8.8"))
        err = await refusal(literal, f"http://127.0.0.1:{receiver.port}/h")
        assert err.type == REFUSED
    assert receiver.got == []


async def test_a_redirect_is_a_failure_and_its_location_is_not_followed() -> None:
    port = free_port()
    async with (
        receiving(Receiver("127.0.0.1", free_port())) as target,
        receiving(
            Receiver(
                "127.0.0.1",
                port,
                status=302,
                headers=[(b"location", f"http://127.0.0.1:{target.port}/elsewhere".encode())],
            )
        ) as redirector,
    ):
        sender = WebhookSender(SECRET, LOOPBACK, resolver=dns("x", "8.8.8.8"))
        err = await refusal(sender, f"http://127.0.0.1:{port}/hook")
    assert err.type == REDIRECTED and err.non_retryable
    assert "302" not in err.message and str(target.port) not in err.message
    assert len(redirector.got) == 1
    assert target.got == []


async def test_failures_report_a_coarse_reason_not_the_receivers_answer() -> None:
    closed_port = free_port()  # nothing listens there
    sender = WebhookSender(SECRET, LOOPBACK, resolver=dns("x", "8.8.8.8"))
    err = await refusal(sender, f"http://127.0.0.1:{closed_port}/hook")
    assert err.type == UNAVAILABLE and not err.non_retryable
    assert "Connect" not in err.message and "refused" not in err.message.lower()

    for status, kind, final in ((404, REJECTED, True), (503, UNAVAILABLE, False)):
        async with receiving(Receiver("127.0.0.1", free_port(), status=status)) as receiver:
            err = await refusal(sender, f"http://127.0.0.1:{receiver.port}/hook")
        assert (err.type, err.non_retryable) == (kind, final)
        assert str(status) not in err.message and "receiver says hello" not in err.message


async def test_dns_rebinding_cannot_move_the_connection_off_the_checked_address() -> None:
    # First answer: 127.0.0.1 (allow-listed). Any later answer: ::1 (not allow-listed),
    # where a second receiver listens on the same port. A sender that resolved again
    # to connect would reach the second receiver (or fail); the vetted one reaches
    # the first, having asked once.
    port = free_port()
    rebinding = FakeDns({"hooks.example.test": [["127.0.0.1"], ["::1"]]})
    async with (
        receiving(Receiver("127.0.0.1", port)) as checked,
        receiving(Receiver("::1", port)) as rebound,
    ):
        sender = WebhookSender(SECRET, LOOPBACK, resolver=rebinding)
        assert await sender.deliver(hook_input(f"http://hooks.example.test:{port}/h")) == 204
        # The next delivery asks again and gets ::1, which is refused before connecting.
        err = await refusal(sender, f"http://hooks.example.test:{port}/h")
        assert err.type == REFUSED
    assert rebinding.asked == ["hooks.example.test", "hooks.example.test"]
    assert len(checked.got) == 1
    assert rebound.got == []


def _tls_files(tmp_path: Path, host: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for `host` signed by it (PEM files)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentrun test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem, key_pem = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_pem, cert_pem, key_pem


async def test_https_to_the_checked_address_verifies_the_certificate_of_the_url_host(
    tmp_path: Path,
) -> None:
    ca, cert, key = _tls_files(tmp_path, "hooks.example.test")
    trust = ssl.create_default_context(cafile=str(ca))
    port = free_port()
    async with receiving(Receiver("127.0.0.1", port), tls=(cert, key)) as receiver:
        sender = WebhookSender(
            SECRET, LOOPBACK, resolver=dns("hooks.example.test", "127.0.0.1"), verify=trust
        )
        assert await sender.deliver(hook_input(f"https://hooks.example.test:{port}/h")) == 204
        # The same address under another name: the certificate does not match it.
        other = WebhookSender(
            SECRET, LOOPBACK, resolver=dns("other.example.test", "127.0.0.1"), verify=trust
        )
        err = await refusal(other, f"https://other.example.test:{port}/h")
        assert err.type == UNAVAILABLE
    assert len(receiver.got) == 1
    assert receiver.got[0].headers["host"] == f"hooks.example.test:{port}"


# ------------------------------------------------------------------ settings


def test_allow_list_settings_are_normalised_and_bad_values_name_their_variable() -> None:
    settings = load_settings(
        webhook_allow_hosts=["Hooks.Internal.Test."], webhook_allow_networks=["10.0.0.1/8"]
    )
    allow = WebhookAllowList.from_settings(settings)
    assert allow.hosts == frozenset({"hooks.internal.test"})
    assert allow.networks == (ipaddress.ip_network("10.0.0.0/8"),)
    with pytest.raises(ConfigError, match="AGENTRUN_WEBHOOK_ALLOW_NETWORKS"):
        load_settings(webhook_allow_networks=["ten-dot-something"])
    with pytest.raises(ConfigError, match="AGENTRUN_WEBHOOK_ALLOW_HOSTS"):
        load_settings(webhook_allow_hosts=["*.internal.test"])
    with pytest.raises(ConfigError, match="AGENTRUN_WEBHOOK_ALLOW_NETWORKS"):
        load_settings(webhook_allow_hosts=["10.0.0.5"])


# ------------------------------------------------------- through the API and a run


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://user:pass@hooks.example.com/x", "credentials"),
        ("http://2130706433/", "four decimal octets"),
        ("http://[::ffff:127.0.0.1]/", "embeds an IPv4 address"),
    ],
)
async def test_the_api_refuses_a_webhook_url_that_breaks_a_rule_with_422(
    client: Client, tmp_path: Path, url: str, rule: str
) -> None:
    settings = api_settings(tmp_path, "tq-unused")
    async with (
        serve_api(settings, client) as base,
        httpx.AsyncClient(base_url=base, headers=admin_headers(settings)) as http,
    ):
        resp = await http.post("/v1/runs", json=scripted(finish_turn(), webhook={"url": url}))
    assert resp.status_code == 422, resp.text
    assert rule in resp.text


async def test_a_refused_delivery_is_recorded_without_an_oracle(
    client: Client, task_queue: str, state_dir: Path
) -> None:
    async with (
        receiving(Receiver("127.0.0.1", free_port())) as receiver,
        running_worker(client, task_queue, state_dir, webhook_allow_networks=[]) as settings,
    ):
        spec = scripted_spec(
            finish("hooked"), webhook={"url": f"http://127.0.0.1:{receiver.port}/"}
        )
        handle = await start_run(client, task_queue, spec)
        await handle.result()

        async def delivered() -> list[WebhookDeliveredPayload]:
            events = await all_events(handle, settings.artifacts_path)
            return payloads(events, WebhookDeliveredPayload)

        [hook] = await wait_until(delivered, timeout=30)
    assert receiver.got == []
    assert hook.ok is False and hook.status_code is None
    assert hook.error is not None and hook.error.startswith(f"{REFUSED}:")
    assert "AGENTRUN_WEBHOOK_ALLOW_NETWORKS" in hook.error
