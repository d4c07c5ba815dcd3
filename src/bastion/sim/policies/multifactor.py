"""`multifactor`: Slurm's multifactor priority (age, job size, fair share with decay, QOS), then EASY backfill
planned with time limits (easy.py; a recorded job's time limit is what the scheduler plans with).

priority = W_age × min(1, wait / max age) + W_fairshare × 2^(-U / S) + W_size × GPUs / cluster GPUs
           + W_qos × queue priority / highest queue priority
U: the tenant's decayed usage over all tenants' (usage.py, SimConfig.fair_half_life_hours as
PriorityDecayHalfLife); S: its quota over all quotas (a queue without quota: factor 0). This is Slurm's
classic fair-share factor and PriorityFavorSmall=NO. The weights are a common site configuration (Slurm's own
defaults are all 0, which leaves plain FIFO); the inventory's queue `priority` is the QOS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.sim.policies import easy
from bastion.sim.policies.base import Policy
from bastion.sim.policies.usage import DecayedUsage

if TYPE_CHECKING:
    from bastion.sim.engine import SimConfig
    from bastion.sim.inputs import Inventory
    from bastion.sim.state import ClusterState, Queued

#: PriorityWeightAge, PriorityWeightFairshare, PriorityWeightJobSize, PriorityWeightQOS
WEIGHTS = {"age": 1000.0, "fairshare": 10000.0, "size": 1000.0, "qos": 10000.0}
#: PriorityMaxAge: a job's age factor reaches 1 after this many hours (Slurm's default: 7 days)
MAX_AGE_HOURS = 168.0


class Multifactor(Policy):
    """Slurm multifactor priority, recomputed at every event, then EASY backfill."""

    name = "multifactor"

    def __init__(self, inventory: Inventory, config: SimConfig) -> None:
        super().__init__(inventory, config)
        self.usage = DecayedUsage(inventory, config.fair_half_life_hours)
        quotas = sum(t.quota_gpus for t in inventory.tenants)
        self.shares = {t.name: t.quota_gpus / quotas if quotas else 0.0 for t in inventory.tenants}
        top = max(t.priority for t in inventory.tenants)
        self.qos = {t.name: t.priority / top if top > 0 else 0.0 for t in inventory.tenants}
        self.cluster_gpus = inventory.gpus

    def fairshare(self, now: float) -> dict[str, float]:
        """Each tenant's fair-share factor: 2^(-usage share / quota share)."""
        usage = {t: self.usage.at(t, now) for t in self.shares}
        total = sum(usage.values())
        return {t: 2.0 ** (-(usage[t] / total if total > 0 else 0.0) / share) if share else 0.0
                for t, share in self.shares.items()}

    def priority(self, queued: Queued, now: float, fairshare: dict[str, float]) -> float:
        tenant = queued.job.tenant
        gpus = min(o.gpus for o in queued.options)
        return (WEIGHTS["age"] * min(1.0, (now - queued.job.submit_hours) / MAX_AGE_HOURS)
                + WEIGHTS["fairshare"] * fairshare[tenant] + WEIGHTS["size"] * min(1.0, gpus / self.cluster_gpus)
                + WEIGHTS["qos"] * self.qos[tenant])

    def order(self, state: ClusterState, now: float) -> list[Queued]:
        fairshare = self.fairshare(now)
        return sorted(state.ordered(), key=lambda q: -self.priority(q, now, fairshare))

    def schedule(self, state: ClusterState, now: float) -> None:
        easy.schedule(state, now, self.order(state, now))

    def on_start(self, state: ClusterState, queued: Queued, now: float) -> None:
        self.usage.started(queued.job.tenant, state.gpus_of(queued), now)

    def on_finish(self, state: ClusterState, queued: Queued) -> None:
        assert queued.start is not None and queued.end is not None
        self.usage.ended(queued.job.tenant, state.gpus_of(queued), queued.start, queued.end)
