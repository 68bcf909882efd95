"""What the `/v1/runs` route modules share: their router settings and the run id.

The run routes are split by what they do (`runs`, `events`, `control`,
`artifacts`), but to a client they are one resource: one path prefix, one tag,
one way to name a run. Each module builds its router with :func:`runs_router`,
so none of that can drift apart.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.schemas import EXAMPLE_RUN_ID, RUN_ID_PATTERN

RUNS_PREFIX = "/v1/runs"

RunId = Annotated[
    str,
    Path(pattern=RUN_ID_PATTERN, description="The run id", examples=[EXAMPLE_RUN_ID]),
]


def runs_router() -> APIRouter:
    """A router for routes under `/v1/runs`, tagged `runs`."""
    return APIRouter(prefix=RUNS_PREFIX, tags=["runs"])
