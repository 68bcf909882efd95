"""The conversation as a hash-linked chain of blobs in the artifact store.

Each model call appends one *node* `{"prev": <digest|null>, "messages": [<digest>…]}`
holding only the messages added at that step, and the workflow carries just the
head digest. So the bytes a step adds to history are constant however long the
conversation grows, and a message is stored once however many steps refer to it.

Loading walks the chain back to the root; a small per-process cache makes the usual
case (the next step of the same run on the same worker) one blob read instead of N.

Design (why it looks like this):

* **Every call names the run's tenant**, and every blob is read and written through
  that tenant's view (`TenantStores.for_tenant`, `store/artifacts.py`), so the chain
  lives under the tenant's prefix; a chain begun before tenant prefixes is still
  read through the view's fallback to the unscoped location.
* **The cache is keyed by (tenant, head)**, not by head alone: the same digest in
  two tenants is two chains as far as the store is concerned (one tenant's blobs
  may be deleted or exported without the other's), so one tenant's cached
  messages are never handed to another's run.

This module must not: read or write a blob outside the tenant's view, or let the
cache answer for a tenant other than the one that filled it.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from agentrun.contracts import Message, canonical_json
from store.artifacts import TenantStores, get_bytes, get_model, put_model

_Key = tuple[str, str]
"""(tenant id, head digest)."""


class ConversationStore:
    def __init__(self, stores: TenantStores, cache_size: int = 256) -> None:
        self._stores = stores
        self._cache: OrderedDict[_Key, list[Message]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def put_message(self, tenant: str, message: Message) -> str:
        return put_model(self._stores.for_tenant(tenant), message)

    def get_message(self, tenant: str, digest: str) -> Message:
        return get_model(self._stores.for_tenant(tenant), digest, Message)

    def append(
        self,
        tenant: str,
        head: str | None,
        message_digests: list[str],
        messages: list[Message] | None = None,
    ) -> str:
        """Store a node after `head` with the given messages; return the new head.

        `messages`, when the caller has them, are those digests' messages in order:
        the cache then extends without reading back blobs just written (on S3, one
        GET each)."""
        store = self._stores.for_tenant(tenant)
        node = {"prev": head, "messages": message_digests}
        new_head = store.put(canonical_json(node))
        if head is not None:
            with self._lock:
                base = self._cache.get((tenant, head))
            if base is not None:
                if messages is None or len(messages) != len(message_digests):
                    messages = [get_model(store, d, Message) for d in message_digests]
                self._remember((tenant, new_head), base + messages)
        return new_head

    def load(self, tenant: str, head: str) -> list[Message]:
        """All messages up to and including `head`, oldest first."""
        with self._lock:
            cached = self._cache.get((tenant, head))
            if cached is not None:
                self._cache.move_to_end((tenant, head))
                return list(cached)
        store = self._stores.for_tenant(tenant)
        chain: list[list[str]] = []
        cursor: str | None = head
        base: list[Message] = []
        while cursor is not None:
            with self._lock:
                hit = self._cache.get((tenant, cursor))
            if hit is not None and cursor != head:
                base = list(hit)
                break
            node = json.loads(get_bytes(store, cursor))
            chain.append(node["messages"])
            cursor = node["prev"]
        messages = base
        for digests in reversed(chain):
            messages.extend(get_model(store, d, Message) for d in digests)
        self._remember((tenant, head), messages)
        return list(messages)

    def _remember(self, key: _Key, messages: list[Message]) -> None:
        with self._lock:
            self._cache[key] = list(messages)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
