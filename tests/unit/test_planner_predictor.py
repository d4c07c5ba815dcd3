"""The planner on top of the real predictor: brute-force optimum on tiny spaces, pruning changes nothing, and
the memory bound really is a lower bound of the predictor's memory."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import replace

import pytest

from bastion.errors import PlanError
from bastion.planner.bounds import StateLowerBound
from bastion.planner.search import PlanRequest, search
from bastion.planner.space import SearchSpace, enumerate_space
from bastion.predict import estimate
from bastion.specs import ParallelPlan, load_cluster, load_model
from bastion.specs.schedules import schedule_names
from helpers.plan_space import memory_variants


def with_hbm(cluster, gib: float):
    return replace(cluster, accelerator=replace(cluster.accelerator, hbm_gib=gib))


def every_plan(model, cluster, global_batch: int):
    """Every combination of every field (a superset of the planner's space, built without space.py)."""
    n = cluster.num_gpus
    for dp, tp, pp, cp in itertools.product(range(1, n + 1), repeat=4):
        if dp * tp * pp * cp != n:
            continue
        for zero, micro, sched, vpp, sp in itertools.product(
                range(4), range(1, global_batch // dp + 1), schedule_names(), range(1, model.num_layers // pp + 2),
                (False, True)):
            if (pp == 1 and (sched, vpp) != ("1f1b", 1)) or (dp * cp == 1 and zero > 0):
                continue  # the planner's canonical forms: no schedule without a pipeline, no ZeRO without dp
            for rc, layers, offload in memory_variants(model, cluster, pp, vpp):
                try:
                    yield ParallelPlan(dp=dp, tp=tp, pp=pp, cp=cp, zero_stage=zero, micro_batch=micro,
                                       global_batch=global_batch, pp_schedule=sched, vpp=vpp, recompute=rc,
                                       sequence_parallel=sp, recompute_layers=layers, activation_offload=offload)
                except PlanError:
                    continue


@pytest.fixture(scope="module")
def tiny_case():
    model = load_model("tiny")
    cluster = load_cluster("h100-sxm:4")
    truth = {}
    for plan in every_plan(model, cluster, 8):
        try:
            truth[plan] = estimate(model, cluster, plan, model.seq_len)
        except PlanError:
            continue
    # a memory size that about half of the valid plans fit in, so that both branches are exercised
    hbm_gib = statistics.median(e.memory.total for e in truth.values()) / 2**30
    return model, with_hbm(cluster, hbm_gib), truth


def test_tiny_space_matches_brute_force_with_the_real_predictor(tiny_case) -> None:
    model, cluster, truth = tiny_case
    fitting = {p: e for p, e in truth.items() if e.memory.total <= cluster.accelerator.hbm_bytes}
    assert 0 < len(fitting) < len(truth)
    result = search(PlanRequest(model=model, cluster=cluster, global_batch=8, seq_len=model.seq_len,
                                top_k=len(fitting) + 1, workers=1))
    assert result.feasible == len(fitting)
    assert {p.plan for p in result.plans} == set(fitting)
    best = min(fitting.values(), key=lambda e: e.step_time_s)
    assert result.plans[0].step_time_s == pytest.approx(best.step_time_s, rel=1e-12)
    assert result.rejected["out of memory"] == len(truth) - len(fitting)


def a_folded_winner() -> PlanRequest:
    """A mixture-of-experts model with 64 experts on 8 devices at a batch of 2 (dp <= 2), on a device memory
    where the best plan folds ep over tp ranks: the leanest folded plan that every better-ranked plan outgrows
    (found by ranking the whole space once, so no memory figure is picked by hand)."""
    model = replace(load_model("tiny-moe"), name="wide-moe", hidden_size=512, num_heads=8, num_kv_heads=4,
                    ffn_hidden_size=1024, num_experts=64, moe_ffn_hidden_size=512)
    req = PlanRequest(model=model, cluster=load_cluster("h100-sxm:8"), global_batch=2, seq_len=512, top_k=10_000,
                      workers=1, space=SearchSpace(pins={"micro_batch": 1}), prune=False)
    leanest_before = math.inf
    for ranked in search(req).plans:  # best first
        if ranked.memory_bytes < leanest_before and ranked.plan.folds_experts:
            return replace(req, cluster=with_hbm(req.cluster, ranked.memory_bytes * (1 + 1e-12) / 2**30),
                           top_k=20, prune=True)
        leanest_before = min(leanest_before, ranked.memory_bytes)
    raise AssertionError("no memory size makes a folded plan the best for this model")


@pytest.mark.parametrize("case", ["dense", "folded experts"])
def test_pruning_never_changes_the_answer_with_the_real_predictor(case: str) -> None:
    if case == "dense":
        req = PlanRequest(model=load_model("llama2-7b"), cluster=load_cluster("a100-40g:8"), global_batch=16,
                          seq_len=2048, top_k=20, workers=1, space=SearchSpace(pins={"micro_batch": 1}))
    else:
        req = a_folded_winner()
    pruned, full = search(req), search(replace(req, prune=False))
    if case != "dense":
        assert pruned.plans[0].plan.folds_experts and pruned.plans[0].plan.ep > pruned.plans[0].plan.dp
    assert [p.plan for p in pruned.plans] == [p.plan for p in full.plans]
    assert pruned.evaluated == full.evaluated == pruned.feasible + sum(pruned.rejected.values())
    # the bounds settle plans unpredicted: as out of memory (exactly what the full search finds) or as slower
    # than the plans shown (feasible or not in the full search); every other reason is counted alike
    from bastion.planner.search import BOUNDED_OUT, OUT_OF_MEMORY
    settled = pruned.feasible + pruned.rejected[OUT_OF_MEMORY] + pruned.rejected[BOUNDED_OUT]
    assert settled == full.feasible + full.rejected[OUT_OF_MEMORY]
    assert {r: n for r, n in pruned.rejected.items() if r not in (OUT_OF_MEMORY, BOUNDED_OUT)} == {
        r: n for r, n in full.rejected.items() if r != OUT_OF_MEMORY}
    assert pruned.predicted < full.predicted  # the bounds did skip work


def test_state_bound_is_below_the_predicted_memory_of_every_plan() -> None:
    model = load_model("llama2-7b")
    cluster = load_cluster("h100-sxm:16")
    enum = enumerate_space(model, cluster, 32, 4096, SearchSpace(pins={"micro_batch": 1, "recompute": "full"}))
    bound = StateLowerBound(model, cluster)
    checked = 0
    for leaf in enum.leaves[::7]:
        for zero in leaf.zero_stages:
            est = estimate(model, cluster, leaf.plan(32, zero, "full"), 4096)
            lower = bound.state_bytes(leaf, 32, zero)
            assert lower <= est.memory.total
            assert lower == max(m.params + m.grads + m.optimizer for m in est.memory_by_stage)
            checked += 1
    assert checked > 50


def test_the_bound_uses_exactly_the_contracts_model_state_bytes() -> None:
    """The default bound is the largest `model_state_bytes` (the runtime contract) over every rank."""
    from bastion.predict.memory import model_state_bytes

    model = load_model("llama3-405b")  # 126 layers: uneven first/last stages where pp·vpp divides 128
    cluster = load_cluster("h100-sxm:256")
    bound = StateLowerBound(model, cluster)
    enum = enumerate_space(model, cluster, 64, 4096, SearchSpace(pins={"micro_batch": 1}))
    checked = 0
    for leaf in enum.leaves[::9]:
        for zero in leaf.zero_stages:
            plan = leaf.plan(64, zero)
            exact = max(sum(model_state_bytes(model, plan, stage).values()) for stage in range(plan.pp))
            assert bound.state_bytes(leaf, 64, zero) == exact
            checked += 1
    assert checked > 100
