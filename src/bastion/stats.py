"""The one percentile every report uses (validation errors, simulated waits): linear interpolation between the
two nearest ranks, numpy's default method, so a figure means the same wherever bastion prints it."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, in any order; 0.0 for none."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
