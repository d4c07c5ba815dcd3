"""Issue 2's accuracy target for a case file, and the per-group error summary, shared by every validation file's
test."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bastion.predict.validate import ValidationReport
from bastion.stats import percentile

#: issue 2, section 5: median |rel_error| <= 10% and p90 <= 25%
MEDIAN, P90 = 0.10, 0.25


def assert_meets_target(summary: dict[str, Any]) -> None:
    assert summary["median_abs_rel_error"] <= MEDIAN, summary
    assert summary["p90_abs_rel_error"] <= P90, summary


def errors_by(report: ValidationReport, group_of: Callable[[str], str]) -> dict[str, dict[str, float]]:
    """Per group (group_of(case_id)): row count, median and p90 |error|, median signed error."""
    groups: dict[str, list[float]] = defaultdict(list)
    for case in report.cases:
        groups[group_of(case.case_id)].append(case.rel_error)
    out = {}
    for name, errs in sorted(groups.items()):
        out[name] = {"n": len(errs), "median_abs": statistics.median(abs(e) for e in errs),
                     "p90_abs": percentile((abs(e) for e in errs), 90), "median_signed": statistics.median(errs)}
    return out
