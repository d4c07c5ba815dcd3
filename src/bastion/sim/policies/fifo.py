"""`fifo`: strict queue order (priority, then submit time): nothing starts ahead of a waiting head of its queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.sim.policies.base import EPS, Policy

if TYPE_CHECKING:
    from bastion.sim.state import ClusterState


class Fifo(Policy):
    """Strict order (priority, then submit time): nothing starts ahead of a waiting head of its queue; with
    per-queue ordering a blocked head stalls only its own queue."""

    name = "fifo"

    def schedule(self, state: ClusterState, now: float) -> None:
        blocked: set[str] = set()
        queues = sum(1 for line in state.queues.values() if line)
        for queued in self.order(state, now):
            queue = state.queue_of(queued)
            if queue in blocked:
                continue
            best = state.rank(queued, now)[0]
            if best.start > now + EPS:
                blocked.add(queue)
                if len(blocked) == queues:
                    return
                continue
            state.start(queued, best.option, now)
