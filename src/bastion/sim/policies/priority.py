"""`priority`: queues by the inventory's queue priority, EASY backfill, and preemption of lower queues."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.sim.policies import easy
from bastion.sim.policies.base import Policy
from bastion.sim.policies.preemption import cheapest_victims

if TYPE_CHECKING:
    from bastion.sim.engine import SimConfig
    from bastion.sim.inputs import Inventory
    from bastion.sim.state import ClusterState, Queued


class Priority(Policy):
    """Higher-priority queues first (the tenant's `priority`; equal ones keep the static order), EASY backfill;
    then a job that still cannot start preempts running jobs of strictly lower-priority queues: in its best
    pool where that makes room, the victims that lose the least work since their last checkpoint
    (preemption.py). A victim loses that work and waits again in its old place."""

    name = "priority"

    def __init__(self, inventory: Inventory, config: SimConfig) -> None:
        super().__init__(inventory, config)
        self.level = {t.name: t.priority for t in inventory.tenants}

    def order(self, state: ClusterState, now: float) -> list[Queued]:
        return sorted(state.ordered(), key=lambda q: -self.level[q.job.tenant])

    def schedule(self, state: ClusterState, now: float) -> None:
        order = self.order(state, now)
        easy.schedule(state, now, order)
        preempted = False
        for queued in order:
            if queued.started:
                continue
            level = self.level[queued.job.tenant]
            lower = [q for q in state.running.values() if self.level[q.job.tenant] < level]
            if not lower:
                continue
            for place in state.rank(queued, now):
                victims = cheapest_victims(state, place.option, lower, now)
                if victims is not None:
                    for victim in victims:
                        state.preempt(victim, now)
                    state.start(queued, place.option, now)
                    preempted = True
                    break
        if preempted:  # room the victims left beyond what their preemptors took
            easy.schedule(state, now, self.order(state, now))
