"""The figures a scheduling decision is made on, from a run's job records; and their spread over seeds.

  in-window utilisation  GPU-hours held between the first and the last submission over the cluster's GPU-hours
                         then: the drain after the last arrival does not dilute it (the whole run when every
                         job arrives at once); "used" counts the GPUs jobs asked for, "held" what allocation
                         took (a gang holds its nodes' every GPU)
  JCT                    job completion time: end - submit
  bounded slowdown       max(1, (wait + run) / max(run, 10 s)) (Feitelson et al. 1997): 10 s keeps
                         near-instant jobs from dominating
  Jain's fairness        (Σx)² / (n Σx²) over the tenants with a quota and jobs, x = GPU-hours / quota
                         GPU-hours: 1 when every tenant got the same share of its quota, 1/n when one got all
  mean ± CI              over seeds: Student's t, 95%
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

#: bounded slowdown's floor on run time, hours (10 s)
SLOWDOWN_BOUND_H = 10.0 / 3600.0

#: Student's t at 97.5% for 1..30 degrees of freedom (two-sided 95%); 1.96 beyond
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def overlap_hours(start: float, end: float, window: tuple[float, float]) -> float:
    """Hours of [start, end] inside `window`."""
    return max(0.0, min(end, window[1]) - max(start, window[0]))


def bounded_slowdown(wait_h: float, run_h: float) -> float:
    return max(1.0, (wait_h + run_h) / max(run_h, SLOWDOWN_BOUND_H))


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index of `values` (1.0 for none or all zero)."""
    total, squares = sum(values), sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares > 0 else 1.0


def mean_ci(values: Iterable[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% confidence interval); the half-width is 0 for fewer than two values."""
    values = list(values)
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    t = _T975[len(values) - 2] if len(values) - 1 <= len(_T975) else 1.96
    return mean, t * sd / math.sqrt(len(values))
