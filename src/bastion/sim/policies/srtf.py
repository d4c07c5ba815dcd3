"""`srtf`: shortest remaining time first, preemptive: jobs by the scheduler's estimate of the work left, EASY
backfill, then a waiting job whose estimate is shorter than a running job's estimated remaining time stops it
(the cheapest such victims, preemption.py); the victim keeps its checkpointed work and waits again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.sim.policies.base import EPS, Policy
from bastion.sim.policies.preemption import backfill_then_preempt
from bastion.sim.policies.sjf import shortest_estimate

if TYPE_CHECKING:
    from bastion.sim.state import ClusterState, Queued


class ShortestRemaining(Policy):
    """Shortest estimated remaining time first, preemptive, then EASY backfill."""

    name = "srtf"

    def order(self, state: ClusterState, now: float) -> list[Queued]:
        return sorted(state.ordered(), key=lambda q: shortest_estimate(state, q))

    def schedule(self, state: ClusterState, now: float) -> None:
        estimates: dict[int, float] = {}  # a waiting job's estimate, once per event, not once per running job

        def outranks(waiting: Queued, running: Queued) -> bool:
            assert running.start is not None and running.estimate_hours is not None
            estimate = estimates.get(waiting.index)
            if estimate is None:
                estimate = estimates[waiting.index] = shortest_estimate(state, waiting)
            return estimate + EPS < running.start + running.estimate_hours - now

        backfill_then_preempt(self, state, now, outranks)
