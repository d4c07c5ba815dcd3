"""`fair`: fair share with quotas, then EASY backfill; the policy keeps each tenant's decayed past usage."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from bastion.sim.policies import easy
from bastion.sim.policies.base import Policy
from bastion.sim.policies.usage import DecayedUsage
from bastion.sim.state import Demand

if TYPE_CHECKING:
    from bastion.sim.engine import SimConfig
    from bastion.sim.inputs import Inventory
    from bastion.sim.perf import Option, Resolved
    from bastion.sim.state import ClusterState, Queued


class Fair(Policy):
    """Fair share with quotas, then EASY backfill.

    Tenants are served in order of usage / quota (GPU-hours so far over guaranteed GPUs, each hour weighed by
    2^-(age / SimConfig.fair_half_life_hours), as Slurm's fair-share decays usage). First pass: only jobs
    that keep their tenant within its quota (GPUs running + the job's ≤ quota). Second pass: jobs of tenants
    that may borrow, on capacity that is free now and does not delay the first pass's reservation; when the
    first pass reserved nothing, the second pass's own head gets the reservation (else a borrower's job larger
    than its quota would wait behind every later, smaller borrower's). Borrowed nodes are not preempted when
    their owner's tenant comes back: it waits for them like any other job. A tenant that may not borrow never
    runs a job larger than its quota: such a job is not admitted.
    """

    name = "fair"

    def __init__(self, inventory: Inventory, config: SimConfig) -> None:
        super().__init__(inventory, config)
        self.usage = DecayedUsage(inventory, config.fair_half_life_hours)

    def admit(self, resolved: Resolved) -> Resolved:
        tenant = self.inventory.tenant(resolved.job.tenant)
        if tenant.borrow:
            return resolved
        kept, excluded = [], dict(resolved.excluded)
        for o in resolved.options:
            per_node = self.inventory.pool(o.pool).gpus_per_node
            gpus = Demand.of(o.gpus, per_node).held(per_node)
            if gpus <= tenant.quota_gpus:
                kept.append(o)
            else:
                excluded[o.pool] = (f"needs {gpus} GPUs, above tenant '{tenant.name}''s quota of "
                                    f"{tenant.quota_gpus}, and the tenant may not borrow (policy fair)")
        return replace(resolved, options=tuple(kept), excluded=excluded)

    def order(self, state: ClusterState, now: float) -> list[Queued]:
        """Tenants by usage / quota first; equal shares keep the static order."""
        usage = {t.name: self.usage.at(t.name, now) for t in self.inventory.tenants}
        # a queue without quota (the default queue) comes after every queue with one
        share = {t.name: usage[t.name] / t.quota_gpus if t.quota_gpus else math.inf for t in self.inventory.tenants}
        # stable sort of the static order: equal shares keep priority, submit time, input order
        return sorted(state.ordered(), key=lambda q: share[q.job.tenant])

    def schedule(self, state: ClusterState, now: float) -> None:
        order = self.order(state, now)
        reservations = easy.schedule(state, now, order, allow=partial(within_quota, state))
        borrowers = [q for q in order if not q.started and self.inventory.tenant(q.job.tenant).borrow]
        easy.schedule(state, now, borrowers, reservations=reservations)

    def on_start(self, state: ClusterState, queued: Queued, now: float) -> None:
        self.usage.started(queued.job.tenant, state.gpus_of(queued), now)

    def on_finish(self, state: ClusterState, queued: Queued) -> None:
        assert queued.start is not None and queued.end is not None
        self.usage.ended(queued.job.tenant, state.gpus_of(queued), queued.start, queued.end)


def within_quota(state: ClusterState, queued: Queued, option: Option) -> bool:
    """Whether starting `queued` on `option` keeps its tenant's running GPUs within its quota."""
    tenant = state.inventory.tenant(queued.job.tenant)
    gpus = state.gpus_of_option(option)
    return state.running_gpus[tenant.name] + gpus <= tenant.quota_gpus + 1e-9  # shares add up inexactly
