"""`kueue`: Kueue-style ClusterQueues in cohorts: nominal quota, borrowing and lending limits, and reclaim.

Each tenant is a ClusterQueue (inventory: `quota_gpus` = nominal quota, `cohort`, `borrowing_limit_gpus`,
`lending_limit_gpus`; inputs.py). A job is admitted when its queue's GPUs in use, with the job's, stay within the
nominal quota, or when the excess is borrowed: the queue is in a cohort, the excess is within its borrowing
limit, and the cohort's borrowed GPUs altogether stay within what its members lend (each member's unused
quota, up to its lending limit). A queue outside every cohort never borrows; a queue with no quota and no
cohort (the trace's `default` queue) runs nothing and its jobs are unschedulable.

Queues are served BestEffortFIFO (Kueue's default): each job in the static order (priority, submit) takes the
first pool, best first, where it is admitted and fits now; one that does not fit does not hold back the jobs
behind it. Reclaim: a job within its queue's nominal quota that does not fit preempts running jobs of cohort
queues that are borrowing, those losing the least work since their last checkpoint first (preemption.py).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from bastion.sim.policies.base import EPS, Policy
from bastion.sim.policies.preemption import cheapest_victims
from bastion.sim.state import Demand

if TYPE_CHECKING:
    from bastion.sim.engine import SimConfig
    from bastion.sim.inputs import Inventory, Tenant
    from bastion.sim.perf import Option, Resolved
    from bastion.sim.state import ClusterState, Queued


class Kueue(Policy):
    """ClusterQueues in cohorts: nominal quota, borrowing within limits, reclaim by preempting borrowers."""

    name = "kueue"

    def __init__(self, inventory: Inventory, config: SimConfig) -> None:
        super().__init__(inventory, config)
        self.queues = {t.name: t for t in inventory.tenants}
        #: cohort -> its queues
        self.cohorts: dict[str, list[Tenant]] = {}
        for t in inventory.tenants:
            if t.cohort is not None:
                self.cohorts.setdefault(t.cohort, []).append(t)

    def _lendable(self, tenant: Tenant, used: float) -> float:
        limit = math.inf if tenant.lending_limit_gpus is None else tenant.lending_limit_gpus
        return min(limit, max(0.0, tenant.quota_gpus - used))

    def _ceiling(self, tenant: Tenant) -> float:
        """The most GPUs the queue can ever hold: its quota plus what it may borrow from an idle cohort."""
        if tenant.cohort is None:
            return tenant.quota_gpus
        lent = sum(self._lendable(t, 0.0) for t in self.cohorts[tenant.cohort] if t is not tenant)
        return tenant.quota_gpus + min(tenant.max_borrow_gpus, lent)

    def admit(self, resolved: Resolved) -> Resolved:
        tenant = self.queues[resolved.job.tenant]
        ceiling = self._ceiling(tenant)
        kept, excluded = [], dict(resolved.excluded)
        for o in resolved.options:
            gpus = _held(self.inventory, o)
            if gpus <= ceiling + EPS:
                kept.append(o)
            else:
                excluded[o.pool] = (f"needs {gpus:g} GPUs; queue '{tenant.name}' can hold at most {ceiling:g} GPUs "
                                    f"(quota {tenant.quota_gpus}, cohort {tenant.cohort or 'none'}, policy kueue)")
        return replace(resolved, options=tuple(kept), excluded=excluded)

    def admitted(self, state: ClusterState, queued: Queued, option: Option) -> bool:
        """Whether the queue's quota (borrowing included) admits `queued` on `option` now."""
        tenant = self.queues[queued.job.tenant]
        used = state.running_gpus[tenant.name] + state.gpus_of_option(option)
        if used <= tenant.quota_gpus + EPS:
            return True
        if tenant.cohort is None or used - tenant.quota_gpus > tenant.max_borrow_gpus + EPS:
            return False
        borrowed = lent = 0.0
        for member in self.cohorts[tenant.cohort]:
            u = used if member is tenant else state.running_gpus[member.name]
            borrowed += max(0.0, u - member.quota_gpus)
            lent += self._lendable(member, u)
        return borrowed <= lent + EPS

    def schedule(self, state: ClusterState, now: float) -> None:
        for queued in state.ordered():
            if queued.started:
                continue
            allowed = tuple(o for o in queued.options if self.admitted(state, queued, o))
            if allowed:
                place = next((p for p in state.rank(queued, now, allowed) if p.start <= now + EPS), None)
                if place is not None:
                    state.start(queued, place.option, now)
                    continue
            self._reclaim(state, queued, now)

    def _reclaim(self, state: ClusterState, queued: Queued, now: float) -> None:
        """Start `queued`, within its nominal quota, by preempting borrowers of its cohort."""
        tenant = self.queues[queued.job.tenant]
        if tenant.cohort is None:
            return
        borrowers = {t.name for t in self.cohorts[tenant.cohort]
                     if t is not tenant and state.running_gpus[t.name] > t.quota_gpus + EPS}
        if not borrowers:
            return
        # a job started at this instant is no victim (it would have run for no time)
        candidates = [q for q in state.running.values() if q.job.tenant in borrowers and q.start != now]
        for option in queued.options:
            if state.running_gpus[tenant.name] + state.gpus_of_option(option) > tenant.quota_gpus + EPS:
                continue
            victims = cheapest_victims(state, option, candidates, now)
            if victims is not None:
                for victim in victims:
                    state.preempt(victim, now)
                state.start(queued, option, now)
                return


def _held(inventory: Inventory, option: Option) -> float:
    per_node = inventory.pool(option.pool).gpus_per_node
    return Demand.of(option.gpus, per_node).held(per_node)
