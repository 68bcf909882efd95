"""A second Docker engine for the tests: `dockerd` on its own socket, data root and
exec root, and on a loopback TCP port with mutual TLS.

It stands for a remote sandbox host (sandbox/engine.py): the tests point `DOCKER_HOST`
at it and check, from both engines' side, that sandboxes run there and only there.
It gets no bridge network and no iptables rules (`--bridge=none --iptables=false`),
so it cannot disturb the system engine's networks, and sandboxes need none. The
sandbox image is copied into it from the system engine (`docker save | docker load`).

The TLS material is made here with `cryptography`: a CA, a server certificate for
127.0.0.1 and a client certificate it signed, plus a client certificate of another
CA that the engine must refuse, and a client that trusts another CA (so it must
refuse the engine). Nothing listens beyond loopback.

The engine is started on first use, once per session, and only for the tests that
ask for it. Cleanup holds on failure: the daemon runs with a parent-death signal
(it stops, with its containers, when the test process dies), the session removes
its containers, stops it and unmounts what is left under its directory before
removing it, and a later session removes the directories of sessions that were
killed before their cleanup (`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import shutil
import signal
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

PREFIX = "agentrun-second-dockerd-"
"""The temporary directories of second engines (`sweep_stale` finds them by it)."""
STALE_S = 60.0
"""A directory younger than this may be a session's that is starting: never swept."""


@dataclass(frozen=True)
class SecondEngine:
    socket: Path
    tcp_port: int
    client_certs: Path
    """A DOCKER_CERT_PATH the engine accepts (ca.pem, cert.pem, key.pem)."""
    foreign_certs: Path
    """A DOCKER_CERT_PATH whose client certificate another CA signed."""
    untrusting_certs: Path
    """A DOCKER_CERT_PATH with a good client certificate whose ca.pem is another CA's
    (so the engine's own certificate is not trusted)."""

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


def make_tls(base: Path) -> tuple[Path, Path, Path, Path]:
    """(server dir, then client DOCKER_CERT_PATHs: accepted, foreign, untrusting)."""
    dirs = [base / d for d in ("server", "client", "foreign", "untrusting")]
    for d in dirs:
        d.mkdir()
    server_dir, client_dir, foreign_dir, untrusting_dir = dirs
    ca_key, other_key = _key(), _key()
    ca = _cert("agentrun test CA", ca_key, None, ca=True)
    other_ca = _cert("another CA", other_key, None, ca=True)
    server_key, client_key, foreign_key = _key(), _key(), _key()
    _write(server_dir, "ca.pem", ca)
    _write(
        server_dir, "cert.pem", _cert("127.0.0.1", server_key, (ca.subject, ca_key), server=True)
    )
    _write_key(server_dir, "key.pem", server_key)
    client_cert = _cert("worker", client_key, (ca.subject, ca_key))
    _write(client_dir, "ca.pem", ca)
    _write(client_dir, "cert.pem", client_cert)
    _write_key(client_dir, "key.pem", client_key)
    _write(foreign_dir, "ca.pem", ca)  # trusts the engine, but is not trusted by it
    _write(foreign_dir, "cert.pem", _cert("intruder", foreign_key, (other_ca.subject, other_key)))
    _write_key(foreign_dir, "key.pem", foreign_key)
    _write(untrusting_dir, "ca.pem", other_ca)  # trusted by the engine, but does not trust it
    _write(untrusting_dir, "cert.pem", client_cert)
    _write_key(untrusting_dir, "key.pem", client_key)
    return server_dir, client_dir, foreign_dir, untrusting_dir


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


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mounts_under(base: Path) -> list[str]:
    """This process's mount points at or below `base`, deepest first."""
    root = os.path.realpath(base)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with space, tab, newline, backslash octal-escaped.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == root or point.startswith(root + "/"):
            points.append(point)
    return sorted(set(points), key=len, reverse=True)


def unmount_all(base: Path) -> None:
    """Unmount what a dockerd left mounted under `base` (lazily when still busy)."""
    for point in mounts_under(base):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def sweep_stale(parent: Path) -> None:
    """Remove what earlier sessions left (a test process killed before its cleanup):
    a directory whose session and dockerd are both gone, unmounted first. Young ones
    are left alone (a session may be starting), as is anything still running."""
    for base in parent.glob(f"{PREFIX}*"):
        if not base.is_dir() or time.time() - base.stat().st_mtime < STALE_S:
            continue
        if _alive(_pid_in(base / "session.pid")) or _alive(_pid_in(base / "docker.pid")):
            continue
        unmount_all(base)
        shutil.rmtree(base, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes], base: Path) -> None:
    """Stop the dockerd (it stops its containerd); kill both if it does not stop."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        containerd = _pid_in(base / "exec" / "containerd" / "containerd.pid")
        if _alive(containerd):
            assert containerd is not None
            os.kill(containerd, signal.SIGKILL)


@pytest.fixture(scope="session")
def second_engine(sandbox_image: str) -> Iterator[SecondEngine]:
    """A second dockerd, started on first use by the tests that ask for it, with the
    sandbox image; stopped, unmounted and removed when the session ends."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.fail("dockerd is missing: scripts/setup.sh installs docker.io")
    parent = Path(tempfile.gettempdir())
    sweep_stale(parent)
    base = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    (base / "session.pid").write_text(str(os.getpid()))
    proc: subprocess.Popen[bytes] | None = None
    try:
        server_dir, client_dir, foreign_dir, untrusting_dir = make_tls(base)
        engine = SecondEngine(
            base / "docker.sock", free_port(), client_dir, foreign_dir, untrusting_dir
        )
        log = base / "dockerd.log"
        # Its own configuration file: the system engine's /etc/docker/daemon.json (hosts,
        # data root) would clash with these flags.
        (base / "daemon.json").write_text("{}")
        # fmt: off
        args = [
            # The dockerd stops (and its containers with it) if this test process dies.
            "setpriv", "--pdeathsig", "TERM", dockerd,
            "--config-file", str(base / "daemon.json"),
            "--host", engine.unix_host, "--host", engine.tcp_host,
            "--tlsverify", "--tlscacert", str(server_dir / "ca.pem"),
            "--tlscert", str(server_dir / "cert.pem"), "--tlskey", str(server_dir / "key.pem"),
            "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
            "--pidfile", str(base / "docker.pid"),
            # dockerd starts a containerd of its own under the exec root, unless a system
            # containerd listens on /run/containerd: then these namespaces keep the two
            # engines' containers, images and plugins apart in it.
            "--containerd-namespace", "agentrun-second",
            "--containerd-plugins-namespace", "agentrun-second-plugins",
            "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
        ]
        # fmt: on
        proc = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        _wait_ready(engine, proc, log)
        _load_image(sandbox_image, engine)
        yield engine
    finally:
        if proc is not None:
            with contextlib.suppress(Exception):
                client = docker.DockerClient(base_url=f"unix://{base / 'docker.sock'}", timeout=30)
                for c in client.api.containers(all=True):
                    client.api.remove_container(c["Id"], force=True)
                client.close()
            _stop(proc, base)
        unmount_all(base)
        shutil.rmtree(base, ignore_errors=True)


def _load_image(image: str, engine: SecondEngine) -> None:
    """Copy the sandbox image from the system engine (`docker save | docker load`)."""
    saved = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    try:
        loaded = subprocess.run(
            ["docker", "-H", engine.unix_host, "load"],
            stdin=saved.stdout,
            capture_output=True,
            timeout=300,
        )
        assert saved.wait(timeout=60) == 0, "docker save failed"
        assert loaded.returncode == 0, loaded.stderr.decode()
    finally:
        if saved.poll() is None:
            saved.kill()
            saved.wait()
