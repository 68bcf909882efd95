"""Content-addressed blob storage for everything too large for workflow history.

Conversation messages, tool arguments, tool output, event segments and workspace
files are stored once per tenant under their sha256 digest, however many steps
refer to them. The local filesystem store is the default; the S3-compatible store
(`store/s3.py`) implements the same interfaces, and `store.backends` picks one
from the settings.

    stores = open_tenant_stores(settings)       # the whole store (a backend)
    acme = stores.for_tenant("acme")            # one tenant's blobs: put/open/exists/size
    digest = acme.put(b"...")                   # → <root>/tenants/acme/ab/cd/<digest>
    stores.for_tenant("globex").exists(digest)  # False: another tenant's view

Design (why it looks like this):

* **Tenant-scoped prefixes.** Every run reads and writes through its tenant's view
  (:meth:`TenantStores.for_tenant`), so a tenant's blobs live under one prefix of
  their own: `root/tenants/<tenant>/<d[:2]>/<d[2:4]>/<digest>` here,
  `<prefix>tenants/<tenant>/blobs/…` on S3. An operator can then export or delete one
  tenant's data by that prefix, and on S3 give it its own bucket policy or lifecycle
  rule; and a digest known to one tenant opens nothing of another's (the API also
  serves only digests a tenant's own run lists: two walls, not one). The price is
  that content two tenants both write is stored twice.
* **Tenant ids are checked here, not trusted** (:func:`check_tenant_id`): the
  pattern every tenant id is created with (`agentrun.contracts.NAME_PATTERN`:
  1-63 letters, digits, `_`, `.`, `-`, starting with a letter or digit), so an id
  is one path segment and cannot be `..`, hold a `/` or be empty. Anything else is
  refused with :class:`InvalidTenantId` before a path or key is built.
* **The legacy fallback.** Blobs written before tenant prefixes sit unscoped
  (`root/<d[:2]>/<d[2:4]>/<digest>`, `<prefix>blobs/…`), and runs recorded then
  still name them. A tenant's view reads (open, exists, size) its own prefix first
  and, on a miss, the unscoped location; it writes only under its own prefix. So a
  run that began before the upgrade goes on, and the API serves its artifacts and
  segments. The unscoped location is shared by every tenant's view, as it was
  shared before; `AGENTRUN_ARTIFACT_LEGACY_READS=false` turns the fallback off (a
  deployment that never had unscoped blobs, or retired them). The unscoped
  put/open/exists/size of a backend remain for that fallback and for tools that
  measure the store itself (bench/); run code holds only :class:`TenantStores`,
  which has no unscoped method to call by mistake.
* **Atomic writes** (temp file, fsync, rename), so a worker killed mid-write never
  leaves a truncated blob under a valid digest, and a retried activity that writes
  the same content again is a no-op.

This module must not: build a path from a tenant id it has not checked, write a
blob outside the writing tenant's prefix, or read another tenant's prefix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

from pydantic import BaseModel

from agentrun.contracts import NAME_RULE, canonical_json, digest_of, is_name

M = TypeVar("M", bound=BaseModel)

TENANTS = "tenants"
"""The folder (local) or key segment (S3) every tenant's prefix sits in."""


class BlobNotFound(KeyError):
    """No blob with that digest."""


class ArtifactStoreError(Exception):
    """A backend that cannot serve the call (not a missing blob: :class:`BlobNotFound`).

        ArtifactStoreError
        ├── ArtifactStoreUnavailable   unreachable, 5xx, throttled, timed out: retry
        ├── ArtifactStoreMisconfigured refused credentials, no such bucket: an operator
        │                              must fix the settings; retrying does not help
        └── InvalidTenantId            a tenant id that could leave its prefix: refused

    Messages name the backend, the bucket and the operation, never a credential.
    """

    retryable = False
    """Whether the same call may succeed later without anyone changing anything."""


class ArtifactStoreUnavailable(ArtifactStoreError):
    retryable = True


class ArtifactStoreMisconfigured(ArtifactStoreError):
    pass


class InvalidTenantId(ArtifactStoreError, ValueError):
    """Not a tenant id (`NAME_PATTERN`): no prefix is built from it."""


def check_tenant_id(tenant_id: str) -> str:
    """`tenant_id` if it is one safe path segment and key segment; else :class:`InvalidTenantId`."""
    if not is_name(tenant_id):
        raise InvalidTenantId(
            f"invalid tenant id {str(tenant_id)[:80]!r} for the artifact store: a tenant id "
            f"is {NAME_RULE}"
        )
    return tenant_id


class ArtifactStore(Protocol):
    """Blobs by digest: one tenant's (:meth:`TenantStores.for_tenant`), or a
    backend's unscoped legacy location."""

    def put(self, data: bytes) -> str:
        """Store bytes; return their sha256 hex digest."""
        ...

    def open(self, digest: str) -> BinaryIO:
        """A binary stream of the blob; raises :class:`BlobNotFound`."""
        ...

    def exists(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int: ...


class TenantStores(Protocol):
    """What run code holds (activities, the conversation chain, the API): a store per
    tenant, and nothing unscoped."""

    def for_tenant(self, tenant_id: str) -> ArtifactStore:
        """The tenant's view; raises :class:`InvalidTenantId` for an unsafe id."""
        ...


class TenantArtifactStore:
    """One tenant's blobs: written to its own prefix, read from it and then (when
    `legacy` is given) from the unscoped location blobs had before tenant prefixes."""

    def __init__(self, tenant_id: str, own: ArtifactStore, legacy: ArtifactStore | None) -> None:
        self.tenant_id = check_tenant_id(tenant_id)
        self._own = own
        self._legacy = legacy

    def __repr__(self) -> str:
        return f"TenantArtifactStore({self.tenant_id!r}, {self._own!r})"

    def put(self, data: bytes) -> str:
        return self._own.put(data)

    def open(self, digest: str) -> BinaryIO:
        try:
            return self._own.open(digest)
        except BlobNotFound:
            legacy = self._legacy
            if legacy is None:
                raise
        return legacy.open(digest)

    def exists(self, digest: str) -> bool:
        return self._own.exists(digest) or (
            self._legacy is not None and self._legacy.exists(digest)
        )

    def size(self, digest: str) -> int:
        try:
            return self._own.size(digest)
        except BlobNotFound:
            legacy = self._legacy
            if legacy is None:
                raise
        return legacy.size(digest)


def _is_digest(digest: str) -> bool:
    return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


class _LocalBlobs:
    """Blobs under `<d[:2]>/<d[2:4]>/<digest>` in one directory (made on first put)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalBlobs({str(self.root)!r})"

    def path(self, digest: str) -> Path:
        if not _is_digest(digest):
            raise BlobNotFound(digest)
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes) -> str:
        digest = digest_of(data)
        path = self.path(digest)
        if path.exists():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def open(self, digest: str) -> BinaryIO:
        try:
            return self.path(digest).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    def exists(self, digest: str) -> bool:
        try:
            return self.path(digest).is_file()
        except BlobNotFound:
            return False

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(digest) from None


class LocalArtifactStore:
    """A directory: tenant `t`'s blobs under `root/tenants/t/<d[:2]>/<d[2:4]>/<digest>`,
    blobs from before tenant prefixes under `root/<d[:2]>/<d[2:4]>/<digest>`.

    Its own put/open/exists/size are the unscoped (legacy) location; runs use
    :meth:`for_tenant`.
    """

    def __init__(self, root: Path, *, legacy_reads: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._unscoped = _LocalBlobs(self.root)
        self._legacy_reads = legacy_reads

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    def tenant_root(self, tenant_id: str) -> Path:
        """The directory holding all of a tenant's blobs (export or delete it whole)."""
        return self.root / TENANTS / check_tenant_id(tenant_id)

    def for_tenant(self, tenant_id: str) -> TenantArtifactStore:
        own = _LocalBlobs(self.tenant_root(tenant_id))
        legacy = self._unscoped if self._legacy_reads else None
        return TenantArtifactStore(tenant_id, own, legacy)

    def put(self, data: bytes) -> str:
        return self._unscoped.put(data)

    def open(self, digest: str) -> BinaryIO:
        return self._unscoped.open(digest)

    def exists(self, digest: str) -> bool:
        return self._unscoped.exists(digest)

    def size(self, digest: str) -> int:
        return self._unscoped.size(digest)


def get_bytes(store: ArtifactStore, digest: str) -> bytes:
    with store.open(digest) as fh:
        return fh.read()


def put_model(store: ArtifactStore, model: BaseModel) -> str:
    """Store a pydantic model as canonical JSON (same content, same digest)."""
    return store.put(canonical_json(model.model_dump(mode="json", exclude_none=True)))


def get_model(store: ArtifactStore, digest: str, cls: type[M]) -> M:
    return cls.model_validate_json(get_bytes(store, digest))
