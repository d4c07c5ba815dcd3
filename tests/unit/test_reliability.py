"""Young/Daly interval, failure rates and goodput against published worked examples.

Figures from /work/shared/reference/reliability.csv (rows copied here with their sources).
"""

import math

import pytest

from bastion.errors import ConfigError
from bastion.reliability import (
    GoodputBreakdown,
    daly_interval,
    default_failure_model,
    expected_goodput,
    young_interval,
)
from bastion.reliability.interval import interval_in_steps

# Daly, FGCS 22(3):303–312 (2006), figure captions: δ = 5 min, R = 10 min, Ts = 500 h → τ_opt (minutes).
DALY_EXAMPLES = [(24 * 60, 117.0), (6 * 60, 57.0), (15, 9.1)]
# reliability.csv `young_interval_example` rows (notes author's derivation): MTTI 10,800 s, δ → T (s).
YOUNG_EXAMPLES = [(6.3, 369.0), (0.78, 130.0), (148.8, 30 * 60.0)]


@pytest.mark.parametrize(("mtbf_min", "expected_min"), DALY_EXAMPLES)
def test_daly_matches_paper_examples(mtbf_min, expected_min):
    # The paper prints whole minutes (one decimal for the last); accept that rounding.
    assert daly_interval(5.0, mtbf_min) == pytest.approx(expected_min, abs=0.5 if expected_min > 20 else 0.05)


@pytest.mark.parametrize(("stall_s", "expected_s"), YOUNG_EXAMPLES)
def test_young_matches_reference_examples(stall_s, expected_s):
    # The notes round to ~1% ("≈ 2 min", "30 min").
    assert young_interval(stall_s, 10_800.0) == pytest.approx(expected_s, rel=0.01)


def test_daly_is_below_young_for_small_stall_and_caps_at_mtbf():
    assert daly_interval(5.0, 1440.0) < young_interval(5.0, 1440.0)
    assert daly_interval(100.0, 40.0) == 40.0  # δ >= 2M: checkpoint once per MTBF


def test_interval_in_steps_rounds_and_never_returns_zero():
    # Daly(1 s, 3600 s) = 84.85 + ... − 1 ≈ 84.8 s → 42 steps of 2 s
    assert interval_in_steps(1.0, 3600.0, 2.0) == round(daly_interval(1.0, 3600.0) / 2.0) == 42
    assert interval_in_steps(0.0, 3600.0, 2.0) == 1


def test_bad_inputs_raise_guidance():
    with pytest.raises(ConfigError):
        daly_interval(1.0, 0.0)
    with pytest.raises(ConfigError):
        young_interval(-1.0, 10.0)


def test_default_failure_rate_reproduces_llama3_mtti():
    # Llama 3 405B: 419 unexpected interruptions in 54 days on 16,384 GPUs → job MTTI ≈ 3.1 h (reliability.csv).
    model = default_failure_model()
    assert model.mtbf_hours(16_384) == pytest.approx(54 * 24 / 419, rel=1e-9)
    assert model.mtbf_hours(16_384) == pytest.approx(3.1, abs=0.05)
    # MTBF scales as 1/N
    assert model.mtbf_hours(1024) == pytest.approx(16 * model.mtbf_hours(16_384))


def test_rsc_observation_gives_its_own_mttf():
    rsc = default_failure_model("meta-rsc-a100-1024")
    assert rsc.mtbf_hours(1024) == pytest.approx(7.9)
    with pytest.raises(ConfigError, match="Did you mean"):
        default_failure_model("meta-rsc-a100-1025")


def test_goodput_breakdown_accounts_all_time():
    b = GoodputBreakdown(wall_s=100.0, productive_s=80.0, lost_s=5.0, checkpoint_stall_s=3.0, recovery_s=7.0)
    assert b.goodput == pytest.approx(0.8)
    assert b.other_s == pytest.approx(5.0)
    assert b.to_dict()["goodput"] == pytest.approx(0.8)


def test_expected_goodput_is_highest_near_daly_interval():
    stall, mtbf, restart = 6.3, 10_800.0, 60.0
    best = daly_interval(stall, mtbf)
    at_best = expected_goodput(best, stall, mtbf, restart)
    assert at_best > expected_goodput(best / 4, stall, mtbf, restart)
    assert at_best > expected_goodput(best * 4, stall, mtbf, restart)
    # first-order value: τ/(τ+δ) · (1 − (τ/2 + δ/2 + R)/M)
    expect = best / (best + stall) * (1 - (best / 2 + stall / 2 + restart) / mtbf)
    assert at_best == pytest.approx(expect)
    assert 0.9 < at_best < 1.0
    assert math.isclose(expected_goodput(10.0, 0.0, 1e12), 1.0, rel_tol=1e-9)
