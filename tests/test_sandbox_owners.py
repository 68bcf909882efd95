"""`OwnerWatch`: who is gone, from a series of listings of who polls (pure logic).

The listings are what `worker.poller_stamps` reads from Temporal (identity → last
access); the clock is this process's, stepped by hand. The wiring against a real
Temporal server is tested in tests/test_sandbox_ownership.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sandbox.owners import OwnerWatch

ME, OTHER = "1@me", "2@other"
GRACE = 180.0
T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stamp(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def watch(clock: Clock) -> OwnerWatch:
    return OwnerWatch(ME, GRACE, clock=clock)


def test_nobody_is_gone_before_the_watch_has_lasted_the_grace(
    watch: OwnerWatch, clock: Clock
) -> None:
    # OTHER's stamp is old and never moves, and "never-seen" was never listed: still,
    # one listing (or a watch shorter than the grace) says nothing about either.
    for tick in range(3):
        gone = watch.look({ME: _stamp(tick), OTHER: _stamp(-3600)})
        assert not gone(OTHER) and not gone("3@never-seen")
        clock.now += GRACE / 3 - 1


def test_an_owner_whose_stamp_stops_moving_is_gone_after_the_grace_one_that_moves_is_not(
    watch: OwnerWatch, clock: Clock
) -> None:
    moving = "3@moving"
    for tick in range(5):
        gone = watch.look({ME: _stamp(tick), OTHER: _stamp(0), moving: _stamp(tick)})
        clock.now += GRACE / 2
    assert gone(OTHER)
    assert not gone(moving)
    assert gone("4@never-seen")  # silent for as long as the watch has lasted
    assert not gone(ME)


def test_stamps_are_compared_with_each_other_never_with_this_hosts_clock(
    watch: OwnerWatch, clock: Clock
) -> None:
    # Temporal's clock is a day behind this host's (or ahead): a moving stamp is alive.
    day = 24 * 3600.0
    for tick in range(5):
        gone = watch.look({ME: _stamp(tick - day), OTHER: _stamp(tick + day)})
        clock.now += GRACE / 2
    assert not gone(OTHER)


def test_a_failed_listing_or_one_without_this_worker_restarts_the_watch(
    watch: OwnerWatch, clock: Clock
) -> None:
    for tick in range(3):
        watch.look({ME: _stamp(tick), OTHER: _stamp(0)})
        clock.now += GRACE
    for broken in (None, {OTHER: _stamp(0)}):
        assert not watch.look(broken)(OTHER)  # Temporal cannot tell, or does not see us
        clock.now += 1
        # The next good listing begins a new watch, in which OTHER was just seen.
        assert not watch.look({ME: _stamp(100), OTHER: _stamp(0)})(OTHER)
        clock.now += GRACE - 1
        assert not watch.look({ME: _stamp(101), OTHER: _stamp(0)})(OTHER)
        clock.now += 1
        assert watch.look({ME: _stamp(102), OTHER: _stamp(0)})(OTHER)


def test_a_listing_in_which_this_worker_stopped_polling_says_nobody_is_gone(
    watch: OwnerWatch, clock: Clock
) -> None:
    # This worker's own stamp stands still (all its slots busy, or it is draining):
    # the listing shows no polling at all, so it cannot show who stopped.
    for _ in range(4):
        gone = watch.look({ME: _stamp(0), OTHER: _stamp(0)})
        clock.now += GRACE / 2
    assert not gone(OTHER)


def test_an_owner_the_registry_forgot_counts_from_its_last_move(
    watch: OwnerWatch, clock: Clock
) -> None:
    # Temporal drops a poller from its history after a while; while absent, an owner
    # counts as silent since it was last seen moving, not since it disappeared.
    for tick in range(3):
        watch.look({ME: _stamp(tick), OTHER: _stamp(tick)})
        clock.now += GRACE / 2
    gone = watch.look({ME: _stamp(10)})
    assert not gone(OTHER)  # it moved half a grace ago
    clock.now += GRACE / 2
    assert watch.look({ME: _stamp(11)})(OTHER)


def test_the_grace_must_be_positive() -> None:
    with pytest.raises(ValueError, match="silent_s"):
        OwnerWatch(ME, 0)
