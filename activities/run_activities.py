"""Run bookkeeping activities: conversation start, event segments, webhooks.

The conversation's first node, the script and the event segments are written
through the run's tenant's view of the store (`store/artifacts.py`, tenant
prefixes), taken from the input's `tenant_id`.

`deliver_webhook` keeps its activity name here (committed histories name it) and
hands the work to `activities.webhooks`, which signs the delivery, checks where it
may go and classifies the outcome.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import heartbeating
from activities.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSender, sign, verify
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
from agentrun.webhook_destinations import WebhookAllowList
from store.artifacts import TenantStores
from store.conversation import ConversationStore
from telemetry.metrics import bounded, instruments

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "RunActivities", "sign", "verify"]
"""The signing helpers stay importable from here, where they used to live."""


class RunActivities:
    def __init__(
        self,
        store: TenantStores,
        webhooks: WebhookSender | None = None,
    ) -> None:
        self._stores = store
        self._conversations = ConversationStore(store)
        # Without a sender, every delivery fails with `WebhookConfigError` (no secret).
        self._webhooks = webhooks or WebhookSender(None, WebhookAllowList())

    @activity.defn(name="init_run")
    async def init_run(self, inp: InitRunInput) -> InitRunOutput:
        """Store the first two messages (and the script); heartbeats, as blob stores stall."""
        conv, tenant = self._conversations, inp.tenant_id
        async with heartbeating():
            system = await asyncio.to_thread(
                conv.put_message, tenant, Message(role="system", content=inp.system_prompt)
            )
            goal = await asyncio.to_thread(
                conv.put_message, tenant, Message(role="user", content=inp.goal)
            )
            head = await asyncio.to_thread(conv.append, tenant, None, [system, goal])
            script_digest = None
            if inp.script is not None:
                body = canonical_json([t.model_dump(mode="json") for t in inp.script])
                store = self._stores.for_tenant(tenant)
                script_digest = await asyncio.to_thread(store.put, body)
        return InitRunOutput(conversation_head=head, script_digest=script_digest)

    @activity.defn(name="store_events")
    async def store_events(self, inp: StoreEventsInput) -> EventSegment:
        """One segment of events; heartbeats while the (possibly large) blob is written."""
        async with heartbeating():
            body = canonical_json([e.model_dump(mode="json") for e in inp.events])
            store = self._stores.for_tenant(inp.tenant_id)
            digest = await asyncio.to_thread(store.put, body)
        return EventSegment(first_seq=inp.events[0].seq, last_seq=inp.events[-1].seq, digest=digest)

    @activity.defn(name="deliver_webhook")
    async def deliver_webhook(self, inp: WebhookInput) -> WebhookOutput:
        """POST one event to the run's webhook (`activities.webhooks` says where it may go)."""
        deliveries = instruments().webhook_deliveries
        try:
            status = await self._webhooks.deliver(inp)
        except ApplicationError as exc:
            # Per attempt: `failed` is retried, `refused` is not (bad url, config, 4xx).
            outcome = "refused" if exc.non_retryable else "failed"
            deliveries.add(1, {"outcome": outcome, "error": bounded("error", exc.type or "")})
            raise
        deliveries.add(1, {"outcome": "delivered", "error": ""})
        return WebhookOutput(status_code=status, attempts=activity.info().attempt)
