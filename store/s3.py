"""The artifact store on S3-compatible object storage (AWS S3, SeaweedFS, MinIO, …).

    store = S3ArtifactStore(S3Config(bucket="agentrun", endpoint="http://seaweed:8333"))
    acme = store.for_tenant("acme")
    digest = acme.put(b"...")       # → s3://agentrun/<prefix>tenants/acme/blobs/ab/cd/abcd…
    with acme.open(digest) as fh:   # a stream; nothing is written to local disk
        fh.read()

With it, a worker and an API server share nothing but the bucket: the conversation
chain, the event segments and the artifacts all live in the one content-addressed
store, so the API answers for a run written by any worker from an empty state
directory.

Design (why it looks like this):

* **boto3, synchronous, called from threads.** :class:`ArtifactStore` is a
  synchronous interface: async activities and the API already call it through
  `asyncio.to_thread`, sync activities run on the worker's thread pool. A boto3
  client is thread-safe, so one per store serves every thread. aioboto3 would need
  an event loop the interface does not have, and the Temporal SDK's
  `temporalio.contrib.aws.s3driver` is a claim-check driver for *Temporal payloads*
  (its own keys, async, one payload per object): it does not give the
  put/open/exists/size by digest that the conversation chain, the segments and the
  artifact routes read, so it does not fit here.
* **Content-addressed keys under a tenant prefix**
  `<prefix>tenants/<tenant>/blobs/<d[:2]>/<d[2:4]>/<digest>` (:meth:`for_tenant`;
  why tenant prefixes, and the read fallback to the unscoped keys
  `<prefix>blobs/…` written before them: `store/artifacts.py`). The same bytes of
  a tenant land under the same key from any worker, so a retried activity
  re-putting a blob is a HEAD and nothing more. An S3 PUT (or
  CompleteMultipartUpload) makes an object visible whole or not at all, so a
  worker killed mid-upload never leaves a truncated blob under a valid digest, as
  the local store's rename does. One prefix per tenant is what S3's own tools act
  on: a bucket policy or IAM condition on `<prefix>tenants/acme/*`, a lifecycle
  rule with that prefix filter, `aws s3 sync` to export it, `aws s3 rm --recursive`
  to delete it. `AGENTRUN_S3_PREFIX` separates deployments sharing a bucket.
* **Multipart above a threshold** (`AGENTRUN_S3_MULTIPART_THRESHOLD_MB`): s3transfer
  uploads large workspace files in parts and aborts the upload on failure.
* **Errors classified in one place** (:func:`_classified`): 404/NoSuchKey → the
  store's :class:`BlobNotFound`; refused credentials, a missing bucket, a bad
  request → :class:`ArtifactStoreMisconfigured` (non-retryable); 5xx, throttling,
  timeouts and connection errors → :class:`ArtifactStoreUnavailable` (retryable).
  The chain is cut (`from None`): botocore's errors can quote request headers.
* **Retries belong to Temporal** (STYLE, "retries belong to Temporal, not the
  client"): botocore makes one attempt; an activity's retry policy does the rest,
  and the API answers 503 for an unavailable store.

This module must not: log, repr or raise a credential (the config hides them), read
a local directory, or create buckets (an operator does; the test fixture does).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, cast

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from agentrun.contracts import digest_of
from store.artifacts import (
    TENANTS,
    ArtifactStoreMisconfigured,
    ArtifactStoreUnavailable,
    BlobNotFound,
    TenantArtifactStore,
    check_tenant_id,
)

MiB = 1 << 20

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_UNAVAILABLE = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "InternalError",
        "OperationAborted",
    }
)


@dataclass(frozen=True)
class S3Config:
    """Where the blobs go; credentials unset fall back to boto3's own chain
    (`AWS_*` variables, shared config, an instance or pod role)."""

    bucket: str
    endpoint: str | None = None
    """`http://host:8333` for SeaweedFS or MinIO; unset: AWS's regional endpoint."""
    region: str = "us-east-1"
    prefix: str = ""
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    multipart_threshold: int = 8 * MiB
    """Blobs at least this large are uploaded in parts of this size."""
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


def _client(cfg: S3Config) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=cfg.endpoint,
        region_name=cfg.region,
        aws_access_key_id=cfg.access_key_id,
        aws_secret_access_key=cfg.secret_access_key,
        config=Config(
            # One attempt: Temporal's retry policy (or the API client) retries.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            # SeaweedFS and MinIO serve buckets as paths; AWS accepts both.
            s3={"addressing_style": "path" if cfg.endpoint else "auto"},
            max_pool_connections=32,
        ),
    )


class S3ArtifactStore:
    """Tenant `t`'s blobs under `s3://<bucket>/<prefix>tenants/t/blobs/<d[:2]>/<d[2:4]>/<digest>`
    (:meth:`for_tenant`); its own put/open/exists/size are the unscoped keys
    `<prefix>blobs/…` that blobs had before tenant prefixes (the legacy fallback)."""

    def __init__(
        self, cfg: S3Config, client: Any | None = None, *, legacy_reads: bool = True
    ) -> None:
        self._cfg = cfg
        self._client = client if client is not None else _client(cfg)
        self._legacy_reads = legacy_reads
        self._transfer = TransferConfig(
            multipart_threshold=cfg.multipart_threshold,
            multipart_chunksize=max(cfg.multipart_threshold, 5 * MiB),  # S3's minimum part
            max_concurrency=4,
        )

    def __repr__(self) -> str:
        return f"S3ArtifactStore(bucket={self._cfg.bucket!r}, prefix={self._cfg.prefix!r})"

    def tenant_prefix(self, tenant_id: str) -> str:
        """The key prefix holding all of a tenant's blobs (export, delete, policies)."""
        return f"{self._cfg.prefix}{TENANTS}/{check_tenant_id(tenant_id)}/"

    def for_tenant(self, tenant_id: str) -> TenantArtifactStore:
        # The same client (thread-safe, one connection pool) for every tenant's view.
        own = S3ArtifactStore(
            replace(self._cfg, prefix=self.tenant_prefix(tenant_id)), self._client
        )
        return TenantArtifactStore(tenant_id, own, self if self._legacy_reads else None)

    def key(self, digest: str) -> str:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BlobNotFound(digest)
        return f"{self._cfg.prefix}blobs/{digest[:2]}/{digest[2:4]}/{digest}"

    def put(self, data: bytes) -> str:
        digest = digest_of(data)
        if self.exists(digest):
            return digest
        with self._classified("put", digest):
            self._client.upload_fileobj(
                io.BytesIO(data), self._cfg.bucket, self.key(digest), Config=self._transfer
            )
        return digest

    def open(self, digest: str) -> BinaryIO:
        key = self.key(digest)
        with self._classified("get", digest):
            response = self._client.get_object(Bucket=self._cfg.bucket, Key=key)
        return cast(BinaryIO, response["Body"])

    def exists(self, digest: str) -> bool:
        try:
            self.size(digest)
        except BlobNotFound:
            return False
        return True

    def size(self, digest: str) -> int:
        key = self.key(digest)
        with self._classified("head", digest):
            response = self._client.head_object(Bucket=self._cfg.bucket, Key=key)
        return int(response["ContentLength"])

    @contextmanager
    def _classified(self, operation: str, digest: str) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise self._translate(exc, operation, digest) from None

    def _translate(self, exc: Exception, operation: str, digest: str) -> Exception:
        where = f"S3 {operation} of blob {digest[:12]}… in bucket {self._cfg.bucket!r}"
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__cause__, Exception):
            exc = exc.__cause__  # s3transfer wraps the ClientError of a failed part
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in _NOT_FOUND or (status == 404 and code != "NoSuchBucket"):
                return BlobNotFound(digest)
            if code in _UNAVAILABLE or status >= 500 or status == 429:
                return ArtifactStoreUnavailable(
                    f"{where} failed ({code or status}); the store is busy or down, "
                    "the call is retried"
                )
            return ArtifactStoreMisconfigured(
                f"{where} was refused ({code or status}): check AGENTRUN_S3_BUCKET, "
                "AGENTRUN_S3_ENDPOINT and the credentials' permissions on the bucket"
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return ArtifactStoreMisconfigured(
                f"{where}: no usable credentials; set AGENTRUN_S3_ACCESS_KEY_ID and "
                "AGENTRUN_S3_SECRET_ACCESS_KEY, or give the process a role"
            )
        if isinstance(exc, ParamValidationError):
            return ArtifactStoreMisconfigured(
                f"{where}: the request was invalid; check AGENTRUN_S3_BUCKET"
            )
        # Connection refused or reset, timeouts, a truncated response: try again.
        return ArtifactStoreUnavailable(
            f"{where} failed ({type(exc).__name__}): cannot reach "
            f"{self._cfg.endpoint or 'S3'}; the call is retried"
        )
