"""Content-addressed blob storage for everything too large for workflow history.

Conversation messages, tool arguments, tool output, event segments and workspace
files are stored once under their sha256 digest, however many steps refer to
them. The local filesystem store is the default; the S3-compatible store
(`store/s3.py`) implements the same :class:`ArtifactStore` (put/open/exists/size are
all it needs), and `store.backends.open_artifact_store` picks one from the settings.

Writes are atomic (temp file, fsync, rename), so a worker killed mid-write never
leaves a truncated blob under a valid digest, and a retried activity that writes
the same content again is a no-op.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

from pydantic import BaseModel

from agentrun.contracts import canonical_json, digest_of

M = TypeVar("M", bound=BaseModel)


class BlobNotFound(KeyError):
    """No blob with that digest."""


class ArtifactStoreError(Exception):
    """A backend that cannot serve the call (not a missing blob: :class:`BlobNotFound`).

        ArtifactStoreError
        ├── ArtifactStoreUnavailable   unreachable, 5xx, throttled, timed out: retry
        └── ArtifactStoreMisconfigured refused credentials, no such bucket: an operator
                                       must fix the settings; retrying does not help

    Messages name the backend, the bucket and the operation, never a credential.
    """

    retryable = False
    """Whether the same call may succeed later without anyone changing anything."""


class ArtifactStoreUnavailable(ArtifactStoreError):
    retryable = True


class ArtifactStoreMisconfigured(ArtifactStoreError):
    pass


class ArtifactStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store bytes; return their sha256 hex digest."""
        ...

    def open(self, digest: str) -> BinaryIO:
        """A binary stream of the blob; raises :class:`BlobNotFound`."""
        ...

    def exists(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int: ...


class LocalArtifactStore:
    """Blobs under `root/<d[:2]>/<d[2:4]>/<digest>`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BlobNotFound(digest)
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes) -> str:
        digest = digest_of(data)
        path = self._path(digest)
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
            return self._path(digest).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    def exists(self, digest: str) -> bool:
        try:
            return self._path(digest).is_file()
        except BlobNotFound:
            return False

    def size(self, digest: str) -> int:
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(digest) from None


def get_bytes(store: ArtifactStore, digest: str) -> bytes:
    with store.open(digest) as fh:
        return fh.read()


def put_model(store: ArtifactStore, model: BaseModel) -> str:
    """Store a pydantic model as canonical JSON (same content, same digest)."""
    return store.put(canonical_json(model.model_dump(mode="json", exclude_none=True)))


def get_model(store: ArtifactStore, digest: str, cls: type[M]) -> M:
    return cls.model_validate_json(get_bytes(store, digest))
