"""Each tenant's past GPU usage, decayed with a half-life as Slurm's fair share decays it (`fair`,
`multifactor`).

A GPU-hour used `a` hours ago weighs 2^-(a / half-life). Finished jobs fold into one decayed sum per tenant;
running jobs are kept as sums (Σ GPUs and Σ GPUs × e^(rate × start)) so that a tenant's usage costs one step,
not one per running job.
"""

from __future__ import annotations

import math

from bastion.sim.inputs import Inventory


class DecayedUsage:
    """Tenants' GPU-hours so far, each hour weighed by its age (`half_life` hours; inf: never forgets)."""

    def __init__(self, inventory: Inventory, half_life: float) -> None:
        self.half_life = half_life
        #: finished jobs' GPU-hours per tenant, decayed to `as_of`
        self.done_gpu_hours = {t.name: 0.0 for t in inventory.tenants}
        self.as_of = {t.name: 0.0 for t in inventory.tenants}
        #: running jobs per tenant: Σ GPUs, and Σ GPUs × e^(rate × start) (Σ GPUs × start when never decaying)
        self.running_gpus = {t.name: 0.0 for t in inventory.tenants}
        self.running_weighted = {t.name: 0.0 for t in inventory.tenants}
        self.rate = 0.0 if math.isinf(half_life) else math.log(2.0) / half_life

    def at(self, tenant: str, now: float) -> float:
        """The tenant's decayed GPU-hours at `now`, running jobs included."""
        return (self.done_gpu_hours[tenant] * decay(now - self.as_of[tenant], self.half_life)
                + self._running(tenant, now))

    def _running(self, tenant: str, now: float) -> float:
        """Σ over the tenant's running jobs of `decayed_gpu_hours(gpus, start, now, now)`."""
        gpus, weighted = self.running_gpus[tenant], self.running_weighted[tenant]
        if not gpus:
            return 0.0
        if not self.rate:
            return gpus * now - weighted
        return (gpus - math.exp(-self.rate * now) * weighted) / self.rate

    def _weight(self, start: float) -> float:
        return start if not self.rate else math.exp(self.rate * start)

    def started(self, tenant: str, gpus: float, start: float) -> None:
        self.running_gpus[tenant] += gpus
        self.running_weighted[tenant] += gpus * self._weight(start)

    def ended(self, tenant: str, gpus: float, start: float, end: float) -> None:
        self.running_gpus[tenant] -= gpus
        self.running_weighted[tenant] -= gpus * self._weight(start)
        if abs(self.running_gpus[tenant]) < 1e-9:  # none left: drop the rounding residue
            self.running_gpus[tenant] = self.running_weighted[tenant] = 0.0
        self.done_gpu_hours[tenant] = (self.done_gpu_hours[tenant] * decay(end - self.as_of[tenant], self.half_life)
                                       + decayed_gpu_hours(gpus, start, end, end, self.half_life))
        self.as_of[tenant] = end


def decay(hours: float, half_life: float) -> float:
    """What one GPU-hour of usage weighs `hours` later."""
    return 1.0 if math.isinf(half_life) else 2.0 ** (-hours / half_life)


def decayed_gpu_hours(gpus: float, start: float, end: float, now: float, half_life: float) -> float:
    """GPU-hours of `gpus` GPUs busy from `start` to `end`, each hour weighed by its age at `now`."""
    if math.isinf(half_life):
        return gpus * (end - start)
    rate = math.log(2.0) / half_life
    return gpus / rate * (math.exp(-rate * (now - end)) - math.exp(-rate * (now - start)))
