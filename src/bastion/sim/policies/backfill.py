"""`backfill`: EASY backfill over the static queue order (see easy.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.sim.policies import easy
from bastion.sim.policies.base import Policy

if TYPE_CHECKING:
    from bastion.sim.state import ClusterState


class Backfill(Policy):
    """EASY backfill: the head gets a reservation; a later job starts now only if it cannot delay it."""

    name = "backfill"

    def schedule(self, state: ClusterState, now: float) -> None:
        easy.schedule(state, now, self.order(state, now))
