"""Issue 2's accuracy target for a case file, shared by every validation file's test."""

from __future__ import annotations

from typing import Any

#: issue 2, section 5: median |rel_error| <= 10% and p90 <= 25%
MEDIAN, P90 = 0.10, 0.25


def assert_meets_target(summary: dict[str, Any]) -> None:
    assert summary["median_abs_rel_error"] <= MEDIAN, summary
    assert summary["p90_abs_rel_error"] <= P90, summary
