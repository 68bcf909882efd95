"""The one place that turns settings into an artifact store (worker, API, CLI).

    store = open_artifact_store(settings)   # LocalArtifactStore or S3ArtifactStore

`AGENTRUN_ARTIFACT_STORE=local` (the embedded default) keeps blobs under
`AGENTRUN_ARTIFACT_DIR`; `s3` puts them in `AGENTRUN_S3_BUCKET`, and then no code
path reads the local artifact directory: the API and every worker only need the
bucket in common.

This module must not: create the bucket, or touch the network (the S3 client
connects on first use, so a process starts while the store is briefly down).
"""

from __future__ import annotations

from agentrun.config import ConfigError, Settings
from store.artifacts import ArtifactStore, LocalArtifactStore

MiB = 1 << 20


def open_artifact_store(settings: Settings) -> ArtifactStore:
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
            )
        )
    return LocalArtifactStore(settings.artifacts_path)
