"""Goodput: productive training time over wall time, measured (from a run) and expected (from a model).

Measured: a run's wall time splits into productive steps (kept in the final model), lost steps (computed, then
discarded by a failure or a rollback), checkpoint stalls, recovery (restart + reload) and the rest (start-up,
evaluation, logging). Expected: with checkpoint interval τ (compute between saves), stall δ, restart cost R and
MTBF M, each cycle costs τ + δ and each failure loses on average τ/2 of compute plus R (Daly 2006, first order).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bastion.errors import ConfigError


@dataclass(frozen=True)
class GoodputBreakdown:
    """Where a run's wall time went, in seconds."""

    wall_s: float
    productive_s: float
    lost_s: float
    checkpoint_stall_s: float
    recovery_s: float

    @property
    def other_s(self) -> float:
        """Start-up, logging and anything not attributed above."""
        return max(0.0, self.wall_s - self.productive_s - self.lost_s - self.checkpoint_stall_s - self.recovery_s)

    @property
    def goodput(self) -> float:
        return self.productive_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "other_s": self.other_s, "goodput": self.goodput}


def expected_goodput(interval_s: float, stall_s: float, mtbf_s: float, restart_s: float = 0.0) -> float:
    """Expected fraction of wall time spent on kept compute (first-order model, clipped to [0, 1])."""
    if interval_s <= 0 or mtbf_s <= 0 or stall_s < 0 or restart_s < 0:
        raise ConfigError("interval and MTBF must be > 0, stall and restart >= 0.")
    checkpoint_efficiency = interval_s / (interval_s + stall_s)
    failure_loss = (interval_s / 2.0 + stall_s / 2.0 + restart_s) / mtbf_s
    return max(0.0, min(1.0, checkpoint_efficiency * (1.0 - failure_loss)))
