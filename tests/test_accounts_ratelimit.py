"""The per-key token bucket: a burst, then refusal with `Retry-After`, then refill,
on an injected clock (no sleeping)."""

from __future__ import annotations

from accounts.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_refused_with_retry_after() -> None:
    limiter = RateLimiter(rate_per_minute=60, burst=5, clock=Clock())
    decisions = [limiter.check("k1") for _ in range(5)]
    assert all(d.allowed and d.retry_after is None for d in decisions)
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert all(d.limit == 5 for d in decisions)
    refused = limiter.check("k1")
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.retry_after == 1  # one request a second
    assert refused.reset_seconds == 5  # five seconds to a full bucket


def test_the_bucket_refills_at_the_rate_and_never_past_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_minute=30, burst=3, clock=clock)  # one per 2 s
    for _ in range(3):
        assert limiter.check("k1").allowed
    refused = limiter.check("k1")
    assert not refused.allowed and refused.retry_after == 2
    clock.now += 2
    assert limiter.check("k1").allowed
    assert not limiter.check("k1").allowed
    clock.now += 3600
    assert [limiter.check("k1").allowed for _ in range(4)] == [True, True, True, False]


def test_keys_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(rate_per_minute=60, burst=1, clock=Clock())
    assert limiter.check("k1").allowed
    assert not limiter.check("k1").allowed
    assert limiter.check("k2").allowed


def test_the_bucket_table_stays_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_minute=60, burst=2, clock=clock, max_keys=10)
    for i in range(100):
        limiter.check(f"k{i}")
    assert len(limiter._buckets) <= 10
    limiter.check("busy")
    limiter.check("busy")
    assert not limiter.check("busy").allowed  # a bounded table still limits a live key
