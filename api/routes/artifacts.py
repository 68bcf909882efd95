"""`/v1/runs/{run_id}/artifacts`: list a run's artifacts and download one.

Artifacts are served from the caller's tenant's view of the content-addressed
artifact store (`StoreDep`: the tenant's own prefix), and only the digests the
run itself lists: a digest is not a capability, so knowing one from another run
(or another tenant) gets a 404 here, and another tenant's blob is not in the view
to begin with.

This module must not: serve a digest the run's view does not list, or let the
browser guess a content type (`nosniff`; downloads are attachments).
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Iterator
from typing import Annotated

from fastapi import Path
from fastapi.responses import StreamingResponse

from agentrun.contracts import Digest
from api.deps import ClientDep, SettingsDep, StoreDep, TenantDep
from api.errors import NotFound, problems
from api.routes.params import RunId, runs_router
from api.schemas import ArtifactList
from api.service import run_view

router = runs_router()

CHUNK = 64 * 1024


@router.get(
    "/{run_id}/artifacts",
    response_model=ArtifactList,
    summary="List a run's artifacts",
    responses=problems(404, 422, 503),
)
async def list_artifacts(
    run_id: RunId, client: ClientDep, settings: SettingsDep, tenant: TenantDep
) -> ArtifactList:
    view = await run_view(client, settings, tenant, run_id)
    return ArtifactList(artifacts=view.artifacts)


def content_disposition(name: str) -> str:
    """An attachment header for `name`: its last path segment, as a plain ASCII
    `filename` for old clients and the exact UTF-8 name in `filename*` (RFC 6266)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1] or "artifact"
    ascii_name = re.sub(r"[^A-Za-z0-9._\-]", "_", base)[:200] or "artifact"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(base)}"


@router.get(
    "/{run_id}/artifacts/{digest}",
    summary="Download an artifact",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The artifact's bytes, with its content type and file name",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        **problems(404, 422, 503),
    },
)
async def download_artifact(
    run_id: RunId,
    digest: Annotated[Digest, Path()],
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    store: StoreDep,
) -> StreamingResponse:
    """Only digests listed in the run's artifacts are served (404 otherwise)."""
    view = await run_view(client, settings, tenant, run_id)
    ref = next((a for a in view.artifacts if a.digest == digest), None)
    if ref is None:
        raise NotFound(f"run {run_id} has no artifact {digest}")
    # In a thread: with the S3 store these are network calls.
    try:
        fh = await asyncio.to_thread(store.open, digest)
        size = await asyncio.to_thread(store.size, digest)
    except KeyError:
        raise NotFound(f"artifact {digest} is listed but missing from the artifact store") from None

    def chunks() -> Iterator[bytes]:
        with fh:
            while block := fh.read(CHUNK):
                yield block

    return StreamingResponse(
        chunks(),
        media_type=ref.content_type or "application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": content_disposition(ref.name),
            "X-Content-Type-Options": "nosniff",
        },
    )
