"""`las`: least attained service, discretised as Tiresias's 2D-LAS (Gu et al., NSDI'19): a job's attained
service is GPUs × hours it has run (every run); queues split it at `THRESHOLDS_GPU_HOURS`, the lower queue
first, FIFO (static order) within one, then EASY backfill. Preemptive: a waiting job of a lower queue stops
running jobs of higher ones (the cheapest, preemption.py). Service is reckoned at events (no timer at a
threshold crossing), and Tiresias's starvation guard (promotion after a long wait) is left out.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from bastion.sim.policies.base import Policy
from bastion.sim.policies.preemption import backfill_then_preempt

if TYPE_CHECKING:
    from bastion.sim.state import ClusterState, Queued

#: attained-service queue boundaries, GPU-hours (Tiresias uses two queues in its testbed; three here)
THRESHOLDS_GPU_HOURS = (10.0, 100.0)


class LeastAttained(Policy):
    """Tiresias-style discretised least attained service, preemptive, then EASY backfill."""

    name = "las"

    def attained(self, state: ClusterState, queued: Queued, now: float) -> float:
        """GPU-hours the job has run, its interrupted runs and the current one."""
        done = sum(held * (end - start) for _, start, end, held, _ in queued.segments)
        if queued.started and queued.start is not None:
            done += state.gpus_of(queued) * (now - queued.start)
        return done

    def level(self, state: ClusterState, queued: Queued, now: float) -> int:
        return bisect.bisect_right(THRESHOLDS_GPU_HOURS, self.attained(state, queued, now))

    def order(self, state: ClusterState, now: float) -> list[Queued]:
        return sorted(state.ordered(), key=lambda q: self.level(state, q, now))

    def schedule(self, state: ClusterState, now: float) -> None:
        backfill_then_preempt(self, state, now, lambda waiting, running:
                              self.level(state, waiting, now) < self.level(state, running, now))
