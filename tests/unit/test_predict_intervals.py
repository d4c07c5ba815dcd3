"""The interval arithmetic of predict/intervals.py (the calibration itself is checked in tests/validation)."""

from __future__ import annotations

import math

import pytest

from bastion.predict.intervals import LEVEL, bounds, conformal_quantile, step_interval, stored_intervals


def test_the_conformal_quantile_is_the_ceil_n_plus_one_level_th_smallest_magnitude() -> None:
    residuals = [-0.5, 0.1, -0.2, 0.3, 0.05, -0.01, 0.4, 0.02, -0.03]  # n = 9: ceil(10 * 0.8) = 8th smallest |r|
    assert conformal_quantile(residuals) == 0.4
    # too few rows for the level: the largest, never beyond the data
    assert conformal_quantile([0.1, -0.3]) == 0.3
    with pytest.raises(ValueError):
        conformal_quantile([])


def test_bounds_are_symmetric_in_log_space() -> None:
    lo, hi = bounds(2.0, math.log(1.25))
    assert (lo, hi) == pytest.approx((1.6, 2.5))


def test_a_stored_interval_brackets_the_prediction_and_unknown_software_is_wider() -> None:
    assert stored_intervals()["level"] == LEVEL
    known, unknown = step_interval(1.0, True), step_interval(1.0, False)
    assert known[0] < 1.0 < known[1]
    assert unknown[0] < known[0] and unknown[1] > known[1]
