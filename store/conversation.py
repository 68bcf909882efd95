"""The conversation as a hash-linked chain of blobs in the artifact store.

Each model call appends one *node* `{"prev": <digest|null>, "messages": [<digest>…]}`
holding only the messages added at that step, and the workflow carries just the
head digest. So the bytes a step adds to history are constant however long the
conversation grows, and a message is stored once however many steps refer to it.

Loading walks the chain back to the root; a small per-process cache keyed by head
digest makes the usual case (the next step of the same run on the same worker)
one blob read instead of N.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from agentrun.contracts import Message, canonical_json
from store.artifacts import ArtifactStore, get_bytes, get_model, put_model


class ConversationStore:
    def __init__(self, store: ArtifactStore, cache_size: int = 256) -> None:
        self._store = store
        self._cache: OrderedDict[str, list[Message]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def put_message(self, message: Message) -> str:
        return put_model(self._store, message)

    def get_message(self, digest: str) -> Message:
        return get_model(self._store, digest, Message)

    def append(self, head: str | None, message_digests: list[str]) -> str:
        """Store a node after `head` with the given messages; return the new head."""
        node = {"prev": head, "messages": message_digests}
        new_head = self._store.put(canonical_json(node))
        if head is not None:
            with self._lock:
                base = self._cache.get(head)
            if base is not None:
                self._remember(new_head, base + [self.get_message(d) for d in message_digests])
        return new_head

    def load(self, head: str) -> list[Message]:
        """All messages up to and including `head`, oldest first."""
        with self._lock:
            cached = self._cache.get(head)
            if cached is not None:
                self._cache.move_to_end(head)
                return list(cached)
        chain: list[list[str]] = []
        cursor: str | None = head
        base: list[Message] = []
        while cursor is not None:
            with self._lock:
                hit = self._cache.get(cursor)
            if hit is not None and cursor != head:
                base = list(hit)
                break
            node = json.loads(get_bytes(self._store, cursor))
            chain.append(node["messages"])
            cursor = node["prev"]
        messages = base
        for digests in reversed(chain):
            messages.extend(self.get_message(d) for d in digests)
        self._remember(head, messages)
        return list(messages)

    def _remember(self, head: str, messages: list[Message]) -> None:
        with self._lock:
            self._cache[head] = list(messages)
            self._cache.move_to_end(head)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
