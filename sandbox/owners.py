"""Which owners of sandboxes (workers) are gone, from watching a registry of who polls.

The janitor removes only the sandboxes its own worker created, plus those of workers
that are gone (`sandbox/_janitor.py`). The caller (`worker.py`) lists who is active
and when each was last seen active by the registry (Temporal's pollers of the task
queue and their last access time); an `OwnerWatch` turns a series of such listings
into the janitor's `owner_gone` answer.

Design (why it looks like this):

* **Gone means "its stamp stopped moving"**, measured on this process's monotonic
  clock: an owner is gone once the registry's stamp for it (its last access) has not
  changed for `silent_s` while this process watched. The stamps are never compared
  with this host's clock: hosts' clocks differ, and a host whose clock runs ahead
  would call a live worker gone. A live worker's stamp moves at least once per long
  poll (about a minute), so `silent_s` must be a few of those.
* **The watch must be unbroken and at least `silent_s` long before anyone is gone.**
  One listing says when each owner last polled, not that it keeps polling; and a
  registry that lost its memory (Temporal keeps poller history in memory: a matching
  service restart empties it) looks, for a while, like owners that stopped. A failed
  or untrusted listing ends the watch; the next trusted one starts a new one, in
  which every owner starts out as just seen.
* **A listing is trusted only when it shows this process's own stamp moving** (within
  `silent_s`): this process polls, so a listing without it is of another queue or of
  a registry that does not see the polls, and then it says nothing about the others.
* **An owner the watch never saw** (stopped before the watch began, or forgotten by
  the registry) counts as silent since the watch began.

This module must not: say that anyone is gone when in doubt (no listing, an untrusted
one, a watch shorter than `silent_s`), call this process itself gone, or do I/O (the
caller lists; this module only remembers and compares).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

OwnerGone = Callable[[str], bool]
"""The answer to "has the worker with this identity stopped?" (False when in doubt: its
objects are then kept)."""


def nobody_gone(owner: str) -> bool:
    """The answer when the registry cannot tell: every owner may still be alive."""
    return False


class OwnerWatch:
    """A series of registry listings, as `owner_gone` answers. Not thread-safe: one
    caller (the janitor's sweeps) looks at a time."""

    def __init__(
        self, me: str, silent_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if silent_s <= 0:
            raise ValueError("silent_s must be positive")
        self._me = me
        self._silent_s = silent_s
        self._clock = clock
        self._stamps: dict[str, object] = {}
        """Each owner's stamp in the last listing that named it."""
        self._moved: dict[str, float] = {}
        """When (this process's clock) each owner's stamp was last seen to change."""
        self._since: float | None = None
        """When the current unbroken watch began; None: no watch."""

    def look(self, listing: Mapping[str, object] | None) -> OwnerGone:
        """Record a listing (owner identity → the registry's stamp of its last activity;
        None: the registry could not be asked) and answer for it."""
        now = self._clock()
        if listing is None:
            self._since = None
            return nobody_gone
        if self._since is None:  # a new watch: everyone it knows starts out as just seen
            self._since = now
            self._moved = dict.fromkeys(self._moved, now)
        for owner, stamp in listing.items():
            if owner not in self._stamps or self._stamps[owner] != stamp:
                self._stamps[owner] = stamp
                self._moved[owner] = now
        if self._me not in listing or self._silent(self._me, now):
            self._since = None  # the registry does not see this process poll
            return nobody_gone
        # Forget owners that are silent and no longer listed: they answer the same
        # without an entry (silent since the watch began), and workers come and go.
        for owner in [o for o in self._moved if o not in listing and self._silent(o, now)]:
            del self._moved[owner]
            self._stamps.pop(owner, None)
        if now - self._since < self._silent_s:
            return nobody_gone
        moved, since, me = dict(self._moved), self._since, self._me  # this listing's answer

        def gone(owner: str) -> bool:
            return owner != me and now - moved.get(owner, since) >= self._silent_s

        return gone

    def _silent(self, owner: str, now: float) -> bool:
        since = self._since if self._since is not None else now
        return now - self._moved.get(owner, since) >= self._silent_s
