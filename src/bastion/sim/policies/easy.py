"""EASY backfill, the pass `backfill`, `fair` and `sjf` share: each queue's head starts or gets a reservation; a
later job starts now only if it cannot delay any reservation.

A reservation holds the nodes its head will take (state.reserved_nodes): a later job that would still run at
the reservation's start must keep off them. With one queue (the default) this is EASY as published (Lifka 1995;
Mu'alem & Feitelson 2001); with per-queue ordering each queue's head gets its own reservation, so a head
blocked in one queue stalls only its own queue. Reservations are not stacked: each is computed from the running
jobs alone, so two queues' heads may be promised the same nodes; the earlier in the order gets them and the
other is promised again at the next event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bastion.sim.policies.base import EPS

if TYPE_CHECKING:
    from bastion.sim.perf import Option
    from bastion.sim.state import ClusterState, Demand, Queued


@dataclass(frozen=True)
class Reservation:
    """EASY's promise to a queue's head (`job`'s id): `nodes` of `pool` from `start`."""

    job: str
    queue: str
    pool: str
    start: float
    nodes: frozenset[int]


def _keep_off(pool: str, estimate_hours: float, now: float, reservations: list[Reservation]) -> frozenset[int]:
    """The reserved nodes a job starting now in `pool` for `estimate_hours` must not use (it would still run
    when their reservation starts)."""
    nodes: frozenset[int] = frozenset()
    for r in reservations:
        if r.pool == pool and now + estimate_hours > r.start + EPS:
            nodes |= r.nodes
    return nodes


def fits_now_remembering(state: ClusterState, option: Option, too_big: dict[str, Demand]) -> bool:
    """Whether `option` fits now, without a look when `too_big` (per pool, the smallest demand found not to fit in
    this pass) rules it out, and remembering it there when it does not fit (capacity only shrinks in a pass)."""
    demand = state.demand(option)
    smallest = too_big.get(option.pool)
    if smallest is not None and demand >= smallest:
        return False
    if not state.fits_now(option):
        too_big[option.pool] = demand if smallest is None else min(smallest, demand)
        return False
    return True


def _may_backfill(state: ClusterState, queued: Queued, now: float, reservations: list[Reservation],
                  too_big: dict[str, Demand]) -> bool:
    """Whether some pool has room for `queued` now that keeps every reservation: a cheap test (no ranking) that
    rules out most of a long queue behind the heads. `too_big` holds, per pool, the smallest demand found not
    to fit this pass (nothing larger fits either, and capacity only shrinks within a pass)."""
    for option in queued.options:
        if not fits_now_remembering(state, option, too_big):
            continue
        avoid = _keep_off(option.pool, state.estimate_of(queued, option), now, reservations)
        if not avoid or state.fits_now(option, avoid):
            return True
    return False


def schedule(state: ClusterState, now: float, order: list[Queued],
             allow: Callable[[Queued, Option], bool] | None = None,
             reservations: list[Reservation] | None = None) -> list[Reservation]:
    """Start each queue's head in `order` when it fits, else reserve for it; start later jobs that keep every
    reservation. Returns the reservations.

    `allow(queued, option)` filters the pools a job may start in (the fair policy's quota check); `reservations` given are an
    earlier pass's, which this pass keeps (their queues' jobs only backfill)."""
    reservations = list(reservations or ())
    headed = {r.queue for r in reservations}  # queues whose head has been served or reserved for
    too_big: dict[str, Demand] = {}
    for queued in order:
        if queued.started:
            continue
        queue = state.queue_of(queued)
        head = queue not in headed
        if not head and not _may_backfill(state, queued, now, reservations, too_big):
            continue  # ranking every job of a long queue at every event was the 10k-job cost
        options = queued.options
        if allow is not None:
            options = tuple(option for option in options if allow(queued, option))
            if not options:
                continue
        ranked = state.rank(queued, now, options)
        if head:
            best = ranked[0]
            headed.add(queue)
            if best.start <= now + EPS:
                avoid = _keep_off(best.option.pool, best.estimate_hours, now, reservations)
                if state.fits_now(best.option, avoid):
                    state.start(queued, best.option, now, avoid)
                    headed.discard(queue)  # the queue's next job is its head now
                # else another queue's reservation holds the room: this head waits without one
                continue
            nodes = state.reserved_nodes(best.option.pool, state.demand(best.option), best.start, now)
            reservations.append(Reservation(queued.job.id, queue, best.option.pool, best.start, nodes))
            continue
        for place in ranked:
            if place.start > now + EPS:
                break  # a better pool frees up later: wait for it
            avoid = _keep_off(place.option.pool, place.estimate_hours, now, reservations)
            if not avoid or state.fits_now(place.option, avoid):
                state.start(queued, place.option, now, avoid)
                break
    return reservations
