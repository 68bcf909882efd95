"""Per-key rate limiting: a token bucket per API key id, in this API process.

Each key may make `burst` requests at once and `rate_per_minute` on average; a
refused request learns when to retry. :class:`RateDecision` carries what the
`RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and `Retry-After`
headers say.

Design (why it looks like this):

* **In memory, per API process.** No database round trip per request; with N API
  processes behind a balancer a key gets up to N times the rate. That is the
  documented trade-off (a shared limiter belongs in the proxy in front).
* **The clock is injected** (`clock=`, monotonic seconds), so refill is tested
  without sleeping.
* **Buckets are bounded**: full, idle buckets are dropped when the table grows past
  `max_keys`, so a flood of distinct (even invalid) key ids cannot grow it forever.

This module must not: know about HTTP, or touch the database.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    """`RateLimit-Limit`: the burst (requests allowed at once)."""
    remaining: int
    """`RateLimit-Remaining`: whole requests left right now."""
    reset_seconds: int
    """`RateLimit-Reset`: seconds until the bucket is full again."""
    retry_after: int | None
    """`Retry-After` (seconds) when refused; None when allowed."""


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key id.

    >>> limiter = RateLimiter(rate_per_minute=600, burst=120)
    >>> limiter.check("0123456789ab").allowed
    True
    """

    def __init__(
        self,
        rate_per_minute: int,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if rate_per_minute < 1 or burst < 1:
            raise ValueError("rate_per_minute and burst must be at least 1")
        self.rate_per_minute = rate_per_minute
        self.burst = burst
        self._per_second = rate_per_minute / 60.0
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str) -> RateDecision:
        """Take one request from `key_id`'s bucket, or refuse with when to retry."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key_id)
            if bucket is None:
                if len(self._buckets) >= self._max_keys:
                    self._drop_full(now)
                bucket = self._buckets[key_id] = _Bucket(tokens=float(self.burst), at=now)
            else:
                elapsed = max(0.0, now - bucket.at)
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self._per_second)
                bucket.at = now
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            retry_after = (
                None if allowed else max(1, math.ceil((1.0 - bucket.tokens) / self._per_second))
            )
            return RateDecision(
                allowed=allowed,
                limit=self.burst,
                remaining=int(bucket.tokens),
                reset_seconds=math.ceil((self.burst - bucket.tokens) / self._per_second),
                retry_after=retry_after,
            )

    def _drop_full(self, now: float) -> None:
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + (now - b.at) * self._per_second >= self.burst
        ]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]
