"""`fifo`: strict queue order (priority, then submit time): nothing starts ahead of a waiting head."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.sim.policies.base import EPS, Policy

if TYPE_CHECKING:
    from bastion.sim.state import ClusterState


class Fifo(Policy):
    """Strict order (priority, then submit time): nothing starts ahead of a waiting head."""

    name = "fifo"

    def schedule(self, state: ClusterState, now: float) -> None:
        for queued in self.order(state, now):
            best = state.rank(queued, now)[0]
            if best.start > now + EPS:
                return
            state.start(queued, best.option, now)
