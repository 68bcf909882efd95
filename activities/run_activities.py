"""Run bookkeeping activities: conversation start, event segments, webhooks.

Webhooks are signed with HMAC-SHA256 over `"<timestamp>.<body>"` using the
deployment's `AGENTRUN_WEBHOOK_SECRET` (never an activity input, so it never
reaches history). Headers sent with every delivery:

- `X-Agentrun-Timestamp`: unix seconds when this attempt was signed;
- `X-Agentrun-Signature`: `v1=<hex hmac>`;
- `X-Agentrun-Event`: the event type; `X-Agentrun-Delivery`: `<run_id>:<seq>`
  (stable across retries, so receivers can de-duplicate).

A receiver verifies by recomputing the HMAC and rejecting timestamps older than
a few minutes (replay protection). 4xx answers other than 408/429 are permanent
(the receiver rejected the event); everything else is retried by Temporal.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from agentrun.contracts import (
    EventSegment,
    InitRunInput,
    InitRunOutput,
    Message,
    StoreEventsInput,
    WebhookInput,
    WebhookOutput,
    canonical_json,
)
from store.artifacts import ArtifactStore
from store.conversation import ConversationStore

SIGNATURE_HEADER = "X-Agentrun-Signature"
TIMESTAMP_HEADER = "X-Agentrun-Timestamp"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`v1=` + hex HMAC-SHA256 of `"<timestamp>." + body`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance: int = 300) -> bool:
    """Receiver side of :func:`sign` (used by tests and documented for users)."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


class RunActivities:
    def __init__(
        self,
        store: ArtifactStore,
        webhook_secret: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._store = store
        self._conversations = ConversationStore(store)
        self._webhook_secret = webhook_secret
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)

    @activity.defn(name="init_run")
    async def init_run(self, inp: InitRunInput) -> InitRunOutput:
        conv = self._conversations
        system = await asyncio.to_thread(
            conv.put_message, Message(role="system", content=inp.system_prompt)
        )
        goal = await asyncio.to_thread(conv.put_message, Message(role="user", content=inp.goal))
        head = await asyncio.to_thread(conv.append, None, [system, goal])
        script_digest = None
        if inp.script is not None:
            body = canonical_json([t.model_dump(mode="json") for t in inp.script])
            script_digest = await asyncio.to_thread(self._store.put, body)
        return InitRunOutput(conversation_head=head, script_digest=script_digest)

    @activity.defn(name="store_events")
    async def store_events(self, inp: StoreEventsInput) -> EventSegment:
        body = canonical_json([e.model_dump(mode="json") for e in inp.events])
        digest = await asyncio.to_thread(self._store.put, body)
        return EventSegment(first_seq=inp.events[0].seq, last_seq=inp.events[-1].seq, digest=digest)

    @activity.defn(name="deliver_webhook")
    async def deliver_webhook(self, inp: WebhookInput) -> WebhookOutput:
        if not self._webhook_secret:
            raise ApplicationError(
                "the run names a webhook but the deployment has no AGENTRUN_WEBHOOK_SECRET",
                type="WebhookConfigError",
                non_retryable=True,
            )
        body = canonical_json(
            {
                "run_id": inp.run_id,
                "tenant_id": inp.tenant_id,
                "event": inp.event.model_dump(mode="json"),
            }
        )
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._webhook_secret, timestamp, body),
            "X-Agentrun-Event": inp.event.type.value,
            "X-Agentrun-Delivery": f"{inp.run_id}:{inp.event.seq}",
        }
        try:
            resp = await self._http.post(inp.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ApplicationError(
                f"webhook delivery failed: {type(exc).__name__}", type="WebhookUnavailable"
            ) from None
        if resp.status_code >= 400:
            permanent = resp.status_code < 500 and resp.status_code not in (408, 429)
            raise ApplicationError(
                f"webhook receiver answered HTTP {resp.status_code}",
                type="WebhookRejected" if permanent else "WebhookUnavailable",
                non_retryable=permanent,
            )
        return WebhookOutput(status_code=resp.status_code, attempts=activity.info().attempt)

    async def aclose(self) -> None:
        await self._http.aclose()
