"""Optimal checkpoint interval from the save stall δ and the mean time between failures M.

Young (1974), CACM 17(9):530: T = √(2δM), first order, assuming δ ≪ M.
Daly (2006), FGCS 22(3):303, eq. 37: the higher-order estimate of the compute time between dumps
    τ = √(2δM) · [1 + ⅓·√(δ/2M) + (δ/2M)/9] − δ   for δ < 2M,   τ = M otherwise.
Both take δ and M in the same unit and return that unit.
"""

from __future__ import annotations

import math

from bastion.errors import ConfigError


def _check(stall: float, mtbf: float) -> None:
    if stall < 0:
        raise ConfigError(f"checkpoint stall must be >= 0, got {stall}.")
    if mtbf <= 0:
        raise ConfigError(f"MTBF must be > 0, got {mtbf}.", fix="pass a positive --mtbf-hours.")


def young_interval(stall: float, mtbf: float) -> float:
    """Young's first-order optimum √(2·stall·mtbf) (time between checkpoints)."""
    _check(stall, mtbf)
    return math.sqrt(2.0 * stall * mtbf)


def daly_interval(stall: float, mtbf: float) -> float:
    """Daly's higher-order optimum compute time between checkpoints (eq. 37; relative error < 0.2%)."""
    _check(stall, mtbf)
    if stall >= 2.0 * mtbf:
        return mtbf
    ratio = stall / (2.0 * mtbf)
    return math.sqrt(2.0 * stall * mtbf) * (1.0 + math.sqrt(ratio) / 3.0 + ratio / 9.0) - stall


def interval_in_steps(stall_s: float, mtbf_s: float, step_s: float) -> int:
    """Daly's interval rounded to whole optimizer steps (at least 1)."""
    if step_s <= 0:
        raise ConfigError(f"step time must be > 0, got {step_s}.")
    return max(1, round(daly_interval(stall_s, mtbf_s) / step_s))
