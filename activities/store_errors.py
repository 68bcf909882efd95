"""Artifact store errors as Temporal retry postures, for every activity at once.

Every activity reads or writes the artifact store (conversation, tool output,
segments, workspace files), and the S3 backend raises
:class:`~store.artifacts.ArtifactStoreError` with a `retryable` flag
(`store/s3.py`, `_classified`); every backend refuses a tenant id that could leave
its prefix the same way (`InvalidTenantId`, never retryable). Left alone,
Temporal would retry every such error, so a refused credential or a missing bucket
would retry until the activity's schedule-to-close timeout. This interceptor turns
the error into an `ApplicationError` of the same type name, non-retryable when the
store says retrying cannot help; one place instead of a try/except in every activity.

This module must not: change any other exception, or keep the original chain
(`from None`: the store's message is already the whole story, and the cause may
quote request headers).
"""

from __future__ import annotations

from typing import Any

from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from store.artifacts import ArtifactStoreError


class _Inbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except ArtifactStoreError as exc:
            raise ApplicationError(
                str(exc), type=type(exc).__name__, non_retryable=not exc.retryable
            ) from None


class StoreErrorInterceptor(Interceptor):
    """`Worker(interceptors=[StoreErrorInterceptor()])`."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Inbound(next)
