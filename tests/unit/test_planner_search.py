"""The search itself, checked against brute force with a small stand-in cost model.

The stand-in (`toy_estimate`) is deliberately simple and fully known, so the optimum of a tiny space can be
found by trying every combination of every plan field independently of the planner's enumeration; the real
predictor is used in test_planner_predictor.py.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import pytest

from bastion.errors import ConfigError, PlanError
from bastion.planner.objectives import Floors
from bastion.planner.search import PlanRequest, search
from bastion.planner.space import (
    SearchSpace,
    enumerate_space,
    factorisations,
    gpu_counts_between,
    memory_choices,
)
from bastion.predict import estimate
from bastion.specs import ParallelPlan, load_cluster, load_model
from bastion.specs.model import ModelSpec
from bastion.specs.schedules import schedule_names
from helpers.plan_space import memory_variants

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


@dataclass
class ToyMemory:
    params: float
    grads: float
    optimizer: float
    activations: float
    total: float


@dataclass
class ToyEstimate:
    memory: ToyMemory
    step_time_s: float
    tokens_per_s: float
    mfu: float
    fits: bool
    time: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"time": self.time, "memory": vars(self.memory)}


def toy_state_bytes(model: ModelSpec, plan: ParallelPlan, stage: int) -> dict[str, float]:
    n = model.total_params() / (plan.tp * plan.pp)
    shard = plan.dp
    params = 2 * n / (shard if plan.zero_stage >= 3 else 1)
    grads = 2 * n / (shard if plan.zero_stage >= 2 else 1)
    optimizer = 12 * n / (shard if plan.zero_stage >= 1 else 1)
    extra = 4 * model.vocab_size * model.hidden_size / plan.tp if stage in (0, plan.pp - 1) else 0.0
    return {"params": params + extra, "grads": grads, "optimizer": optimizer}


def toy_estimate(model: ModelSpec, cluster, plan: ParallelPlan, seq_len: int) -> ToyEstimate:
    plan.validate(model, cluster, seq_len)
    state = max((toy_state_bytes(model, plan, s) for s in range(plan.pp)), key=lambda d: sum(d.values()))
    keep = {"none": 1.0, "selective": 0.6, "full": 0.1}[plan.recompute]
    sp = plan.tp if plan.sequence_parallel else 1
    act = (plan.micro_batch * seq_len * model.hidden_size * 20 * model.num_layers * keep
           / (plan.pp * plan.cp * plan.tp ** 0.5 * sp ** 0.5) * min(plan.pp, plan.grad_accumulation))
    total = sum(state.values()) + act
    tokens = plan.global_batch * seq_len
    flops = 6 * model.total_params() * tokens * {"none": 1.0, "selective": 1.05, "full": 1.33}[plan.recompute]
    peak = cluster.accelerator.peak_tflops(plan.precision) * 1e12
    compute = flops / (plan.num_gpus * peak * (0.3 + 0.1 * min(plan.micro_batch, 4) / 4))
    bubble = compute * (plan.pp - 1) / (plan.grad_accumulation * plan.vpp) * (0.5 if plan.pp_schedule in (
        "zero-bubble", "zbv", "dualpipev") else 1.0)
    tp_comm = 1e-3 * (plan.tp - 1) * (0.8 if plan.sequence_parallel else 1.0)
    dp_comm = 1e-3 * (plan.dp - 1) * (1 + 0.2 * plan.zero_stage) + 1e-4 * plan.cp
    step = compute + bubble + tp_comm + dp_comm
    return ToyEstimate(memory=ToyMemory(**state, activations=act, total=total), step_time_s=step,
                       tokens_per_s=tokens / step, mfu=6 * model.total_params() * tokens / step / (plan.num_gpus * peak),
                       fits=total <= cluster.accelerator.hbm_bytes,
                       time={"compute": compute, "bubble": bubble, "tp_comm": tp_comm, "dp_comm": dp_comm,
                             "step": step})


TOY = ModelSpec(name="toy", num_layers=8, hidden_size=512, num_heads=8, num_kv_heads=4, ffn_hidden_size=1536,
                vocab_size=1024, seq_len=512)


def brute_force(model: ModelSpec, cluster, global_batch: int, seq_len: int, precisions=("bf16",)):
    """Every combination of every field (a superset of the planner's space), independently of space.py."""
    n = cluster.num_gpus
    rng = range(1, n + 1)
    feasible = {}
    for dp, tp, pp, cp in itertools.product(rng, rng, rng, rng):
        if dp * tp * pp * cp != n:
            continue
        # micro-batches above the per-replica batch and vpp above layers/pp can never be valid: not tried
        for zero, micro, (sched, vpp), sp, prec in itertools.product(
                range(4), range(1, global_batch // dp + 1),
                [(s, v) for s in schedule_names() for v in range(1, model.num_layers // pp + 2)],
                (False, True), precisions):
            if pp == 1 and (sched, vpp) != ("1f1b", 1):
                continue  # the schedule means nothing without a pipeline: one canonical form
            if dp * cp == 1 and zero > 0:
                continue  # nothing to shard (ZeRO spans dp × cp): one canonical form
            for rc, layers, offload in memory_variants(model, cluster, pp, vpp):
                try:
                    plan = ParallelPlan(dp=dp, tp=tp, pp=pp, cp=cp, zero_stage=zero, micro_batch=micro,
                                        global_batch=global_batch, pp_schedule=sched, vpp=vpp, recompute=rc,
                                        sequence_parallel=sp, precision=prec, recompute_layers=layers,
                                        activation_offload=offload)
                    est = toy_estimate(model, cluster, plan, seq_len)
                except PlanError:
                    continue
                if est.fits:
                    feasible[plan] = est
    return feasible


@pytest.mark.parametrize("gpus,batch,hbm_scale", [(4, 8, 1.0), (8, 16, 1.0), (8, 16, 0.004)])
def test_search_finds_the_brute_force_optimum_and_every_feasible_plan(gpus, batch, hbm_scale) -> None:
    cluster = load_cluster(f"h100-sxm:{gpus}")
    acc = cluster.accelerator.__class__(**{**vars(cluster.accelerator), "hbm_gib": 80 * hbm_scale})
    cluster = cluster.__class__(cluster.name, acc, cluster.num_nodes, cluster.gpus_per_node, cluster.network)
    truth = brute_force(TOY, cluster, batch, 512)
    # the optimum of the point prediction (the default, time-p90, also weighs each plan's interval)
    req = PlanRequest(model=TOY, cluster=cluster, global_batch=batch, seq_len=512, top_k=len(truth) + 5,
                      objective="time-median")
    result = search(req, estimate=toy_estimate, state_bytes=toy_state_bytes)
    assert truth, "the case must have feasible plans"
    assert result.feasible == len(truth)
    assert {p.plan for p in result.plans} == set(truth)
    best = max(truth, key=lambda p: truth[p].tokens_per_s)
    assert result.plans[0].tokens_per_s == pytest.approx(truth[best].tokens_per_s, rel=1e-12)
    assert result.evaluated == result.feasible + sum(result.rejected.values())


def test_pruning_changes_nothing_but_the_work() -> None:
    cluster = load_cluster("h100-sxm:8")
    small_hbm = cluster.accelerator.__class__(**{**vars(cluster.accelerator), "hbm_gib": 0.02})
    cluster = cluster.__class__(cluster.name, small_hbm, 1, 8, cluster.network)
    runs = [search(PlanRequest(model=TOY, cluster=cluster, global_batch=32, seq_len=512, top_k=10, prune=p),
                   estimate=toy_estimate, state_bytes=toy_state_bytes) for p in (True, False)]
    pruned, full = runs
    assert [p.plan for p in pruned.plans] == [p.plan for p in full.plans]
    assert (pruned.feasible, pruned.evaluated, pruned.rejected) == (full.feasible, full.evaluated, full.rejected)
    assert pruned.predicted < full.predicted, "the bound must actually skip predictions in this case"


@pytest.mark.parametrize("objective", ["time-p90", "time-median", "throughput", "mfu", "memory", "goodput"])
def test_objective_bounds_change_nothing_but_the_work(objective: str) -> None:
    """With the real predictor: the bound (step-time floor; model-state floor for memory) settles most plans
    unpredicted, and the answer (top K, runner-up, the best plan with other degrees) is the exhaustive search's;
    the census still adds up. Two GPU counts, so that MFU and throughput rank differently."""
    from bastion.planner.objectives import get_objective
    from bastion.planner.search import OUT_OF_MEMORY

    bounded_out = get_objective(objective).bounded_reason
    req = PlanRequest(model=load_model("llama2-7b"), cluster=load_cluster("h100-sxm:16"), global_batch=64,
                      seq_len=4096, top_k=5, workers=1, objective=objective, gpu_counts=(8, 16))
    pruned, full = search(req), search(replace(req, prune=False))
    assert [p.plan for p in pruned.plans] == [p.plan for p in full.plans]
    assert [p.step_time_s for p in pruned.plans] == [p.step_time_s for p in full.plans]
    assert pruned.runner_up.plan == full.runner_up.plan
    assert pruned.alternative.plan == full.alternative.plan
    assert [p.memory_bytes for p in pruned.plans] == [p.memory_bytes for p in full.plans]
    # the step-time floor is tight; the model-state floor ignores activations, so it settles fewer plans
    factor = 1.5 if objective == "memory" else 3
    assert pruned.predicted * factor < full.predicted, "the bound must actually skip predictions here"
    assert bounded_out not in full.rejected and pruned.rejected[bounded_out] > 0
    assert pruned.evaluated == full.evaluated == pruned.feasible + sum(pruned.rejected.values())
    # what the bound settled is, in the exhaustive run, either feasible-but-worse or out of memory
    assert (pruned.feasible + pruned.rejected[bounded_out] + pruned.rejected[OUT_OF_MEMORY]
            == full.feasible + full.rejected[OUT_OF_MEMORY])
    if objective == "throughput":
        slowest_shown = max(p.step_time_s for p in pruned.plans + [pruned.alternative])
        for cluster, plan in _some_bounded_plans(replace(req, gpu_counts=()), pruned):
            assert estimate(req.model, cluster, plan, req.seq_len).step_time_s > slowest_shown


@pytest.mark.parametrize("name, cluster_name, batch, seq, every",
                         [("llama3-8b", "h100-sxm:32", 128, 8192, 23), ("mixtral-8x7b", "h100-sxm:64", 64, 4096, 97)])
def test_step_time_floor_and_its_terms_are_below_every_zero_stage_and_memory_choice(name, cluster_name, batch, seq,
                                                                                     every) -> None:
    from bastion.planner.objectives.time_p90 import TimeP90
    from bastion.planner.search import default_step_floor, default_time_bound
    from bastion.predict.estimate import step_floor, step_time_lower_bound
    from bastion.predict.intervals import step_interval

    model, cluster = load_model(name), load_cluster(cluster_name)
    floors = Floors(model, batch, seq, default_time_bound(), None, step_floor=default_step_floor())
    enum = enumerate_space(model, cluster, batch, seq, SearchSpace())
    checked, bounded_terms = 0, set()
    for leaf in enum.leaves[::every]:
        floor = step_floor(model, cluster, leaf.plan(batch), seq)
        assert floor.step == step_time_lower_bound(model, cluster, leaf.plan(batch), seq)
        p90_floor = TimeP90().floor(floors, cluster, leaf, {})
        bounded_terms |= {term for term, seconds in floor.terms.items() if seconds > 0}
        for zero in leaf.zero_stages:
            for recompute in memory_choices(SearchSpace(), model, cluster, leaf.pp, leaf.vpp):
                est = estimate(model, cluster, leaf.plan(batch, zero, recompute), seq)
                assert floor.step <= est.step_time_s, (leaf, zero, recompute)
                for term, seconds in floor.terms.items():
                    assert seconds <= getattr(est.time, term), (term, leaf, zero, recompute)
                assert p90_floor <= step_interval(est, model)[1], (leaf, zero, recompute)
                checked += 1
    assert checked > 300
    # the terms every plan of a leaf pays are bounded, not just listed as 0
    assert {"compute", "tp_comm", "bubble", "pp_comm"} <= bounded_terms
    assert model.num_experts == 0 or "ep_comm" in bounded_terms


@pytest.mark.parametrize("name, cluster_name, batch, seq, every",
                         [("llama3-8b", "h100-sxm:32", 128, 8192, 7), ("mixtral-8x7b", "h100-sxm:64", 64, 4096, 29),
                          ("deepseek-v3", "h100-sxm:256", 1024, 4096, 97), ("tiny", "cpu:4", 8, 64, 3)])
def test_quick_floors_are_below_the_floors_and_their_cache_is_the_uncached_figure(name, cluster_name, batch, seq,
                                                                                  every) -> None:
    """Each leaf's quick step floor, cached by work_key across leaves, is the figure computed afresh for that
    leaf, and at most its step floor; every objective's quick floor is at most its floor (cpu:4: ranks share a
    host's cores, where the bubble is left out)."""
    from bastion.planner.objectives import OBJECTIVES
    from bastion.planner.search import default_micro_batch_work, default_step_floor, default_time_bound
    from bastion.predict.estimate import micro_batch_work, quick_step_floor, step_floor

    model, cluster = load_model(name).with_seq_len(seq), load_cluster(cluster_name)
    floors = Floors(model, batch, seq, default_time_bound(), None, step_floor=default_step_floor(),
                    micro_batch_work=default_micro_batch_work())
    leaves = enumerate_space(model, cluster, batch, seq, SearchSpace()).leaves[::every]
    with_quick = [objective for objective in OBJECTIVES.values()
                  if objective.quick_floor(floors, cluster, leaves[0], {0: 0.0}) is not None]
    assert {"time-p90", "throughput", "mfu", "goodput"} <= {objective.name for objective in with_quick}
    for leaf in leaves:
        plan = leaf.plan(batch)
        quick = floors.quick_step_time(cluster, leaf)
        assert quick == quick_step_floor(cluster, micro_batch_work(model, cluster, plan, seq), leaf.pp_schedule,
                                         leaf.pp, leaf.vpp, plan.num_microbatches), leaf
        assert 0 < quick <= step_floor(model, cluster, plan, seq).step, leaf
        for objective in with_quick:
            memory = dict.fromkeys(leaf.zero_stages, 0.0)
            assert (objective.quick_floor(floors, cluster, leaf, memory)
                    <= objective.floor(floors, cluster, leaf, memory)), (objective.name, leaf)
    assert len(floors._work) < len(leaves), "leaves must share cached work for this test to mean anything"


@pytest.mark.parametrize("name, cluster_name, batch, seq, every",
                         [("llama3-8b", "h100-sxm:32", 128, 8192, 31), ("deepseek-v3", "h100-sxm:256", 1024, 4096, 211),
                          ("tiny", "cpu:4", 8, 64, 5)])
def test_memory_fit_is_the_estimates_fit_and_total(name, cluster_name, batch, seq, every) -> None:
    """The planner times only the plans memory_fit says fit: it must say what estimate says, and raise its
    PlanErrors (here: offload on an accelerator without a host link)."""
    from bastion.predict.estimate import memory_fit

    model, cluster = load_model(name), load_cluster(cluster_name)
    space = SearchSpace(recompute=("none", "full"))
    fitting = checked = 0
    for leaf in enumerate_space(model, cluster, batch, seq, space).leaves[::every]:
        for zero in leaf.zero_stages:
            for choice in memory_choices(space, model, cluster, leaf.pp, leaf.vpp):
                plan = leaf.plan(batch, zero, choice)
                est = estimate(model, cluster, plan, seq, detail=False)
                assert memory_fit(model, cluster, plan, seq) == (est.fits, est.memory.total), plan
                fitting += est.fits
                checked += 1
    # both outcomes must occur on the GPUs for this test to mean anything (every tiny plan fits a CPU host)
    assert fitting > 0 and (fitting < checked or name == "tiny")
    offloaded = ParallelPlan(dp=4, activation_offload=1, global_batch=8)
    for predict in (estimate, memory_fit):
        with pytest.raises(PlanError, match="host link"):
            predict(load_model("tiny"), load_cluster("cpu:4"), offloaded, 64)


def test_floor_order_takes_the_groups_by_exact_floor_and_refines_only_what_it_needs() -> None:
    """_FloorOrder against sorting every exact floor: the same groups in the same order up to each threshold, with
    exact floors computed for only a part of the groups when the quick floors settle the rest."""
    import random

    from bastion.planner import search as search_module

    rng = random.Random(7)
    exact = [rng.choice([1.0, 2.0, 3.0]) * rng.uniform(1, 100) for _ in range(3000)]
    quick = [floor / rng.uniform(1, 3) for floor in exact]
    groups = sorted((search_module._Group(q, i, None, None, (0,), (), {}) for i, q in enumerate(quick)),
                    key=lambda g: (g.floor, g.first))
    for threshold in (0.5, 5.0, 40.0, math.inf):
        order = search_module._FloorOrder(groups, lambda g: exact[g.first], workers=1)
        taken = []
        while (index := order.take(threshold)) is not None:
            taken.append(groups[index].first)
        assert taken == sorted((i for i, f in enumerate(exact) if f <= threshold), key=lambda i: (exact[i], i))
        assert order.left() == (threshold < max(exact))
        if threshold <= 5.0:
            assert order.refined < len(groups) / 4
    # without quick floors (exact None) the floors given are taken as exact
    order = search_module._FloorOrder(groups, None, workers=1)
    assert [groups[order.take(math.inf)].first for _ in groups] == [g.first for g in groups]
    assert order.take(math.inf) is None and order.refined == 0


@pytest.mark.parametrize("objective", ["time-p90", "mfu"])
def test_quick_floors_change_nothing_but_the_floors_computed(monkeypatch, objective: str) -> None:
    """The search ordered by quick floors (exact floors computed lazily) predicts the same plans in the same
    rounds as the one that computes every group's floor first: same answer, predictions and census."""
    from bastion.planner import search as search_module
    from bastion.planner.objectives.base import Objective

    orders: list = []

    class CountingOrder(search_module._FloorOrder):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            orders.append(self)

    predicted: list[list] = []
    record = search_module._record

    def recording(found, space, order, cluster, plan, outcome, software_known) -> None:
        predicted[-1].append(plan)
        record(found, space, order, cluster, plan, outcome, software_known)

    monkeypatch.setattr(search_module, "FIRST_CHUNK", 16)
    monkeypatch.setattr(search_module, "FIRST_FLOORS", 8)
    monkeypatch.setattr(search_module, "_FloorOrder", CountingOrder)
    monkeypatch.setattr(search_module, "_record", recording)
    # Mixtral 8x22B at batch 64: ep 8 is wider than dp × cp in many plans, so folded layouts are predicted
    req = PlanRequest(model=load_model("mixtral-8x22b"), cluster=load_cluster("h100-sxm:64"), global_batch=64,
                      seq_len=4096, top_k=5, workers=1, objective=objective, gpu_counts=(32, 64))
    predicted.append([])
    lazy = search(req)
    monkeypatch.setattr(Objective, "quick_floor", lambda *args: None)
    monkeypatch.setattr(type(search_module.get_objective(objective)), "quick_floor", lambda *args: None)
    predicted.append([])
    eager = search(req)
    # the same plans predicted, folded expert layouts (ep wider than dp × cp, over tp ranks) among them
    assert predicted[0] == predicted[1]
    assert any(plan.folds_experts and plan.ep > plan.dp * plan.cp for plan in predicted[0])
    assert [p.plan for p in lazy.plans] == [p.plan for p in eager.plans]
    assert [p.p90_s for p in lazy.plans] == [p.p90_s for p in eager.plans]
    assert (lazy.runner_up.plan, lazy.alternative.plan) == (eager.runner_up.plan, eager.alternative.plan)
    assert (lazy.predicted, lazy.feasible, lazy.rejected) == (eager.predicted, eager.feasible, eager.rejected)
    assert lazy.rejected[search_module.get_objective(objective).bounded_reason] > 0
    groups = len(orders[0].groups)
    assert 0 < orders[0].refined < groups / 2, "the quick floors must spare most exact floors here"
    assert orders[1].refined == 0


def test_the_least_p90_is_the_least_over_every_step_and_term_above_their_floors() -> None:
    """least_p90 against a brute-force minimum of the interval's p90 over steps and term seconds above the floors,
    where the floors sit on either side of the turning point of step · exp(q · w)."""
    from bastion.predict.intervals import least_p90, shares_width, step_shares, stratum_q

    model = load_model("llama3-8b")
    q = stratum_q()
    for step_floor, terms in ((10.0, {"bubble": 1.0, "pp_comm": 0.5}), (1.0, {"bubble": 2.0, "ep_comm": 3.0}),
                              (2.0, {}), (1.0, {"compute": 0.5, "cp_comm": 0.2})):
        least = least_p90(step_floor, terms, "zbv", 8, 2, 8192, model)
        found = math.inf
        for grow in (1.0, 1.01, 1.1, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0):
            for extra in (0.0, 0.1, 1.0):
                seconds = {name: value * (1 + extra) for name, value in terms.items()}
                step = max(step_floor * grow, sum(seconds.values()))
                shares = step_shares(seconds, step, ParallelPlan(pp=8, vpp=2, pp_schedule="zbv", cp=2), 8192, model)
                found = min(found, step * math.exp(q * shares_width(shares)))
        assert least <= found * (1 + 1e-12), (step_floor, terms)
        assert least >= step_floor * math.exp(q) * (1 - 1e-12)
        # the brute force reaches it within its grid's resolution
        assert found <= least * 1.05, (step_floor, terms, least, found)


def test_memory_floor_is_below_every_memory_choice() -> None:
    from bastion.predict.estimate import memory_lower_bound

    checked = 0
    for name, cluster_name, batch, seq in (("llama3-8b", "h100-sxm:32", 128, 8192), ("tiny", "cpu:4", 8, 64),
                                           ("gpt3-175b", "a100-80g:64", 64, 2048),
                                           ("llama3-70b", "gb200:64", 64, 8192)):
        model, cluster = load_model(name), load_cluster(cluster_name)
        enum = enumerate_space(model, cluster, batch, seq, SearchSpace())
        for leaf in enum.leaves[::17]:
            for zero in leaf.zero_stages:
                floor = memory_lower_bound(model, cluster, leaf.plan(batch, zero), seq)
                totals = [estimate(model, cluster, leaf.plan(batch, zero, r), seq).memory.total
                          for r in memory_choices(SearchSpace(), model, cluster, leaf.pp, leaf.vpp)]
                assert floor <= min(totals), (name, leaf, zero)
                checked += 1
    assert checked > 300


def _some_bounded_plans(req: PlanRequest, result) -> list:
    """A few plans of the space that the bounded search did not predict (by re-deriving the floors)."""
    from bastion.planner.space import enumerate_space
    from bastion.predict.estimate import step_time_lower_bound

    threshold = max(p.step_time_s for p in result.plans + [result.alternative])
    enum = enumerate_space(req.model, req.cluster, req.global_batch, req.seq_len, req.space)
    bounded = [leaf for leaf in enum.leaves
               if step_time_lower_bound(req.model, req.cluster, leaf.plan(req.global_batch), req.seq_len) > threshold]
    assert bounded
    return [(req.cluster, leaf.plan(req.global_batch, leaf.zero_stages[-1], "full")) for leaf in bounded[::97]]


def test_census_adds_up_and_counts_whole_subtrees() -> None:
    wide = ModelSpec(name="wide", num_layers=8, hidden_size=512, num_heads=16, ffn_hidden_size=2048,
                     vocab_size=1024, seq_len=512)
    cluster = load_cluster("h100-sxm:16")  # tp 16 would span beyond the 8-GPU NVLink domain
    enum = enumerate_space(wide, cluster, 32, 512, SearchSpace())
    assert enum.total == sum(len(lf.zero_stages) * len(memory_variants(wide, cluster, lf.pp, lf.vpp))
                             for lf in enum.leaves) + sum(enum.rejected.values())
    # tp = 16: dp = pp = cp = 1, one schedule, 6 micro-batch sizes (divisors of 32), sp on/off, ZeRO 0 only
    # (dp = 1) × 5 memory choices: 3 recompute modes, full recompute of 4 of the 8 layers, and (the H100 has a
    # host link) 4 layers offloaded without recompute
    assert enum.rejected["tp beyond scale-up domain"] == 6 * 2 * 5
    assert sorted({(lf.dp, lf.tp, lf.pp, lf.cp) for lf in enum.leaves}) == sorted(
        f for f in factorisations(16) if f[1] <= 8 and 8 % f[2] == 0 and 32 % f[0] == 0)


def test_search_is_deterministic_and_worker_processes_change_nothing() -> None:
    cluster = load_cluster("h100-sxm:8")
    req = PlanRequest(model=TOY, cluster=cluster, global_batch=16, seq_len=512, top_k=50, workers=1)
    first = search(req, estimate=toy_estimate, state_bytes=toy_state_bytes)
    second = search(req, estimate=toy_estimate, state_bytes=toy_state_bytes)
    forked = search(replace(req, workers=2), estimate=toy_estimate, state_bytes=toy_state_bytes)
    assert [p.plan for p in first.plans] == [p.plan for p in second.plans] == [p.plan for p in forked.plans]
    assert (first.feasible, first.rejected) == (forked.feasible, forked.rejected)
    assert [p.step_time_s for p in first.plans] == [p.step_time_s for p in forked.plans]


def test_best_first_rounds_share_one_forked_pool_and_match_the_serial_search(monkeypatch) -> None:
    """Rounds of 8, 16, 32 ... plans, predicted by two worker processes forked once and reused, give the serial
    search's answer and census exactly (the workers see the groups as they were at the fork; the groups' floors,
    computed by workers of their own, order them as the serial search's)."""
    import sys

    from bastion.planner import parallel

    search_module = sys.modules["bastion.planner.search"]
    pools: list[parallel.PredictionPool] = []

    class CountingPool(parallel.PredictionPool):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(search_module, "FIRST_CHUNK", 8)
    monkeypatch.setattr(search_module, "PredictionPool", CountingPool)
    req = PlanRequest(model=load_model("llama2-7b"), cluster=load_cluster("h100-sxm:16"), global_batch=64,
                      seq_len=4096, top_k=5, workers=1, gpu_counts=(8, 16))
    serial = search(req)
    forked = search(replace(req, workers=2))
    assert [p.plan for p in forked.plans] == [p.plan for p in serial.plans]
    assert [p.step_time_s for p in forked.plans] == [p.step_time_s for p in serial.plans]
    assert forked.alternative.plan == serial.alternative.plan
    assert (forked.predicted, forked.rejected) == (serial.predicted, serial.rejected)
    assert serial.predicted > 8 + 16 + 32, "the search must take several rounds for this test to mean anything"
    assert [p.forks for p in pools] == [0, 1]


def test_map_in_workers_returns_the_serial_results_in_order() -> None:
    import os

    from bastion.planner.parallel import map_in_workers

    items = list(range(101))
    parent = os.getpid()
    # the items and the function are read as forked: a closure over local state works, and the results come back
    # in order from other processes
    results = map_in_workers(lambda i: (i * i, os.getpid() != parent), items, workers=2)
    assert [square for square, _ in results] == [i * i for i in items]
    assert all(in_worker for _, in_worker in results)
    assert map_in_workers(lambda i: (i * i, os.getpid() != parent), items[:3], workers=1) == [
        (0, False), (1, False), (4, False)]


def test_pins_restrict_the_space_without_counting_rejections() -> None:
    cluster = load_cluster("h100-sxm:8")
    req = PlanRequest(model=TOY, cluster=cluster, global_batch=16, seq_len=512, top_k=50,
                      space=SearchSpace(pins={"tp": 2, "recompute": "none"}))
    result = search(req, estimate=toy_estimate, state_bytes=toy_state_bytes)
    assert result.plans and all(p.plan.tp == 2 and p.plan.recompute == "none" for p in result.plans)
    free = search(PlanRequest(model=TOY, cluster=cluster, global_batch=16, seq_len=512),
                  estimate=toy_estimate, state_bytes=toy_state_bytes)
    assert result.evaluated < free.evaluated
    with pytest.raises(ConfigError):
        SearchSpace(pins={"global_batch": 4})


def test_fp8_is_searched_only_where_allowed_and_supported() -> None:
    h100, a100 = load_cluster("h100-sxm:8"), load_cluster("a100-80g:8")
    both = SearchSpace(precisions=("bf16", "fp8"))
    on_h100 = search(PlanRequest(model=TOY, cluster=h100, global_batch=16, seq_len=512, top_k=1000, space=both),
                     estimate=toy_estimate, state_bytes=toy_state_bytes)
    assert {p.plan.precision for p in on_h100.plans} == {"bf16", "fp8"}
    assert on_h100.plans[0].plan.precision == "fp8"  # twice the peak in the toy model
    on_a100 = search(PlanRequest(model=TOY, cluster=a100, global_batch=16, seq_len=512, top_k=1000, space=both),
                     estimate=toy_estimate, state_bytes=toy_state_bytes)
    assert {p.plan.precision for p in on_a100.plans} == {"bf16"}
    bf16_only = search(PlanRequest(model=TOY, cluster=a100, global_batch=16, seq_len=512),
                       estimate=toy_estimate, state_bytes=toy_state_bytes)
    assert on_a100.feasible == bf16_only.feasible
    assert on_a100.evaluated == 2 * bf16_only.evaluated
    assert on_a100.rejected["precision unsupported"] >= bf16_only.feasible


def test_gpu_ranges_list_whole_node_sizes() -> None:
    assert gpu_counts_between(64, 512, 8) == (64, 96, 128, 192, 256, 384, 512)
    assert gpu_counts_between(1, 8, 8) == (1, 2, 3, 4, 6, 8)
    with pytest.raises(ConfigError):
        gpu_counts_between(16, 8, 8)


def test_explanation_names_the_fields_and_the_terms_that_differ() -> None:
    from bastion.planner.explain import compare, explain

    cluster = load_cluster("h100-sxm:8")
    # ranked by the median, so that a plan behind the best is slower (ranked by p90 the best may be slower in the
    # median than all the 20 behind it: its interval is narrower)
    result = search(PlanRequest(model=TOY, cluster=cluster, global_batch=16, seq_len=512, top_k=20,
                                objective="time-median"), estimate=toy_estimate, state_bytes=toy_state_bytes)
    best = result.plans[0]
    second = next(p for p in result.plans if p.step_time_s > best.step_time_s * 1.0001)  # a real gap
    c = compare(best, second)
    a, b = best.plan.to_dict(), second.plan.to_dict()
    assert c.plan_changes == [(k, a[k], b[k]) for k in a if a[k] != b[k]] and c.plan_changes
    ta, tb = best.estimate.time, second.estimate.time
    gap = best.step_time_s - second.step_time_s
    floor = max(1e-9 * best.step_time_s, min(0.005 * best.step_time_s, 0.1 * abs(gap)))
    expected = {k: ta[k] - tb[k] for k in ta if k != "step" and abs(ta[k] - tb[k]) > floor}
    assert expected, "the two best toy plans differ in at least one term"
    assert {t.term: t.delta_s for t in c.terms} == pytest.approx(expected)
    assert [abs(t.delta_s) for t in c.terms] == sorted((abs(t.delta_s) for t in c.terms), reverse=True)
    assert c.step_delta_s == pytest.approx(best.step_time_s - second.step_time_s) and c.step_delta_s <= 0
    text = explain(best, second)
    assert all(f"instead of {b[k]}" in text for k, _, _ in c.plan_changes)


def test_nothing_fits_reports_the_same_leanest_plan_with_the_memory_floor() -> None:
    """Under --objective memory the memory floor settles plans unpredicted; when nothing fits, the advice must
    still name the leanest plan (not claim that the model state alone is too big)."""
    model = load_model("llama-1.5b").with_seq_len(1_048_576)
    req = PlanRequest(model=model, cluster=load_cluster("h100-sxm:1"), global_batch=1, seq_len=1_048_576,
                      objective="memory", workers=1)
    pruned, full = search(req), search(replace(req, prune=False))
    assert not pruned.plans and not full.plans
    assert pruned.leanest_oom is not None
    assert pruned.leanest_oom == full.leanest_oom
    assert pruned.rejected == full.rejected


def test_zero_shards_over_context_parallel_ranks_when_dp_is_1() -> None:
    """ZeRO spans dp × cp, so dp = 1, cp > 1 plans are searched at every ZeRO stage."""
    model, cluster = load_model("llama3-8b"), load_cluster("h100-sxm:8")
    enum = enumerate_space(model, cluster, 1, 65536, SearchSpace())
    cp_only = [leaf for leaf in enum.leaves if leaf.dp == 1 and leaf.cp > 1]
    assert cp_only and all(leaf.zero_stages == (0, 1, 2, 3) for leaf in cp_only)
    assert all(leaf.zero_stages == (0,) for leaf in enum.leaves if leaf.dp * leaf.cp == 1)


def test_bounds_see_the_model_at_the_requested_sequence_length() -> None:
    """gpt3-175b has a learned position table sized by seq_len: asked at a shorter length than its preset, the
    bounds must see the shorter table (as the predictor does), or they would overstate memory and drop plans."""
    from bastion.predict.memory import model_state_bytes

    model, short = load_model("gpt3-175b"), 512
    seen: set[int] = set()

    def spy(m: ModelSpec, plan: ParallelPlan, stage: int) -> dict[str, float]:
        seen.add(m.seq_len)
        return model_state_bytes(m, plan, stage)

    search(PlanRequest(model=model, cluster=load_cluster("a100-80g:64"), global_batch=64, seq_len=short, workers=1,
                       space=SearchSpace(pins={"tp": 8, "micro_batch": 1, "recompute": "full"})),
           estimate=lambda m, c, p, s: estimate(m, c, p, s), state_bytes=spy)
    assert seen == {short}
