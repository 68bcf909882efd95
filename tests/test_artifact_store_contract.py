"""One contract for every artifact store backend: local files and S3 (SeaweedFS).

Each test runs once per backend, both built by the production factory
(`store.backends.open_tenant_stores`) from settings, so what the worker and the
API get is what is tested; blobs go through a tenant's view (`for_tenant`), as a
run's do. The tenant tests prove the scoping on the real layout: a listing of the
directory, or of the bucket with boto3, shows where every blob went. The S3 server
is real (tests/s3_fixtures.py); the S3 only tests at the end cover what the local
store has no counterpart for: keys, multipart uploads, refused credentials and an
unreachable endpoint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from agentrun.config import ConfigError, Settings, load_settings
from agentrun.contracts import Message, canonical_json
from store.artifacts import (
    ArtifactStore,
    ArtifactStoreError,
    ArtifactStoreMisconfigured,
    ArtifactStoreUnavailable,
    BlobNotFound,
    InvalidTenantId,
    LocalArtifactStore,
    TenantStores,
    get_bytes,
    get_model,
    put_model,
)
from store.backends import open_artifact_store, open_tenant_stores
from store.conversation import ConversationStore
from store.s3 import S3ArtifactStore
from tests.s3_fixtures import SeaweedS3

Backend = tuple[str, Settings]


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        yield "local", load_settings(state_dir=tmp_path / "state")
    else:
        s3: SeaweedS3 = request.getfixturevalue("seaweedfs")
        yield "s3", s3.settings(tmp_path / "state")


@pytest.fixture
def stores(backend: Backend) -> TenantStores:
    return open_tenant_stores(backend[1])


@pytest.fixture
def store(stores: TenantStores) -> ArtifactStore:
    """Tenant `acme`'s view: what a run of `acme` reads and writes."""
    return stores.for_tenant("acme")


def stored(backend: Backend, request: pytest.FixtureRequest) -> set[str]:
    """Every blob the backend holds, by its path under the artifact directory or its
    key under the deployment's S3 prefix: the layout as an operator sees it."""
    kind, settings = backend
    if kind == "local":
        root = settings.artifacts_path
        if not root.exists():
            return set()
        return {
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        }
    s3: SeaweedS3 = request.getfixturevalue("seaweedfs")
    pages = s3.client().get_paginator("list_objects_v2")
    keys = {
        obj["Key"]
        for page in pages.paginate(Bucket=s3.bucket, Prefix=settings.s3_prefix)
        for obj in page.get("Contents", [])
    }
    return {k.removeprefix(settings.s3_prefix) for k in keys}


def where(kind: str, tenant: str | None, digest: str) -> str:
    """The documented place of a blob: a tenant's, or the unscoped (legacy) one."""
    fanned = f"{digest[:2]}/{digest[2:4]}/{digest}"
    if kind == "local":
        return f"tenants/{tenant}/{fanned}" if tenant else fanned
    return f"tenants/{tenant}/blobs/{fanned}" if tenant else f"blobs/{fanned}"


def test_factory_picks_the_backend_the_settings_name(backend: Backend) -> None:
    kind, settings = backend
    expected = S3ArtifactStore if kind == "s3" else LocalArtifactStore
    assert type(open_tenant_stores(settings)) is expected
    assert type(open_artifact_store(settings)) is expected


def test_put_returns_the_sha256_and_the_same_bytes_come_back(store: ArtifactStore) -> None:
    data = b"hello \x00 world"
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert get_bytes(store, digest) == data
    assert store.size(digest) == len(data)
    assert store.exists(digest)


def test_putting_the_same_content_twice_is_one_blob(
    store: ArtifactStore, backend: Backend, request: pytest.FixtureRequest
) -> None:
    assert store.put(b"same") == store.put(b"same")
    assert len(stored(backend, request)) == 1


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


def test_models_and_the_conversation_chain_work_on_the_backend(
    stores: TenantStores, store: ArtifactStore
) -> None:
    digest = put_model(store, Message(role="user", content="hi"))
    assert get_model(store, digest, Message).content == "hi"
    conv = ConversationStore(stores)
    head = conv.append(
        "acme", None, [conv.put_message("acme", Message(role="system", content="s"))]
    )
    head = conv.append("acme", head, [conv.put_message("acme", Message(role="user", content="u"))])
    cold = ConversationStore(stores).load("acme", head)  # a fresh cache walks the chain
    assert [m.content for m in cold] == ["s", "u"]


class _ReadCounting:
    """The backend's tenant stores, counting blob reads; the real store does the work."""

    def __init__(self, inner: TenantStores) -> None:
        self.inner = inner
        self.reads = 0

    def for_tenant(self, tenant_id: str) -> ArtifactStore:
        store = self.inner.for_tenant(tenant_id)
        counter = self

        class Counted:
            put, exists, size = store.put, store.exists, store.size

            def open(self, digest: str) -> BinaryIO:
                counter.reads += 1
                return store.open(digest)

        return Counted()


def test_appending_messages_the_caller_has_reads_no_blob_back(stores: TenantStores) -> None:
    counting = _ReadCounting(stores)
    conv = ConversationStore(counting)
    system = Message(role="system", content="s")
    head = conv.append("acme", None, [conv.put_message("acme", system)])
    conv.load("acme", head)  # the usual case: the run's conversation is cached
    reads = counting.reads
    user = Message(role="user", content="u")
    head = conv.append("acme", head, [conv.put_message("acme", user)], [user])
    assert counting.reads == reads  # nothing read back
    assert [m.content for m in conv.load("acme", head)] == ["s", "u"]
    assert counting.reads == reads  # and the next load is the cache's
    # Without the messages, the cache reads them back: one read per message.
    more = Message(role="user", content="more")
    head = conv.append("acme", head, [conv.put_message("acme", more)])
    assert counting.reads == reads + 1
    assert [m.content for m in ConversationStore(stores).load("acme", head)] == ["s", "u", "more"]


def test_a_second_store_on_the_same_settings_sees_every_blob(backend: Backend) -> None:
    """Two processes (a worker, an API) open their own store on the same settings."""
    writer, reader = open_tenant_stores(backend[1]), open_tenant_stores(backend[1])
    digest = writer.for_tenant("acme").put(b"shared")
    assert get_bytes(reader.for_tenant("acme"), digest) == b"shared"


# Tenant prefixes.


def test_every_blob_of_a_tenant_lands_under_its_own_prefix(
    stores: TenantStores, backend: Backend, request: pytest.FixtureRequest
) -> None:
    acme, globex = stores.for_tenant("acme"), stores.for_tenant("globex")
    conv = ConversationStore(stores)
    message = conv.put_message("acme", Message(role="user", content="hi"))
    head = conv.append("acme", None, [message])
    blob = acme.put(b"an artifact of acme's")
    other = globex.put(b"an artifact of globex's")
    kind = backend[0]
    assert stored(backend, request) == {
        where(kind, "acme", message),
        where(kind, "acme", head),
        where(kind, "acme", blob),
        where(kind, "globex", other),
    }


def test_a_digest_put_for_one_tenant_is_not_found_through_another_tenants_view(
    stores: TenantStores,
) -> None:
    digest = stores.for_tenant("acme").put(b"acme's own")
    globex = stores.for_tenant("globex")
    assert not globex.exists(digest)
    with pytest.raises(BlobNotFound):
        globex.open(digest)
    with pytest.raises(BlobNotFound):
        globex.size(digest)
    with pytest.raises(BlobNotFound):
        ConversationStore(stores).get_message("globex", digest)
    # The same content written by the other tenant is its own copy, under its prefix.
    assert globex.put(b"acme's own") == digest and globex.exists(digest)


def test_the_same_tenant_id_in_another_case_is_another_tenant_on_both_backends(
    stores: TenantStores,
) -> None:
    """Tenant ids are case-sensitive, and so are S3 keys and this machine's paths (a
    case-insensitive filesystem would merge `Acme` and `acme`: README, "Storage")."""
    digest = stores.for_tenant("acme").put(b"lower case")
    assert not stores.for_tenant("Acme").exists(digest)


@pytest.mark.parametrize(
    "tenant",
    ["", ".", "..", "../acme", "acme/../globex", "a/b", "a\\b", "/abs", "-dash", ".hidden",
     "a b", "acme\n", "é", "x" * 64, "acme\x00"],
)  # fmt: skip
def test_a_tenant_id_that_could_leave_its_prefix_is_refused_before_anything_is_stored(
    stores: TenantStores, backend: Backend, request: pytest.FixtureRequest, tenant: str
) -> None:
    with pytest.raises(InvalidTenantId) as info:
        stores.for_tenant(tenant)
    # A store error an activity does not retry (`activities.store_errors`).
    assert isinstance(info.value, ArtifactStoreError) and not info.value.retryable
    with pytest.raises(InvalidTenantId):
        ConversationStore(stores).put_message(tenant, Message(role="user", content="x"))
    assert stored(backend, request) == set()


# Blobs written before tenant prefixes (the legacy fallback).


def test_a_blob_written_before_tenant_prefixes_is_read_through_a_tenants_view(
    backend: Backend, stores: TenantStores, request: pytest.FixtureRequest
) -> None:
    legacy = open_artifact_store(backend[1])  # the unscoped put of the code before
    old = legacy.put(b"written by an older worker")
    acme = stores.for_tenant("acme")
    assert acme.exists(old) and acme.size(old) == len(b"written by an older worker")
    assert get_bytes(acme, old) == b"written by an older worker"
    # Writes go to the tenant's prefix only, even for content the legacy place holds.
    again = acme.put(b"written by an older worker")
    new = acme.put(b"written after the upgrade")
    kind = backend[0]
    assert stored(backend, request) == {
        where(kind, None, old),
        where(kind, "acme", again),
        where(kind, "acme", new),
    }
    assert not legacy.exists(new)


def test_a_conversation_begun_before_tenant_prefixes_goes_on_under_the_tenants_prefix(
    backend: Backend, stores: TenantStores
) -> None:
    """A run in flight across the upgrade: its head is an unscoped blob, its next
    steps are appended under the tenant's prefix, and the whole chain loads."""
    legacy = open_artifact_store(backend[1])
    old_message = put_model(legacy, Message(role="user", content="before"))
    old_head = legacy.put(canonical_json({"prev": None, "messages": [old_message]}))
    conv = ConversationStore(stores)
    head = conv.append(
        "acme", old_head, [conv.put_message("acme", Message(role="user", content="after"))]
    )
    assert not legacy.exists(head)
    cold = ConversationStore(stores).load("acme", head)
    assert [m.content for m in cold] == ["before", "after"]


def test_with_legacy_reads_off_an_unscoped_blob_is_not_found(backend: Backend) -> None:
    settings = backend[1]
    old = open_artifact_store(settings).put(b"from before")
    strict = open_tenant_stores(settings.model_copy(update={"artifact_legacy_reads": False}))
    assert not strict.for_tenant("acme").exists(old)
    with pytest.raises(BlobNotFound):
        strict.for_tenant("acme").open(old)
    assert open_tenant_stores(settings).for_tenant("acme").exists(old)  # on by default


# S3 only.


def test_s3_keys_are_content_addressed_under_the_deployment_and_tenant_prefix(
    seaweedfs: SeaweedS3, tmp_path: Path
) -> None:
    deployment = f"deploy-{os.urandom(4).hex()}/"
    stores = open_tenant_stores(seaweedfs.settings(tmp_path, prefix=deployment))
    digest = stores.for_tenant("acme").put(b"keyed")
    key = f"{deployment}tenants/acme/blobs/{digest[:2]}/{digest[2:4]}/{digest}"
    body = seaweedfs.client().get_object(Bucket=seaweedfs.bucket, Key=key)["Body"].read()
    assert body == b"keyed"
    assert isinstance(stores, S3ArtifactStore)
    assert stores.tenant_prefix("acme") == f"{deployment}tenants/acme/"
    # Another deployment's prefix does not see it, not even for the same tenant.
    other = open_tenant_stores(seaweedfs.settings(tmp_path, prefix=f"other-{deployment}"))
    assert not other.for_tenant("acme").exists(digest)


def test_s3_a_tenants_data_is_exported_and_deleted_by_its_prefix_alone(
    seaweedfs: SeaweedS3, tmp_path: Path
) -> None:
    """What README's "Storage" tells an operator to do, done with boto3: list and
    delete `<prefix>tenants/<tenant>/`; the other tenant's blobs are untouched."""
    stores = open_tenant_stores(seaweedfs.settings(tmp_path))
    assert isinstance(stores, S3ArtifactStore)
    gone, kept = stores.for_tenant("acme").put(b"acme"), stores.for_tenant("globex").put(b"gx")
    s3 = seaweedfs.client()
    listed = s3.list_objects_v2(Bucket=seaweedfs.bucket, Prefix=stores.tenant_prefix("acme"))
    keys = [o["Key"] for o in listed["Contents"]]
    assert [k.rsplit("/", 1)[-1] for k in keys] == [gone]  # the export: acme's, only
    for k in keys:
        s3.delete_object(Bucket=seaweedfs.bucket, Key=k)
    assert not stores.for_tenant("acme").exists(gone)
    assert get_bytes(stores.for_tenant("globex"), kept) == b"gx"


def test_s3_uploads_a_blob_over_the_threshold_in_parts(
    seaweedfs: SeaweedS3, tmp_path: Path
) -> None:
    settings = seaweedfs.settings(tmp_path, s3_multipart_threshold_mb=5)
    stores = open_tenant_stores(settings)
    assert isinstance(stores, S3ArtifactStore)
    store = stores.for_tenant("acme")
    data = os.urandom(11 << 20)  # three parts of 5 MiB at most
    digest = store.put(data)
    key = f"{stores.tenant_prefix('acme')}blobs/{digest[:2]}/{digest[2:4]}/{digest}"
    head = seaweedfs.client().head_object(Bucket=seaweedfs.bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    assert get_bytes(store, digest) == data


def test_s3_refused_credentials_are_misconfigured_not_retryable(
    seaweedfs: SeaweedS3, tmp_path: Path
) -> None:
    settings = seaweedfs.settings(tmp_path, s3_secret_access_key="not-the-secret")
    store = open_tenant_stores(settings).for_tenant("acme")
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
        open_tenant_stores(settings).for_tenant("acme").put(b"lost")
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
