"""`sjf`: shortest job first (by the scheduler's estimate: a recorded job's time limit, else its predicted run),
then EASY backfill (easy.py). Not preemptive: a long job that started keeps its GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.sim.policies import easy
from bastion.sim.policies.base import Policy

if TYPE_CHECKING:
    from bastion.sim.state import ClusterState, Queued


class ShortestFirst(Policy):
    """Shortest estimated job first, then EASY backfill; equal estimates keep the static order."""

    name = "sjf"

    def order(self, state: ClusterState, now: float) -> list[Queued]:
        return sorted(state.ordered(), key=lambda q: shortest_estimate(state, q))

    def schedule(self, state: ClusterState, now: float) -> None:
        easy.schedule(state, now, self.order(state, now))


def shortest_estimate(state: ClusterState, queued: Queued) -> float:
    """The job's estimated run in the pool where it is shortest."""
    return min(state.estimate_of(queued, o) for o in queued.options)
