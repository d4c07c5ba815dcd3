"""The objective seam: the registry, and an objective written and registered here (its sort key and its floor,
no search edit) whose floor prunes without changing the answer."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bastion.errors import ConfigError
from bastion.planner.objectives import OBJECTIVES, Floors, Objective
from bastion.planner.search import OUT_OF_MEMORY, PlanRequest, RankedPlan, search
from bastion.planner.space import Leaf
from bastion.specs import ParallelPlan, load_cluster, load_model
from bastion.specs.hardware import Cluster


class GpuSeconds(Objective):
    """Test-only: the cheapest step, in GPU-seconds (step time × GPUs), floored by the step-time floor × GPUs."""

    name = "gpu-seconds"
    description = "fewest GPU-seconds per optimizer step"
    bounded_reason = "more GPU-seconds per step than the plans shown"

    def key(self, plan: RankedPlan) -> tuple:
        return (self.value(plan), -plan.tokens_per_s, plan.memory_bytes, plan.order)

    def value(self, plan: RankedPlan) -> float:
        return plan.step_time_s * plan.num_gpus

    def floor(self, floors: Floors, cluster: Cluster, leaf: Leaf, memory: dict[int, float]) -> float:
        return floors.step_time(cluster, leaf) * cluster.num_gpus


@pytest.fixture
def gpu_seconds():
    OBJECTIVES.register(GpuSeconds())
    yield GpuSeconds.name
    del OBJECTIVES[GpuSeconds.name]


def test_an_objective_registered_from_a_test_prunes_without_changing_the_answer(gpu_seconds) -> None:
    req = PlanRequest(model=load_model("llama2-7b"), cluster=load_cluster("h100-sxm:16"), global_batch=64,
                      seq_len=4096, top_k=5, workers=1, objective=gpu_seconds, gpu_counts=(8, 16))
    pruned, full = search(req), search(replace(req, prune=False))
    assert [p.plan for p in pruned.plans] == [p.plan for p in full.plans]
    assert pruned.runner_up.plan == full.runner_up.plan and pruned.alternative.plan == full.alternative.plan
    costs = [p.step_time_s * p.num_gpus for p in pruned.plans]
    assert costs == sorted(costs)
    # its own ranking: the cheapest step is not the fastest one (16 GPUs step faster, 8 cost less)
    fastest = search(replace(req, objective="throughput"))
    assert pruned.plans[0].num_gpus == 8 and fastest.plans[0].num_gpus == 16
    # its floor settled plans unpredicted, counted under its own reason; the census still adds up
    assert pruned.predicted * 3 < full.predicted, "the floor must actually skip predictions here"
    assert pruned.rejected[GpuSeconds.bounded_reason] > 0 and GpuSeconds.bounded_reason not in full.rejected
    assert pruned.evaluated == full.evaluated == pruned.feasible + sum(pruned.rejected.values())
    assert (pruned.feasible + pruned.rejected[GpuSeconds.bounded_reason] + pruned.rejected[OUT_OF_MEMORY]
            == full.feasible + full.rejected[OUT_OF_MEMORY])


def test_an_unknown_objective_is_a_guidance_error_listing_the_registered_ones(gpu_seconds) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'gpu-seconds'") as exc:
        PlanRequest(model=load_model("small"), cluster=load_cluster("cpu:4"), global_batch=8, seq_len=256,
                    objective="gpu-second")
    assert exc.value.fix == "use one of: time-p90, time-median, throughput, mfu, memory, goodput, gpu-seconds."
    assert OBJECTIVES.prose() == "time-p90, time-median, throughput, mfu, memory, goodput or gpu-seconds"


def test_goodput_ranks_by_tokens_times_the_best_policys_goodput() -> None:
    """(That its floor changes nothing but the work is tests/unit/test_planner_search.py's, for every objective.)"""
    from bastion.planner.objectives.goodput import plan_goodput
    from bastion.reliability import default_failure_model
    from bastion.reliability.policies import PolicyInputs, policy_goodputs, recommend

    req = PlanRequest(model=load_model("llama2-7b"), cluster=load_cluster("h100-sxm:16"), global_batch=64,
                      seq_len=4096, top_k=5, workers=1, objective="goodput", gpu_counts=(8, 16))
    pruned = search(req)
    adjusted = [p.tokens_per_s * plan_goodput(p.num_gpus, p.plan.dp, p.step_time_s, p.memory_bytes)
                for p in pruned.plans]
    assert adjusted == sorted(adjusted, reverse=True)
    best = pruned.plans[0]
    # by hand: 16 GPUs fail every 16384 × 1296 / 419 / 16 h; two 8-GPU nodes; the stall is the device's bytes
    # copied at 25 GB/s
    inputs = PolicyInputs(mtbf_s=16384 * 1296 / 419 / best.num_gpus * 3600, nodes=best.num_gpus // 8,
                          step_s=best.step_time_s, checkpoint_stall_s=max(1.0, best.memory_bytes / 25e9),
                          replicas=best.plan.dp)
    assert default_failure_model().mtbf_hours(best.num_gpus) * 3600 == pytest.approx(inputs.mtbf_s)
    expected = recommend(policy_goodputs(inputs)).goodput
    assert plan_goodput(best.num_gpus, best.plan.dp, best.step_time_s, best.memory_bytes) == pytest.approx(expected)
    assert 0.9 < expected < 1.0
    # throughput ignores failures: its winner is never ahead of goodput's on goodput-adjusted tokens/s
    fastest = search(replace(req, objective="throughput")).plans[0]
    assert fastest.tokens_per_s * plan_goodput(fastest.num_gpus, fastest.plan.dp, fastest.step_time_s,
                                               fastest.memory_bytes) <= adjusted[0]


def test_time_p90_ranks_by_the_upper_end_and_time_median_by_the_prediction() -> None:
    from bastion.planner.objectives import DEFAULT_OBJECTIVE, get_objective

    def ranked(order: int, step: float, p90: float) -> RankedPlan:
        return RankedPlan(plan=ParallelPlan(), num_gpus=8, step_time_s=step, tokens_per_s=1.0 / step, mfu=0.4,
                          memory_bytes=1.0, estimate=None, p10_s=step * 0.8, p90_s=p90, order=order)

    # fast on its median but resting on unvalidated terms (wide) vs a little slower and well validated
    fast_but_wide, validated = ranked(0, 1.0, 1.5), ranked(1, 1.1, 1.3)
    assert DEFAULT_OBJECTIVE == "time-p90"
    assert min((fast_but_wide, validated), key=get_objective("time-p90").key) is validated
    assert min((fast_but_wide, validated), key=get_objective("time-median").key) is fast_but_wide
    assert min((fast_but_wide, validated), key=get_objective("throughput").key) is fast_but_wide
