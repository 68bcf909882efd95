"""One contract for every artifact store backend: local files and S3 (SeaweedFS).

Each test runs once per backend, both built by the production factory
(`store.backends.open_artifact_store`) from settings, so what the worker and the
API get is what is tested. The S3 server is real (tests/s3_fixtures.py); the S3
only tests at the end cover what the local store has no counterpart for: keys,
multipart uploads, refused credentials and an unreachable endpoint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentrun.config import ConfigError, Settings, load_settings
from agentrun.contracts import Message
from store.artifacts import (
    ArtifactStore,
    ArtifactStoreMisconfigured,
    ArtifactStoreUnavailable,
    BlobNotFound,
    LocalArtifactStore,
    get_bytes,
    get_model,
    put_model,
)
from store.backends import open_artifact_store
from store.conversation import ConversationStore
from store.s3 import S3ArtifactStore
from tests.s3_fixtures import SeaweedS3


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    if request.param == "local":
        yield "local", load_settings(state_dir=tmp_path / "state")
    else:
        s3: SeaweedS3 = request.getfixturevalue("seaweedfs")
        yield "s3", s3.settings(tmp_path / "state")


@pytest.fixture
def store(backend: tuple[str, Settings]) -> ArtifactStore:
    return open_artifact_store(backend[1])


def test_factory_picks_the_backend_the_settings_name(backend: tuple[str, Settings]) -> None:
    kind, settings = backend
    expected = S3ArtifactStore if kind == "s3" else LocalArtifactStore
    assert type(open_artifact_store(settings)) is expected


def test_put_returns_the_sha256_and_the_same_bytes_come_back(store: ArtifactStore) -> None:
    data = b"hello \x00 world"
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert get_bytes(store, digest) == data
    assert store.size(digest) == len(data)
    assert store.exists(digest)


def test_putting_the_same_content_twice_is_one_blob(store: ArtifactStore) -> None:
    assert store.put(b"same") == store.put(b"same")


def test_empty_blob_round_trips(store: ArtifactStore) -> None:
    digest = store.put(b"")
    assert get_bytes(store, digest) == b""
    assert store.size(digest) == 0


def test_unknown_or_malformed_digests_are_not_found(store: ArtifactStore) -> None:
    for digest in ("0" * 64, "../../etc/passwd", "A" * 64, "abc"):
        assert not store.exists(digest)
        with pytest.raises(BlobNotFound):
            store.open(digest)
        with pytest.raises(BlobNotFound):
            store.size(digest)


def test_open_streams_a_large_blob_in_chunks(store: ArtifactStore) -> None:
    data = os.urandom(3 << 20)
    digest = store.put(data)
    got = bytearray()
    with store.open(digest) as fh:
        while chunk := fh.read(64 << 10):
            got += chunk
    assert bytes(got) == data


def test_models_and_the_conversation_chain_work_on_the_backend(store: ArtifactStore) -> None:
    digest = put_model(store, Message(role="user", content="hi"))
    assert get_model(store, digest, Message).content == "hi"
    conv = ConversationStore(store)
    head = conv.append(None, [conv.put_message(Message(role="system", content="s"))])
    head = conv.append(head, [conv.put_message(Message(role="user", content="u"))])
    cold = ConversationStore(store).load(head)  # a fresh cache walks the chain
    assert [m.content for m in cold] == ["s", "u"]


def test_a_second_store_on_the_same_settings_sees_every_blob(
    backend: tuple[str, Settings],
) -> None:
    """Two processes (a worker, an API) open their own store on the same settings."""
    writer, reader = open_artifact_store(backend[1]), open_artifact_store(backend[1])
    digest = writer.put(b"shared")
    assert get_bytes(reader, digest) == b"shared"


# S3 only.


def test_s3_keys_are_content_addressed_under_the_prefix(
    seaweedfs: SeaweedS3, tmp_path: Path
) -> None:
    settings = seaweedfs.settings(tmp_path, prefix="deploy-a/")
    digest = open_artifact_store(settings).put(b"keyed")
    key = f"deploy-a/blobs/{digest[:2]}/{digest[2:4]}/{digest}"
    body = seaweedfs.client().get_object(Bucket=seaweedfs.bucket, Key=key)["Body"].read()
    assert body == b"keyed"
    # Another deployment's prefix does not see it.
    assert not open_artifact_store(seaweedfs.settings(tmp_path, prefix="deploy-b/")).exists(digest)


def test_s3_uploads_a_blob_over_the_threshold_in_parts(
    seaweedfs: SeaweedS3, tmp_path: Path
) -> None:
    settings = seaweedfs.settings(tmp_path, s3_multipart_threshold_mb=5)
    store = open_artifact_store(settings)
    data = os.urandom(11 << 20)  # three parts of 5 MiB at most
    digest = store.put(data)
    assert isinstance(store, S3ArtifactStore)
    head = seaweedfs.client().head_object(Bucket=seaweedfs.bucket, Key=store.key(digest))
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    assert get_bytes(store, digest) == data


def test_s3_refused_credentials_are_misconfigured_not_retryable(
    seaweedfs: SeaweedS3, tmp_path: Path
) -> None:
    settings = seaweedfs.settings(tmp_path, s3_secret_access_key="not-the-secret")
    store = open_artifact_store(settings)
    with pytest.raises(ArtifactStoreMisconfigured) as info:
        store.put(b"refused")
    assert not info.value.retryable
    assert "not-the-secret" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_s3_unreachable_endpoint_is_unavailable_and_retryable(
    tmp_path: Path, refused_port: int
) -> None:
    settings = load_settings(
        state_dir=tmp_path,
        artifact_store="s3",
        s3_endpoint=f"http://127.0.0.1:{refused_port}",  # nothing listens there
        s3_bucket="nowhere",
        s3_access_key_id="k",
        s3_secret_access_key="s",
    )
    with pytest.raises(ArtifactStoreUnavailable) as info:
        open_artifact_store(settings).put(b"lost")
    assert info.value.retryable


def test_s3_settings_need_a_bucket_and_both_credentials_and_hide_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="AGENTRUN_S3_BUCKET"):
        load_settings(state_dir=tmp_path, artifact_store="s3")
    with pytest.raises(ConfigError, match="go together"):
        load_settings(
            state_dir=tmp_path, artifact_store="s3", s3_bucket="b", s3_access_key_id="only"
        )
    settings = load_settings(
        state_dir=tmp_path,
        artifact_store="s3",
        s3_bucket="b",
        s3_access_key_id="AKIDVISIBLE",
        s3_secret_access_key="very-secret-value",
    )
    assert "very-secret-value" not in repr(settings)
    assert "very-secret-value" not in repr(open_artifact_store(settings))
    monkeypatch.setenv("AGENTRUN_S3_SECRET_ACCESS_KEY", "very-secret-value")
    with pytest.raises(ConfigError) as info:
        load_settings(state_dir=tmp_path, s3_multipart_threshold_mb=1)
    assert "very-secret-value" not in str(info.value)
