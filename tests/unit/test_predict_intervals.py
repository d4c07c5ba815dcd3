"""The interval arithmetic of predict/intervals.py (the calibration itself is checked in tests/validation)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from bastion.predict import estimate
from bastion.predict.estimate import TimeBreakdown
from bastion.predict.intervals import (
    BUBBLE,
    CORE_TERMS,
    CP,
    LEVEL,
    TERM_CLASS,
    UNVALIDATED,
    Coverage,
    StepShares,
    bounds,
    class_shares,
    conformal_quantile,
    family_conformal_quantile,
    shares_width,
    step_interval,
    stored_intervals,
    stratum_q,
)
from bastion.specs import ParallelPlan, load_cluster, load_model


def test_the_conformal_quantile_is_the_ceil_n_plus_one_level_th_smallest_magnitude() -> None:
    residuals = [-0.5, 0.1, -0.2, 0.3, 0.05, -0.01, 0.4, 0.02, -0.03]  # n = 9: ceil(10 * 0.8) = 8th smallest |r|
    assert conformal_quantile(residuals) == 0.4
    # too few rows for the level: the largest, never beyond the data
    assert conformal_quantile([0.1, -0.3]) == 0.3
    with pytest.raises(ValueError):
        conformal_quantile([])


def test_the_family_conformal_quantile_weighs_families_not_rows() -> None:
    # ten families of weight 1/10 each: a's 20 small residuals count as one family, the nine others are single rows
    # 0.3 .. 1.1; level (K+1)/K · 0.8 = 0.88 of the weight is first reached at the eighth single row, 1.0
    rows = [("a", 0.01 * (i + 1)) for i in range(20)] + [(f"f{i}", (-1) ** i * (0.3 + 0.1 * i)) for i in range(9)]
    assert family_conformal_quantile(rows) == pytest.approx(1.0)
    # pooled by row, a's 20 rows decide it: the ceil(30 · 0.8) = 24th smallest |r|
    assert conformal_quantile(r for _, r in rows) == pytest.approx(0.6)
    # with few families the level needs more than all the weight: the largest |r|, never beyond the data
    assert family_conformal_quantile([("a", 0.1), ("a", -0.2), ("b", 0.05), ("c", 0.15)]) == 0.2
    with pytest.raises(ValueError):
        family_conformal_quantile([])


def test_bounds_are_symmetric_in_log_space() -> None:
    lo, hi = bounds(2.0, math.log(1.25))
    assert (lo, hi) == pytest.approx((1.6, 2.5))


def test_every_term_of_the_step_has_a_class() -> None:
    # a term estimate.py adds (MoE all-to-all, offload) must be classified here, or it counts as unvalidated
    terms = {f.name for f in dataclasses.fields(TimeBreakdown)} - {"step"}
    assert terms == set(TERM_CLASS) | set(CORE_TERMS)


def shares(pp_schedule: str = "1f1b", pp: int = 1, cp: int = 1, seq_len: int = 8192, **terms: float) -> StepShares:
    return StepShares(terms={"compute": 0.8, **terms}, attention=0.04, pp_schedule=pp_schedule, pp=pp, cp=cp,
                      seq_len=seq_len)


def test_what_the_case_files_never_ran_is_unvalidated() -> None:
    coverage = Coverage(deepest_pp={"1f1b": 64, "interleaved-1f1b": 35}, shortest_cp_chunk=4096)
    # a 1F1B bubble at a depth the case files ran is the derived bubble class; ZB-V's is unvalidated
    assert class_shares(shares(pp=32, bubble=0.1), coverage)[BUBBLE] == pytest.approx(0.1)
    zbv = class_shares(shares("zbv", pp=32, bubble=0.1), coverage)
    assert (zbv[BUBBLE], zbv[UNVALIDATED]) == (0.0, pytest.approx(0.1))
    # context parallelism: its communication and the attention it splits; chunks of 1024 tokens were never run
    long = class_shares(shares(cp=2, seq_len=8192, cp_comm=0.02), coverage)
    assert (long[CP], long[UNVALIDATED]) == (pytest.approx(0.06), 0.0)
    short = class_shares(shares(cp=8, seq_len=8192, cp_comm=0.02), coverage)
    assert (short[CP], short[UNVALIDATED]) == (0.0, pytest.approx(0.06))


def test_a_plan_resting_on_cp_or_a_deep_zero_bubble_pipeline_gets_a_wider_interval_than_plain_dp() -> None:
    plain = shares(memory_bound=0.1, dp_comm=0.05)
    for risky in (shares(cp=8, cp_comm=0.1), shares("zbv", pp=32, bubble=0.15)):
        assert shares_width(risky) > shares_width(plain) >= 1.0
    # the same with the real predictor: 405B on 16,384 H100s, cp 8 at 8K tokens on a 32-stage ZB-V pipeline vs
    # a plain data-parallel plan of the same model (whether it fits does not matter to the interval)
    model, cluster = load_model("llama3-405b", 8192), load_cluster("h100-sxm:16384")
    deep = ParallelPlan(dp=32, tp=2, pp=32, cp=8, zero_stage=2, micro_batch=1, global_batch=2048, pp_schedule="zbv",
                        vpp=2, sequence_parallel=True)
    flat = ParallelPlan(dp=16384, zero_stage=3, micro_batch=1, global_batch=16384)
    widths = {}
    for name, plan in (("deep", deep), ("flat", flat)):
        est = estimate(model, cluster, plan, 8192)
        lo, hi = step_interval(est, model)
        assert lo < est.step_time_s < hi
        widths[name] = math.log(hi / est.step_time_s)
    assert widths["deep"] > widths["flat"]


def test_a_stored_interval_brackets_the_prediction_at_least_by_its_strata_q() -> None:
    # (unknown software is not always wider: calibrated out of sample, the known stratum's four families give a q as
    # wide as the unknown stratum's ten, predict/intervals.py)
    assert stored_intervals()["level"] == LEVEL
    model, cluster = load_model("llama3-8b", 4096), load_cluster("h100-sxm:8")
    est = estimate(model, cluster, ParallelPlan(dp=8, micro_batch=1, global_batch=64), 4096)
    for known in (True, False):
        lo, hi = step_interval(est, model, known)
        assert lo < est.step_time_s < hi
        assert math.log(hi / est.step_time_s) == pytest.approx(-math.log(lo / est.step_time_s))
        assert math.log(hi / est.step_time_s) >= stratum_q(known) > 0
