"""`fifo`: strict queue order (priority, then submit time): nothing starts ahead of a waiting head of its queue."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from bastion.sim.policies.base import EPS, Policy

if TYPE_CHECKING:
    from bastion.sim.state import ClusterState


class Fifo(Policy):
    """Strict static order (priority, then submit time): nothing starts ahead of a waiting head of its queue; with
    per-queue ordering a blocked head stalls only its own queue.

    The queues' heads are served in the static order across queues (a merge of the per-queue lines), each
    queue until its head cannot start, so an event costs the jobs that start plus one look per queue, not a walk
    of the whole queue."""

    name = "fifo"

    def schedule(self, state: ClusterState, now: float) -> None:
        heads = [(line[0].key, queue) for queue, line in state.queues.items() if line]
        heapq.heapify(heads)
        while heads:
            _, queue = heapq.heappop(heads)
            line = state.queues[queue]
            queued = line[0]
            if not state.can_start_now(queued):
                continue  # blocked: its queue waits
            if len(queued.options) == 1:
                option = queued.options[0]
            else:
                best = state.rank(queued, now)[0]
                if best.start > now + EPS:
                    continue  # a better pool frees up later: the head waits for it, and its queue too
                option = best.option
            state.start(queued, option, now)
            if line:
                heapq.heappush(heads, (line[0].key, queue))
