"""`gavel`: heterogeneity-aware allocation across accelerator types, after Gavel (Narayanan et al., "Heterogeneity-
Aware Cluster Scheduling Policies for Deep Learning Workloads", OSDI'20).

Gavel's insight: jobs gain unequally from a faster accelerator, so the fast pool should go to the jobs it speeds up
most. A job's throughput ratio on a pool is its predicted speed there (the planner's tokens/s, or a recorded
job's duration scaled by the pools' speeds: perf.py) over its speed on its slowest pool. At each event every
(waiting job, pool) pair is ranked by that ratio, highest first (equal ratios: the static queue order, then the
inventory's pool order), and each pair whose job still waits and fits now starts: under contention the fast pool
goes to the job with the largest gain there, and a job whose best pool is full takes a slower one that is free
(work-conserving). This is Gavel's max-sum-throughput objective solved greedily at events; Gavel's LP,
time-sliced rounds and space sharing are left out, and it is not preemptive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.sim.policies.base import Policy
from bastion.sim.policies.easy import fits_now_remembering

if TYPE_CHECKING:
    from bastion.sim.engine import SimConfig
    from bastion.sim.inputs import Inventory
    from bastion.sim.perf import Option
    from bastion.sim.state import ClusterState, Demand, Queued


def throughput_ratios(queued: Queued) -> list[float]:
    """Per option of the job: its speed there over its speed on its slowest pool (1.0 where all are equal)."""
    hours = [option.compute_hours(queued.job.tokens) for option in queued.options]
    slowest = max(hours)
    return [slowest / h if h > 0 else 1.0 for h in hours]


class Gavel(Policy):
    """Heterogeneity-aware: the (job, pool) pairs of the highest throughput ratio start first; not preemptive."""

    name = "gavel"

    def __init__(self, inventory: Inventory, config: SimConfig) -> None:
        super().__init__(inventory, config)
        #: (-ratio, the job's static key, pool order, job, option), sorted; kept across events
        self.pairs: list[tuple[float, tuple[int, int, float, int], int, Queued, Option]] = []
        #: indices of the jobs whose pairs are listed
        self.listed: set[int] = set()

    def _list_new(self, state: ClusterState) -> None:
        fresh = []
        for queued in state.waiting:
            if queued.index in self.listed:
                continue
            self.listed.add(queued.index)
            for ratio, option in zip(throughput_ratios(queued), queued.options, strict=True):
                fresh.append((-ratio, queued.key, state.pool_order[option.pool], queued, option))
        if fresh:
            self.pairs.extend(fresh)
            self.pairs.sort(key=lambda pair: pair[:3])  # nearly sorted already: Timsort merges the new run

    def schedule(self, state: ClusterState, now: float) -> None:
        self._list_new(state)
        too_big: dict[str, Demand] = {}  # per pool: the smallest demand found not to fit (capacity only shrinks)
        kept = []
        for pair in self.pairs:
            queued, option = pair[3], pair[4]
            if queued.started:
                continue  # started by an earlier pair (or this pass): its other pairs go
            kept.append(pair)
            if fits_now_remembering(state, option, too_big):
                state.start(queued, option, now)
                kept.pop()
        self.pairs = [pair for pair in kept if not pair[3].started]

    def on_finish(self, state: ClusterState, queued: Queued) -> None:
        self.listed.discard(queued.index)  # an interrupted job is listed again when it waits again
