"""The janitor: removes this namespace's containers and volumes that nothing needs any more.

Design (why it looks like this):

* **Liveness is the caller's answer** (`is_live`, which the worker asks Temporal), so
  this module decides nothing about runs itself: a run's container and volume go when
  `is_live` says False, kept workspaces included.
* **A pool container is removed only when no run can have it**, because a run may be
  claiming it at this very moment (see `sandbox/_pool.py`: the executor's answer to
  `claim` decides, then the winner renames it). So the janitor asks the executor too:
  - unclaimed and beyond `pool_size`, in this worker's own pool (`pool_id`; the
    oldest stay, ranked among the pool's spare containers of every owner): the
    janitor *claims it first* (`JANITOR_OWNER`) and removes it only if it won; a run
    that won keeps it;
  - unclaimed, of another pool (workers with another pool size or other sandbox
    defaults; see `sandbox/_pool.py`): kept at the size its own workers keep it,
    unless it has stood unclaimed for `RETIRED_POOL_S`. Then its workers are gone (a
    configuration that changed, a deployment removed), or they refill it within a
    sweep: it is claimed first and removed like a surplus one;
  - claimed but still under its pool name: the claimer is finishing, or died between
    the two steps. It goes when the claim is abandoned: the claiming run is not live,
    or already has another container (the claimer's rename can no longer succeed), or
    the owner is no run at all (a janitor that died before removing it);
  - not running (its executor cannot grant a claim), or running but not answering
    for longer than `ORPHAN_GRACE_S`: it goes.
  A pool container that is still being created, and pool volumes without a container,
  are left alone for `ORPHAN_GRACE_S` (a pool fill may be under way).
* **Listings are summaries in one call** (`api.containers`, `api.volumes`): docker-py's
  `containers.list` inspects every container it lists, so one removed meanwhile (a
  run ending, another janitor) failed the whole sweep. Removing something that is
  already gone, or going, is success.
* Everything is found through Docker (labels and names), so a janitor in a freshly
  started worker cleans up after one that crashed.
* **Each worker cleans what it created**: workers, as on separate hosts, share
  Temporal and one Docker engine, and each finds and cleans its own sandboxes.
  Every container and volume is labelled `agentrun.owner` with its creator's
  Temporal identity (`SandboxConfig.owner`), which is how Temporal names its polls.
  That is the SDK's `pid@host`, unique among live processes on hosts with distinct
  names, and deliberately without a random suffix: a worker restarted in place (a
  container's pid 1 again) takes its former life's objects back at once, and two
  live processes that share a name (containers on the host's network) merge into
  one owner, which is the rule before owners: still safe. Docker cannot relabel, so
  ownership is the creator's for the object's whole life: a pool container claimed
  by a run on another worker stays its creator's, as does a run container
  whose later tool calls ran elsewhere. Another worker's object is left alone while
  that worker lives, and **adopted** once `owner_gone` says it is gone; adopted
  objects are then judged by the rules above (run not live: removed; pool
  container: claimed, then removed), so adoption never removes what a live run may
  use. `owner_gone` is the caller's answer from Temporal's pollers of the task
  queue (`sandbox/owners.py`: a worker whose poll stamp stopped moving for minutes;
  nobody when in doubt). An owner that is wrongly called gone (it missed Temporal's
  listing for minutes) loses nothing either: its objects meet the same rules.
  - A sandbox is judged through its container: the volume a kept container names is
    kept, whoever created the volume, and goes with the container's removal.
  - Objects without the label (made before it, or by a sandbox with no owner) keep
    the old rule: any janitor of the namespace judges them by the run's liveness.
  - A worker whose janitor is off (`AGENTRUN_SANDBOX_JANITOR_SECONDS=0`) is still an
    owner: its ended runs' sandboxes stay until it stops polling. Run the janitor on
    every worker of an engine, or on none.

This module must not: touch objects outside its namespace (every listing filters on
the namespace label), remove anything of a run it cannot see (`is_live` is expected
to answer True when in doubt), remove a pool container a run may have claimed, or
remove an object another worker created unless `owner_gone` says that worker is gone
(it is expected to answer False when in doubt).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import docker.errors

from sandbox import _names
from sandbox._channel import ChannelClosed, ExecutorError
from sandbox._connections import Connections
from sandbox._containers import (
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_OWNER,
    LABEL_VOLUME,
    Containers,
)
from sandbox._docker_errors import docker_errors, removal_raced
from sandbox._pool import PoolContainer, as_pool_container
from sandbox.base import JanitorReport, RunRef, SandboxError
from sandbox.owners import OwnerGone, nobody_gone

ORPHAN_GRACE_S = 60.0
"""The janitor leaves pool objects younger than this alone (a pool fill may be under way)."""

JANITOR_OWNER = "janitor"
"""The owner a janitor claims a pool container with before removing it (no run's name)."""

RETIRED_POOL_S = 24 * 3600.0
"""An unclaimed container of another pool is removed once it is this old: a pool whose
workers still run refills it (a day's idle pool loses its containers once), while a
pool no worker fills any more (its configuration changed) does not leak for ever."""

HELLO_TIMEOUT_S = 5.0
"""How long the janitor waits for an executor's answer (it then looks again next sweep)."""

IsLive = Callable[[RunRef], bool]
"""The caller's answer to "may this run still need its sandbox?" (True when in doubt)."""

Verdict = Literal["spare", "doomed", "busy"]
"""A pool container is unclaimed, no run's any more, or possibly a run's."""


def created_age_s(created: str) -> float:
    """Seconds since a Docker `CreatedAt` timestamp (0 when unparsable)."""
    try:
        stamp = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (datetime.now(UTC) - stamp).total_seconds()


def _age_order(pool: PoolContainer) -> tuple[float, str]:
    """Oldest first; ties (one-second `Created` stamps) broken by name, the same in
    every worker's ranking."""
    return pool.created, pool.name


def claimer_of(namespace: str, owner: str) -> RunRef | None:
    """The run a pool claim was made for, or None when the owner is no run (a janitor).

    The owner is the run's container name (`sandbox/_pool.py: claim_owner`); workers
    before it wrote `tenant/run`, which is still read (tenant ids hold no `/`).
    """
    run = _names.run_of_container(namespace, owner)
    if run is None and "/" in owner:
        tenant, _, run_id = owner.partition("/")
        run = RunRef(tenant, run_id)
    return run


class Janitor:
    """One sweep at a time per call of `sweep`; safe to run in several processes at once."""

    def __init__(
        self,
        containers: Containers,
        connections: Connections,
        *,
        retired_pool_s: float = RETIRED_POOL_S,
    ) -> None:
        self._containers = containers
        self._connections = connections
        self._docker = containers.docker
        self._ns = containers.ns
        self._pool = containers.config.pool_id
        self._pool_size = containers.config.pool_size
        self._retired_pool_s = retired_pool_s
        self._owner = containers.config.owner

    def sweep(self, is_live: IsLive, owner_gone: OwnerGone = nobody_gone) -> JanitorReport:
        """Remove this namespace's containers and volumes whose run is not live, of
        those this worker created or whose creator is gone (`owner_gone`)."""
        report = JanitorReport()
        with docker_errors("janitor"):
            in_use = self._sweep_containers(is_live, owner_gone, report)
            self._sweep_volumes(is_live, owner_gone, in_use, report)
        return report

    def _anothers(self, labels: dict[str, str] | None, owner_gone: OwnerGone) -> bool:
        """Whether the object is another worker's, which still runs (module docstring)."""
        owner = (labels or {}).get(LABEL_OWNER, "")
        return owner not in ("", self._owner) and not owner_gone(owner)

    def _filters(self) -> dict[str, list[str]]:
        return {"label": [f"{LABEL_NAMESPACE}={self._ns}", f"{LABEL_MANAGED}=true"]}

    def _sweep_containers(
        self, is_live: IsLive, owner_gone: OwnerGone, report: JanitorReport
    ) -> set[str]:
        """Remove the containers nothing needs; returns the volumes of those kept."""
        in_use: set[str] = set()
        spare: list[PoolContainer] = []
        theirs: list[PoolContainer] = []  # another live worker's, in this worker's pool
        for summary in self._docker.api.containers(all=True, filters=self._filters()):
            labels = summary.get("Labels") or {}
            pool = as_pool_container(self._ns, summary)
            if self._anothers(labels, owner_gone):
                if labels.get(LABEL_VOLUME):
                    in_use.add(labels[LABEL_VOLUME])
                if pool is not None and pool.pool == self._pool and pool.state == "running":
                    theirs.append(pool)  # counted, never touched: see the ranking below
                continue
            if pool is not None:
                verdict = self._judge(pool, is_live)
                if verdict == "spare":
                    spare.append(pool)
                elif verdict == "doomed":
                    self._remove(pool.id, pool.name, pool.volume, report)
                elif pool.volume:
                    in_use.add(pool.volume)
                continue
            name = next(iter(summary.get("Names") or []), "").lstrip("/")
            volume = (summary.get("Labels") or {}).get(LABEL_VOLUME, "")
            run = _names.run_of_container(self._ns, name)
            if run is None or not is_live(run):
                self._remove(summary["Id"], name, volume, report)
            elif volume:
                in_use.add(volume)
        # One ranking of this pool's spare containers, whoever created them: the oldest
        # `pool_size` stay and each janitor removes the surplus that is its own, so the
        # pool all its workers fill shrinks back to its size (counting only their own,
        # two workers whose refills raced would each keep `pool_size`). Another
        # worker's are counted as spare unasked: one being claimed keeps one more here
        # until the next sweep.
        ranked = sorted([*theirs, *(c for c in spare if c.pool == self._pool)], key=_age_order)
        now = time.time()
        for pool in spare:
            if pool.pool == self._pool:
                surplus = ranked.index(pool) >= self._pool_size
            else:  # another pool's: its workers keep it at its size, unless it is retired
                surplus = now - pool.created > self._retired_pool_s
            if surplus and self._claim_for_removal(pool):
                self._remove(pool.id, pool.name, pool.volume, report)
            elif pool.volume:
                in_use.add(pool.volume)  # within its pool's size, or a run claimed it first
        return in_use

    def _sweep_volumes(
        self, is_live: IsLive, owner_gone: OwnerGone, in_use: set[str], report: JanitorReport
    ) -> None:
        """Remove the volumes of runs that are not live, and pool volumes left behind."""
        listed = self._docker.api.volumes(filters=self._filters()) or {}
        for volume in listed.get("Volumes") or []:
            name = volume["Name"]
            if name in in_use or self._anothers(volume.get("Labels"), owner_gone):
                continue
            run = _names.run_of_volume(self._ns, name)
            if run is not None:
                doomed = not is_live(run)
            else:
                doomed = created_age_s(volume.get("CreatedAt") or "") > ORPHAN_GRACE_S
            if doomed:
                self._remove_volume(name, report)

    # ================================================================== pool containers

    def _judge(self, pool: PoolContainer, is_live: IsLive) -> Verdict:
        """`spare` (unclaimed), `doomed` (no run can have it) or `busy` (a run may)."""
        age = time.time() - pool.created
        if pool.state == "created":
            return "busy" if age < ORPHAN_GRACE_S else "doomed"  # a pool fill starts it
        if pool.state != "running":
            return "doomed"  # exited, dead or being removed: its executor grants nothing
        try:
            hello = self._connections.channel(pool.id).request(
                {"op": "hello"}, timeout_s=HELLO_TIMEOUT_S
            )
        except (ChannelClosed, ExecutorError, TimeoutError, SandboxError):
            return "doomed" if age > ORPHAN_GRACE_S else "busy"
        owner = hello.get("owner")
        if owner is None:
            return "spare"
        return "doomed" if self._abandoned(pool, str(owner), is_live) else "busy"

    def _abandoned(self, pool: PoolContainer, owner: str, is_live: IsLive) -> bool:
        """Whether a claim that was never followed by the rename can still be finished."""
        run = claimer_of(self._ns, owner)
        if run is None:
            return True  # claimed by a janitor (which died before removing it)
        if not is_live(run):
            return True
        try:
            theirs = self._docker.api.inspect_container(_names.container_name(self._ns, run))
        except docker.errors.NotFound:
            return False  # the claimer is about to rename it
        # Renamed since the listing (so it is the run's now), or the run has another
        # container (so the claimer's rename fails and nobody will use this one).
        return bool(theirs["Id"] != pool.id)

    def _claim_for_removal(self, pool: PoolContainer) -> bool:
        """Claim an unclaimed pool container for the janitor; False when a run was first."""
        try:
            answer = self._connections.channel(pool.id).request(
                {"op": "claim", "owner": JANITOR_OWNER}, timeout_s=HELLO_TIMEOUT_S
            )
        except (ChannelClosed, ExecutorError, TimeoutError, SandboxError):
            return False  # the next sweep looks again
        return bool(answer.get("ok"))

    # ================================================================== removal

    def _remove(self, container_id: str, name: str, volume: str, report: JanitorReport) -> None:
        """Remove a container and its volume; already gone (or going) counts as done."""
        self._connections.forget_container(container_id)
        try:
            self._docker.api.remove_container(container_id, force=True)
            report.removed_containers.append(name)
        except docker.errors.APIError as exc:
            if not removal_raced(exc):
                raise
        if volume:
            self._remove_volume(volume, report)

    def _remove_volume(self, name: str, report: JanitorReport) -> None:
        try:
            self._docker.api.remove_volume(name, force=True)
            report.removed_volumes.append(name)
        except docker.errors.APIError as exc:
            # 404: removed meanwhile; 409: still in use (its container is going, or a
            # run took it): the next sweep looks again.
            if exc.status_code not in (404, 409):
                raise
