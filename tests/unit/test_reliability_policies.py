"""The recovery policies' expected goodput (reliability/policies.py), against values worked by hand."""

from __future__ import annotations

import math

import pytest

from bastion.errors import ConfigError
from bastion.reliability import expected_goodput
from bastion.reliability.policies import PolicyInputs, poisson_tail, policy_goodputs, recommend

# τ 1 h, δ 1 min, M 10 h, R 10 min, W 1 h, H 4 h, 16 nodes, 1 spare, 4 replica groups, 10 s steps
INPUTS = PolicyInputs(mtbf_s=36000, nodes=16, step_s=10, checkpoint_stall_s=60, checkpoint_interval_s=3600,
                      restart_s=600, requeue_wait_s=3600, repair_s=14400, spares=1, replicas=4)
E = 3600 / 3660  # compute share of a checkpoint cycle; L = (3600 + 60)/2 = 1830 s lost per failure


def by_policy(inputs: PolicyInputs = INPUTS) -> dict:
    return {r.policy: r for r in policy_goodputs(inputs)}


def test_each_policy_matches_its_formula_worked_by_hand() -> None:
    got = by_policy()
    # requeue: C = 1830 + 600 + 3600 = 6030;  G = E (1 − 6030/36000) = 0.983607 × 0.8325
    assert got["requeue"].cost_per_failure_s == 6030
    assert got["requeue"].goodput == pytest.approx(0.818852, abs=1e-6)
    # shrink: C = 1830 + 2×600 + 14400/16 = 3930;  G = E × 0.890833
    assert got["shrink"].cost_per_failure_s == 3930
    assert got["shrink"].goodput == pytest.approx(0.876230, abs=1e-6)
    # spares: a = 14400/36000 = 0.4, P(no spare) = 1 − e^−0.4 = 0.329680; C = 2430 + 0.329680×3600 = 3616.848;
    # G = E × (1 − 3616.848/36000) × 16/17 = 0.983607 × 0.899532 × 0.941176
    assert got["spares"].cost_per_failure_s == pytest.approx(3616.848, abs=1e-3)
    assert got["spares"].goodput == pytest.approx(0.832739, abs=1e-6) and got["spares"].allocated_nodes == 17
    # replica drop: C = 10 + (3600 + 600)/4 = 1060;  G = E × 0.970556
    assert got["replica-drop"].cost_per_failure_s == 1060
    assert got["replica-drop"].goodput == pytest.approx(0.954645, abs=1e-6)
    assert recommend(policy_goodputs(INPUTS)).policy == "replica-drop"


def test_requeue_is_the_existing_first_order_model_with_the_wait_added_to_the_restart() -> None:
    assert by_policy()["requeue"].goodput == pytest.approx(expected_goodput(3600, 60, 36000, 600 + 3600))


def test_what_does_not_apply_is_said_and_never_recommended() -> None:
    single = by_policy(PolicyInputs(mtbf_s=36000, nodes=1, step_s=10, checkpoint_stall_s=60, spares=0))
    assert not single["shrink"].applicable and "one node" in single["shrink"].note
    assert single["shrink"].cost_per_failure_s is None  # JSON has no infinity
    assert not single["spares"].applicable and not single["replica-drop"].applicable
    assert recommend(list(single.values())).policy == "requeue"


def test_when_nodes_come_back_fast_and_spares_are_cheap_the_recommendation_moves() -> None:
    # no replicas, 20-min restarts, 10-min repairs: a spare almost never runs out (P = 5.4%) and idles 1/65 of
    # the allocation, while shrinking pays a second restart to grow back
    inputs = PolicyInputs(mtbf_s=3 * 3600, nodes=64, step_s=5, checkpoint_stall_s=30, restart_s=1200,
                          requeue_wait_s=7200, repair_s=600, spares=1)
    got = by_policy(inputs)
    assert recommend(list(got.values())).policy == "spares"
    # hours-long repairs on a small job: the spare is idle 1/(N+1) of the time and often in use; shrinking wins
    slow_repair = by_policy(PolicyInputs(mtbf_s=3 * 3600, nodes=4, step_s=5, checkpoint_stall_s=30, restart_s=300,
                                         requeue_wait_s=7200, repair_s=4 * 3600, spares=1))
    assert recommend(list(slow_repair.values())).policy == "shrink"


def test_daly_interval_is_the_default_and_poisson_tail_is_exact() -> None:
    from bastion.reliability import daly_interval

    assert PolicyInputs(mtbf_s=36000, nodes=2, step_s=1, checkpoint_stall_s=60).interval_s == daly_interval(60, 36000)
    assert poisson_tail(0.4, 1) == pytest.approx(1 - math.exp(-0.4))
    assert poisson_tail(2.0, 2) == pytest.approx(1 - 3 * math.exp(-2.0))
    assert poisson_tail(1.0, 0) == 1.0


def test_goodput_never_leaves_zero_to_one_and_bad_inputs_are_refused() -> None:
    awful = by_policy(PolicyInputs(mtbf_s=600, nodes=8, step_s=1, checkpoint_stall_s=60, replicas=2))
    assert all(0.0 <= r.goodput <= 1.0 for r in awful.values())
    assert awful["requeue"].goodput == 0.0
    with pytest.raises(ConfigError):
        PolicyInputs(mtbf_s=0, nodes=1, step_s=1, checkpoint_stall_s=1)
    with pytest.raises(ConfigError):
        PolicyInputs(mtbf_s=10, nodes=1, step_s=1, checkpoint_stall_s=-1)
