"""EASY backfill, the pass `backfill` and `fair` share: the head of an order starts or gets a reservation; a
later job starts now only if it cannot delay that reservation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bastion.sim.policies.base import EPS

if TYPE_CHECKING:
    from bastion.sim.state import ClusterState, Placement, Queued


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


def schedule(state: ClusterState, now: float, order: list[Queued],
             allow: Callable[[Queued, Placement], bool] | None = None,
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
