"""The honest figures (issue 13 §3): every publication family of the project's three case files predicted with
its interval calibrated on the other families only, and which families the predictor has seen.

Measured (benchmarks/bench_holdout.py, benchmarks/results/holdout.json), 226 rows of 11 families:
    software known    median |error| 7.4%, p90 21.3%, held-out interval coverage 91.2%, median width 44.7%
    software unknown  median |error| 12.6%, p90 35.7%, coverage 92.0%, median width 86.1%
(q the family-weighted conformal quantile since branch intervals2; with it pooled by row they were 89.4% / 41.7% and
88.5% / 75.7%; with one width per stratum 85.0% / 34.0% and 80.5% / 65.0%)
Every family is in-sample for the point prediction (data/holdout.toml says why): no figure here is an
out-of-sample accuracy of the point prediction; the interval coverage is held out by family. The shipped interval
is calibrated on other files' rows: test_interval_calibration.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from targets import P90

from bastion.predict.holdout import FAMILY_COLUMN, family_notes, fit, leave_one_family_out
from bastion.predict.intervals import KNOWN, LEVEL, STRATA, UNKNOWN
from bastion.predict.validate import PUBLIC_CASES, read_cases

DATA = Path(__file__).parent / "data"
CASE_FILES = (PUBLIC_CASES, DATA / "nemo_cases.csv", DATA / "torchtitan_cases.csv")
REPORT = leave_one_family_out(CASE_FILES)
#: issue 13: leave-one-family-out median |error| <= 9%, p90 <= 25%
MEDIAN_LOFO = 0.09


def test_every_row_is_predicted_in_both_strata() -> None:
    assert not REPORT.skipped
    assert len(REPORT.cases) == sum(len(read_cases(p)) for p in CASE_FILES)


def test_every_family_of_the_case_files_is_accounted_for() -> None:
    notes = family_notes()
    families = {r[FAMILY_COLUMN] for p in CASE_FILES for r in read_cases(p)}
    assert families <= set(notes), families - set(notes)
    for name in families:
        assert isinstance(notes[name]["in_sample"], bool) and notes[name]["why"], name


def test_held_out_intervals_cover_at_least_the_level(record_property: pytest.RecordProperty) -> None:
    s = REPORT.summary()
    record_property("holdout_summary", s)
    record_property("holdout_families", REPORT.families())
    for stratum in STRATA:
        e = s["all_families"][stratum]
        print(f"\n{stratum}: {e['n']} rows, median |error| {e['median_abs_rel_error']:.1%}, p90 "
              f"{e['p90_abs_rel_error']:.1%}, held-out coverage {e['coverage']:.1%}, median width "
              f"{e['median_interval_width']:.1%}")
    assert s["all_families"][KNOWN]["coverage"] >= LEVEL
    # without the software the default stack is further off and the interval says so: wider, still holding
    assert s["all_families"][UNKNOWN]["median_interval_width"] > s["all_families"][KNOWN]["median_interval_width"]
    assert s["all_families"][UNKNOWN]["coverage"] >= LEVEL


def test_the_median_and_p90_error_meet_the_issue_target() -> None:
    e = REPORT.summary()["all_families"][KNOWN]
    assert e["median_abs_rel_error"] <= MEDIAN_LOFO and e["p90_abs_rel_error"] <= P90, e


def test_a_family_is_never_calibrated_on_itself() -> None:
    # the held-out calibration of a family (q, κ, coverage) is the one computed from the other families' rows alone
    family = "nemo_long_context"
    others = fit(c for c in REPORT.cases if c.family != family)
    case = next(c for c in REPORT.cases if c.family == family)
    q, w = others.q[KNOWN], others.width(case, KNOWN)
    assert case.interval[KNOWN] == pytest.approx((case.predicted_s[KNOWN] * math.exp(-q * w),
                                                  case.predicted_s[KNOWN] * math.exp(q * w)))
    everyone = fit(REPORT.cases)
    # its own rows would change it: they are the context-parallel runs at the shortest chunk
    assert (q, w) != pytest.approx((everyone.q[KNOWN], everyone.width(case, KNOWN)))
