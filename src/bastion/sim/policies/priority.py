"""`priority`: queues by the inventory's queue priority, EASY backfill, and preemption of lower queues."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.sim.policies.base import Policy
from bastion.sim.policies.preemption import backfill_then_preempt

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
        backfill_then_preempt(self, state, now, lambda waiting, running:
                              self.level[waiting.job.tenant] > self.level[running.job.tenant])
