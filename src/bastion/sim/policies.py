"""Scheduling policies and placements: each policy is a class with one method, `schedule(state, now)`.

A policy looks at the queue through `state` (a `bastion.sim.engine.ClusterState`) and starts jobs with
`state.start(job, option)`. Placement ranks the pools a job can use:
  fastest    by predicted finish (earliest free time of enough nodes + the job's estimated run there)
  first-fit  pools with enough free nodes now, in inventory order; then the others by earliest start
A job takes its best-ranked pool; when that pool is not free now the job waits for it (it does not settle for a
worse pool that happens to be free). Estimated run times, not the sampled ones, drive every decision: the
scheduler cannot know when a job will fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bastion.sim.engine import ClusterState, Placement, Queued

EPS = 1e-9


@dataclass
class Reservation:
    """EASY's promise to the queue's head (`job`'s id): `nodes` nodes of `pool` at `start`; `spare` nodes free then too."""

    job: str
    pool: str
    start: float
    nodes: int
    spare: int


def _backfill_ok(state: ClusterState, place: Placement, now: float, reservation: Reservation | None) -> bool:
    """Whether starting `place` now leaves the head's reservation intact (EASY's two rules)."""
    if reservation is None or place.option.pool != reservation.pool:
        return True
    if now + place.estimate_hours <= reservation.start + EPS:  # done before the head needs the nodes
        return True
    if place.option.nodes <= reservation.spare:  # uses only nodes the head will not need
        reservation.spare -= place.option.nodes
        return True
    return False


def _may_backfill(state: ClusterState, queued: Queued, now: float, reservation: Reservation | None) -> bool:
    """Whether some pool has room for `queued` now that `_backfill_ok` would accept: a cheap test (no ranking)
    that rules out most of a long queue behind the head, which only a start now concerns."""
    for option in queued.options:
        if option.nodes > state.pools[option.pool].free:
            continue
        if (reservation is None or option.pool != reservation.pool or option.nodes <= reservation.spare
                or now + state.estimate_of(queued, option) <= reservation.start + EPS):
            return True
    return False


def _easy(state: ClusterState, now: float, order: list[Queued], allow=None,
          reservation: Reservation | None = None) -> Reservation | None:
    """Start `order`'s head when it fits, else reserve for it; start later jobs that keep the reservation.

    `allow(queued, place)` filters placements (the fair policy's quota check); a `reservation` given is an
    earlier pass's, which this pass keeps (its jobs only backfill)."""
    for queued in order:
        if queued.started or (reservation is not None and not _may_backfill(state, queued, now, reservation)):
            continue  # ranking every job of a long queue at every event was the 10k-job cost
        ranked = state.rank(queued, now)
        if allow is not None:
            ranked = [place for place in ranked if allow(queued, place)]
            if not ranked:
                continue
        if reservation is None:
            best = ranked[0]
            if best.start <= now + EPS:
                state.start(queued, best.option, now)
            else:
                reservation = Reservation(queued.job.id, best.option.pool, best.start, best.option.nodes,
                                          state.free_at(best.option.pool, best.start, now) - best.option.nodes)
            continue
        for place in ranked:
            if place.start > now + EPS:
                break  # a better pool frees up later: wait for it
            if _backfill_ok(state, place, now, reservation):
                state.start(queued, place.option, now)
                break
    return reservation


class Fifo:
    """Strict order (priority, then submit time): nothing starts ahead of a waiting head."""

    name = "fifo"

    def schedule(self, state: ClusterState, now: float) -> None:
        for queued in state.ordered():
            best = state.rank(queued, now)[0]
            if best.start > now + EPS:
                return
            state.start(queued, best.option, now)


class Backfill:
    """EASY backfill: the head gets a reservation; a later job starts now only if it cannot delay it."""

    name = "backfill"

    def schedule(self, state: ClusterState, now: float) -> None:
        _easy(state, now, state.ordered())


class Fair:
    """Fair share with quotas, then EASY backfill.

    Tenants are served in order of usage / quota (GPU-hours so far over guaranteed GPUs, each hour weighed by
    2^-(age / SimConfig.fair_half_life_hours), as Slurm's fair-share decays usage). First pass: only jobs
    that keep their tenant within its quota (GPUs running + the job's ≤ quota). Second pass: jobs of tenants
    that may borrow, on capacity that is free now and does not delay the first pass's reservation; when the
    first pass reserved nothing, the second pass's own head gets the reservation (else a borrower's job larger
    than its quota would wait behind every later, smaller borrower's). Borrowed nodes are not preempted when
    their owner's tenant comes back: it waits for them like any other job.
    """

    name = "fair"

    def schedule(self, state: ClusterState, now: float) -> None:
        order = state.ordered(fair=True, now=now)
        reservation = _easy(state, now, order, allow=state.within_quota)
        borrowers = [q for q in order if not q.started and state.inventory.tenant(q.job.tenant).borrow]
        _easy(state, now, borrowers, reservation=reservation)


POLICIES = {"fifo": Fifo, "backfill": Backfill, "fair": Fair}
PLACEMENTS = ("fastest", "first-fit")
