"""The uncertainty of a step-time prediction: a p10-p90 interval from out-of-sample residuals.

Method (split-conformal, symmetric in log space): for the published runs of the project's case files, the residual
of a row is r = ln(published / predicted). For a request in stratum S, q_S is the conformal quantile of |r| over
the rows of S at level 0.8 (the ceil((n+1)·0.8)-th smallest of n), and the interval is predicted × exp(∓q_S): under
exchangeability it holds the measured step for at least 80% of new runs (10% below, 10% above when the errors are
symmetric). Strata are what the request leaves unknown: whether the software is known (a framework with documented
releases, or a named stack) or not (then the default stack, data/frameworks.toml, predicts it and the residuals
are those of every row predicted with its framework blanked).

data/intervals.json holds q per stratum with the rows and families it came from; benchmarks/bench_holdout.py
computes it (`--write-intervals`); predict/holdout.py checks the method leave-one-family-out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from functools import cache
from typing import Any

from bastion.predict.calibration import DATA_DIR

INTERVALS = DATA_DIR / "intervals.json"
#: the share of new runs an interval is meant to hold (p10 to p90)
LEVEL = 0.8
KNOWN, UNKNOWN = "software known", "software unknown"
STRATA = (KNOWN, UNKNOWN)


def stratum(software_known: bool) -> str:
    return KNOWN if software_known else UNKNOWN


def log_residual(published_s: float, predicted_s: float) -> float:
    return math.log(published_s / predicted_s)


def conformal_quantile(residuals: Iterable[float], level: float = LEVEL) -> float:
    """The split-conformal quantile of |residual|: the ceil((n+1)·level)-th smallest (the largest when n is
    small)."""
    values = sorted(abs(r) for r in residuals)
    if not values:
        raise ValueError("no residuals to calibrate an interval on")
    k = math.ceil((len(values) + 1) * level)
    return values[min(k, len(values)) - 1]


def bounds(predicted_s: float, q: float) -> tuple[float, float]:
    return predicted_s * math.exp(-q), predicted_s * math.exp(q)


@cache
def stored_intervals() -> dict[str, Any]:
    return json.loads(INTERVALS.read_text())


def step_interval(predicted_s: float, software_known: bool = True) -> tuple[float, float]:
    """(p10, p90) of the step time around a prediction, from the stored calibration of its stratum."""
    return bounds(predicted_s, stored_intervals()["strata"][stratum(software_known)]["q"])


def interval_note(software_known: bool = True) -> str:
    s = stored_intervals()["strata"][stratum(software_known)]
    return (f"interval p10-p90: × exp(±{s['q']:.3f}), split-conformal on {s['rows']} published runs of "
            f"{len(s['families'])} publication families ({stratum(software_known)}; predict/data/intervals.json)")
