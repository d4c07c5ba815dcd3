"""`qssf`: Helios's quasi-shortest-service-first (Hu et al., SC'21): jobs by expected GPU time (GPUs × the
scheduler's estimate: a recorded job's time limit, else the predicted run; Helios predicts it from the user's
history), then EASY backfill (easy.py). Not preemptive."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.sim.policies import easy
from bastion.sim.policies.base import Policy

if TYPE_CHECKING:
    from bastion.sim.state import ClusterState, Queued


class QuasiShortestService(Policy):
    """Least expected GPU time first, then EASY backfill; equal ones keep the static order."""

    name = "qssf"

    def order(self, state: ClusterState, now: float) -> list[Queued]:
        return sorted(state.ordered(),
                      key=lambda q: min(o.gpus * state.estimate_of(q, o) for o in q.options))

    def schedule(self, state: ClusterState, now: float) -> None:
        easy.schedule(state, now, self.order(state, now))
