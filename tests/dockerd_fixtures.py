"""A second Docker engine for the tests: `dockerd` on its own socket, data root and
exec root, and on a loopback TCP port with mutual TLS.

It stands for a remote sandbox host (sandbox/engine.py): the tests point `DOCKER_HOST`
at it and check, from both engines' side, that sandboxes run there and only there.
It gets no bridge network and no iptables rules (`--bridge=none --iptables=false`),
so it cannot disturb the system engine's networks, and sandboxes need none. The
sandbox image is copied into it from the system engine (`docker save | docker load`).

The TLS material is made here with `cryptography`: a CA, a server certificate for
127.0.0.1 and a client certificate it signed, plus a client certificate of another
CA that the engine must refuse. Nothing listens beyond loopback.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.model_fixtures import free_port


@dataclass(frozen=True)
class SecondEngine:
    socket: Path
    tcp_port: int
    client_certs: Path
    """A DOCKER_CERT_PATH the engine accepts (ca.pem, cert.pem, key.pem)."""
    foreign_certs: Path
    """A DOCKER_CERT_PATH whose client certificate another CA signed."""

    @property
    def unix_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_host(self) -> str:
        return f"tcp://127.0.0.1:{self.tcp_port}"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.unix_host, timeout=60)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0] if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate) -> None:
    (directory / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(directory: Path, name: str, key: ec.EllipticCurvePrivateKey) -> None:
    path = directory / name
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_tls(base: Path) -> tuple[Path, Path, Path]:
    """(server dir, client DOCKER_CERT_PATH, foreign client DOCKER_CERT_PATH)."""
    server_dir, client_dir, foreign_dir = (base / d for d in ("server", "client", "foreign"))
    for d in (server_dir, client_dir, foreign_dir):
        d.mkdir()
    ca_key, other_key = _key(), _key()
    ca = _cert("agentrun test CA", ca_key, None, ca=True)
    other_ca = _cert("another CA", other_key, None, ca=True)
    server_key, client_key, foreign_key = _key(), _key(), _key()
    _write(server_dir, "ca.pem", ca)
    _write(
        server_dir, "cert.pem", _cert("127.0.0.1", server_key, (ca.subject, ca_key), server=True)
    )
    _write_key(server_dir, "key.pem", server_key)
    _write(client_dir, "ca.pem", ca)
    _write(client_dir, "cert.pem", _cert("worker", client_key, (ca.subject, ca_key)))
    _write_key(client_dir, "key.pem", client_key)
    _write(foreign_dir, "ca.pem", ca)  # trusts the engine, but is not trusted by it
    _write(foreign_dir, "cert.pem", _cert("intruder", foreign_key, (other_ca.subject, other_key)))
    _write_key(foreign_dir, "key.pem", foreign_key)
    return server_dir, client_dir, foreign_dir


def _wait_ready(engine: SecondEngine, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the second dockerd exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):
            client = engine.client()
            try:
                client.ping()
                return
            finally:
                client.close()
        time.sleep(0.3)
    pytest.fail(f"the second dockerd did not answer in 60 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def second_engine(sandbox_image: str) -> Iterator[SecondEngine]:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.fail("dockerd is missing: scripts/setup.sh installs docker.io")
    base = Path(tempfile.mkdtemp(prefix="agentrun-dockerd-"))
    server_dir, client_dir, foreign_dir = make_tls(base)
    engine = SecondEngine(base / "docker.sock", free_port(), client_dir, foreign_dir)
    log = base / "dockerd.log"
    # fmt: off
    args = [
        dockerd,
        "--host", engine.unix_host, "--host", engine.tcp_host,
        "--tlsverify", "--tlscacert", str(server_dir / "ca.pem"),
        "--tlscert", str(server_dir / "cert.pem"), "--tlskey", str(server_dir / "key.pem"),
        "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
        "--pidfile", str(base / "docker.pid"),
        "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
    ]
    # fmt: on
    proc = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        _wait_ready(engine, proc, log)
        saved = subprocess.Popen(["docker", "save", sandbox_image], stdout=subprocess.PIPE)
        loaded = subprocess.run(
            ["docker", "-H", engine.unix_host, "load"],
            stdin=saved.stdout,
            capture_output=True,
            timeout=300,
        )
        saved.wait(timeout=60)
        assert loaded.returncode == 0, loaded.stderr.decode()
        yield engine
    finally:
        with contextlib.suppress(Exception):
            client = engine.client()
            for c in client.api.containers(all=True):
                client.api.remove_container(c["Id"], force=True)
            client.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-R", str(base / "exec")], capture_output=True)
        subprocess.run(["umount", "-R", str(base / "data")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
