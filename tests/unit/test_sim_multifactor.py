"""The `multifactor` policy: Slurm's priority factors, each on a hand-made trace whose order is computed by
hand, and their weighted sum."""

from __future__ import annotations

import pytest

from bastion.sim import SimConfig, simulate
from bastion.sim.inputs import Inventory, Tenant, make_pool
from bastion.sim.perf import resolve
from bastion.sim.policies.multifactor import MAX_AGE_HOURS, WEIGHTS, Multifactor
from helpers.sim_jobs import capacity_kept, hourly_checkpoints, recorded


def one_node(x_priority: int = 0, y_priority: int = 0) -> Inventory:
    return Inventory("t", (make_pool("h100", "h100-sxm", 1),),
                     (Tenant("X", 4, True, priority=x_priority), Tenant("Y", 4, True, priority=y_priority)))


def starts(inv: Inventory, jobs, policy: str = "multifactor") -> dict[str, float]:
    result = simulate(resolve(jobs, inv, hourly_checkpoints), inv, SimConfig(policy=policy))
    capacity_kept(result, inv)
    return {j.id: j.start_h for j in result.jobs}


# X0 holds the node 0..4; X1 (submitted at 1) and Y1 (at 2) wait for it
TRACE = [recorded("X0", "X", 4.0, 8, 0.0), recorded("X1", "X", 1.0, 8, 1.0), recorded("Y1", "Y", 1.0, 8, 2.0)]


def test_fair_share_puts_the_tenant_that_used_nothing_ahead_of_an_older_job() -> None:
    # at 4: X has all the usage (factor 2^-(1/0.5) = 0.25, 2,500) and Y none (1, 10,000); the age factors
    # (3 h and 2 h of 168: 18 and 12) cannot undo that: Y1 first
    assert starts(one_node(), TRACE) == {"X0": 0.0, "Y1": 4.0, "X1": 5.0}
    assert starts(one_node(), TRACE, "fifo") == {"X0": 0.0, "X1": 4.0, "Y1": 5.0}


def test_qos_outweighs_fair_share_when_its_weight_does() -> None:
    # X's QOS factor 1 (10,000) + fair share 2,500 beats Y's 0 + 10,000
    assert starts(one_node(x_priority=5), TRACE) == {"X0": 0.0, "X1": 4.0, "Y1": 5.0}


def test_the_factors_sum_with_their_weights() -> None:
    inv = one_node(y_priority=2)
    policy = Multifactor(inv, SimConfig(policy="multifactor"))
    policy.usage.started("X", 8.0, 0.0)  # X holds 8 GPUs from 0: all the usage
    queued = type("Q", (), {})()
    queued.job = recorded("y", "Y", 1.0, 2, 10.0)
    queued.options = resolve([queued.job], inv, hourly_checkpoints)[0].options
    now = 10.0 + MAX_AGE_HOURS / 4
    fairshare = policy.fairshare(now)
    assert fairshare == pytest.approx({"X": 0.25, "Y": 1.0})
    assert policy.priority(queued, now, fairshare) == pytest.approx(
        WEIGHTS["age"] * 0.25 + WEIGHTS["fairshare"] * 1.0 + WEIGHTS["size"] * 2 / 8 + WEIGHTS["qos"] * 1.0)
