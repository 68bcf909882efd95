"""The one place that turns settings into an artifact store (worker, API, CLI).

    stores = open_tenant_stores(settings)   # LocalArtifactStore or S3ArtifactStore
    acme = stores.for_tenant("acme")        # what a run of tenant `acme` reads and writes

`AGENTRUN_ARTIFACT_STORE=local` (the embedded default) keeps blobs under
`AGENTRUN_ARTIFACT_DIR`; `s3` puts them in `AGENTRUN_S3_BUCKET`, and then no code
path reads the local artifact directory: the API and every worker only need the
bucket in common. Either way each tenant's blobs sit under a prefix of their own,
and `AGENTRUN_ARTIFACT_LEGACY_READS` says whether a tenant's reads fall back to the
unscoped blobs written before tenant prefixes (`store/artifacts.py`).

Two doors to the same object, typed for what the caller may do with it: run code
(the worker's activities, the API) takes :func:`open_tenant_stores`, which offers
only `for_tenant`; :func:`open_artifact_store` is the unscoped blob interface
(the legacy location), for tools that measure the store itself (bench/).

This module must not: create the bucket, or touch the network (the S3 client
connects on first use, so a process starts while the store is briefly down).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentrun.config import ConfigError, Settings
from store.artifacts import ArtifactStore, LocalArtifactStore, TenantStores

if TYPE_CHECKING:
    from store.s3 import S3ArtifactStore

MiB = 1 << 20


def open_tenant_stores(settings: Settings) -> TenantStores:
    """The deployment's store as run code uses it: one view per tenant."""
    return _open(settings)


def open_artifact_store(settings: Settings) -> ArtifactStore:
    """The deployment's store, unscoped (blobs from before tenant prefixes; raw latency)."""
    return _open(settings)


def _open(settings: Settings) -> LocalArtifactStore | S3ArtifactStore:
    if settings.artifact_store == "s3":
        from store.s3 import S3ArtifactStore, S3Config  # boto3 is only loaded when used

        if settings.s3_bucket is None:  # Settings' own check says so first
            raise ConfigError("AGENTRUN_ARTIFACT_STORE=s3 needs AGENTRUN_S3_BUCKET")
        return S3ArtifactStore(
            S3Config(
                bucket=settings.s3_bucket,
                endpoint=settings.s3_endpoint,
                region=settings.s3_region,
                prefix=settings.s3_prefix,
                access_key_id=settings.s3_access_key_id,
                secret_access_key=settings.s3_secret_access_key,
                multipart_threshold=settings.s3_multipart_threshold_mb * MiB,
            ),
            legacy_reads=settings.artifact_legacy_reads,
        )
    return LocalArtifactStore(settings.artifacts_path, legacy_reads=settings.artifact_legacy_reads)
