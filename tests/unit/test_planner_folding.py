"""The planner searches folded expert layouts (issue 14): ep wider than dp × cp, its groups folded over
tensor-parallel ranks (Megatron-Core's parallel folding), and expert tensor parallelism between 1 and tp. The space
holds exactly the expert layouts `validate` accepts and `bastion train` executes (checked against brute force), a
folded winner is valid, predicted as searched and explained, and `--fix ep=… etp=…` still narrows the space."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bastion.errors import PlanError
from bastion.planner.search import PlanRequest, search
from bastion.planner.space import SearchSpace, enumerate_space
from bastion.predict import estimate
from bastion.runtime.preflight import runtime_refusal, runtime_status
from bastion.specs import load_cluster, load_model

#: 128 experts, 4 key/value heads (tp <= 4), expert width 1536 = 2^9 × 3 (so etp 3 can split it)
QWEN3 = load_model("qwen3-235b-a22b")
#: tiny-moe with tp up to 4 (its key/value heads), so that etp has a value strictly between 1 and tp
TINY = replace(load_model("tiny-moe"), num_kv_heads=4)


def expert_layouts_by_brute_force(model, cluster, plan, seq_len: int) -> set[tuple[int, int]]:
    """Every (ep, etp) with 1 <= ep <= the experts and 1 <= etp <= tp that `validate` accepts on `plan` and the
    runtime executes — built without space.py."""
    found = set()
    for ep in range(1, model.num_experts + 1):
        for etp in range(1, plan.tp + 1):
            candidate = replace(plan, ep=ep, etp=etp)
            try:
                candidate.validate(model, cluster, seq_len)
            except PlanError:
                continue
            if runtime_refusal(model, candidate) is None:
                found.add((ep, etp))
    return found


@pytest.mark.parametrize("model, cluster_name, batch, seq", [(TINY, "h100-sxm:8", 16, 512),
                                                             (QWEN3, "h100-sxm:24", 24, 4096)],
                         ids=["tiny-moe", "qwen3-235b"])
def test_the_space_holds_every_expert_layout_validate_accepts_and_train_executes(model, cluster_name, batch,
                                                                                  seq) -> None:
    cluster = load_cluster(cluster_name)
    leaves = enumerate_space(model, cluster, batch, seq, SearchSpace()).leaves
    layouts: dict[tuple[int, int, int, int], set[tuple[int, int]]] = {}
    some_leaf = {}
    for leaf in leaves:
        degrees = (leaf.dp, leaf.tp, leaf.pp, leaf.cp)
        layouts.setdefault(degrees, set()).add((leaf.ep, leaf.etp))
        some_leaf.setdefault(degrees, leaf)
    for degrees, searched in layouts.items():
        plan = some_leaf[degrees].plan(batch)
        assert searched == expert_layouts_by_brute_force(model, cluster, plan, seq), degrees
    # the layouts that need folding are there: ep wider than dp × cp (the experts' grid takes in tp ranks) and
    # expert tensor parallelism strictly between 1 and tp
    folded = [leaf for leaf in leaves if leaf.plan(batch).folds_experts]
    assert any(leaf.ep > leaf.dp * leaf.cp for leaf in folded)
    assert any(1 < leaf.etp < leaf.tp for leaf in leaves)
    if model is QWEN3:
        # etp 3 with tp 4: not a divisor of tp, but the ep 8 groups fold over tp 4 × dp·cp 6 (8 does not divide
        # 6) and the runtime executes any etp there
        assert any((leaf.tp, leaf.ep, leaf.etp) == (4, 8, 3) and leaf.dp * leaf.cp == 6 for leaf in folded)


def test_a_folded_winner_is_valid_executed_predicted_as_searched_and_explained(capsys) -> None:
    """Qwen3-235B on 64 H100s at batch 64: dp is at most 2 per pipeline of 8 stages × tp 4, too few ranks to
    spread its 128 experts over; the best plan folds ep 8 over the tp ranks."""
    from bastion.commands.plan_cmds import print_result, result_json

    model, cluster = QWEN3.with_seq_len(4096), load_cluster("h100-sxm:64")
    result = search(PlanRequest(model=model, cluster=cluster, global_batch=64, seq_len=4096, top_k=3, workers=1))
    best = result.plans[0]
    plan = best.plan
    assert plan.folds_experts and plan.ep > plan.dp * plan.cp
    plan.validate(model, cluster, 4096)
    exact = estimate(model, cluster, plan, 4096)
    assert (exact.step_time_s, exact.memory.total, exact.fits) == (best.step_time_s, best.memory_bytes, True)
    assert runtime_status(model, plan) == {"executes": True}
    # `plan --json`: where the experts sit — folded, over which tp and dp ranks
    entry = result_json(result)["plans"][0]
    assert entry["runtime"] == {"executes": True}
    placement = entry["experts"]["placement"]
    group = placement["ep_group"]
    assert placement["folded_over_tp"] and placement["ep"] == plan.ep
    assert 1 < group["tp_ranks"] <= plan.tp and group["data_parallel_ranks"] <= plan.dp * plan.cp
    assert group["tp_ranks"] * group["data_parallel_ranks"] == plan.ep
    # `plan`: the same in words, and no plan marked as one `train` refuses
    print_result(result, None)
    text = capsys.readouterr().out
    assert "winner experts: ep 8 group folded over tensor-parallel ranks" in text
    assert f"each group on {group['tp_ranks']} of the {plan.tp} tp ranks × {group['data_parallel_ranks']} dp ranks" \
        in text
    assert "does not execute" not in text


def test_pins_narrow_the_expert_layouts_and_a_pin_that_cannot_fit_is_explained() -> None:
    cluster = load_cluster("h100-sxm:8")
    pinned = search(PlanRequest(model=TINY, cluster=cluster, global_batch=16, seq_len=512, top_k=1000, workers=1,
                                space=SearchSpace(pins={"ep": 4, "etp": 2, "micro_batch": 1})))
    assert pinned.plans and {(p.plan.ep, p.plan.etp) for p in pinned.plans} == {(4, 2)}
    # ep 4 × etp 2 fills 8 ranks of a stage: folded over dp 2 × tp 4, or carved from dp 4 with tp 2
    assert {p.plan.folds_experts for p in pinned.plans} == {True, False}
    # the other factorisations cannot hold that grid: counted with validate's reason, not dropped silently
    assert pinned.rejected["ep does not divide dp"] > 0
    free = search(PlanRequest(model=TINY, cluster=cluster, global_batch=16, seq_len=512, workers=1,
                              space=SearchSpace(pins={"micro_batch": 1})))
    assert pinned.evaluated < free.evaluated
    # a pinned ep that divides no grid of the cluster is explained, not an empty census
    nowhere = search(PlanRequest(model=TINY, cluster=cluster, global_batch=16, seq_len=512, workers=1,
                                 space=SearchSpace(pins={"ep": 3})))
    assert not nowhere.plans and nowhere.evaluated == sum(nowhere.rejected.values())
    assert nowhere.rejected["ep does not divide experts"] > 0.9 * nowhere.evaluated


def test_the_placement_names_the_tp_and_dp_ranks_of_an_ep_group() -> None:
    """Members `stride` ranks apart over the stage's ranks numbered tp innermost: carved from dp × cp (bastion's
    layout, stride tp) one rank of each tp group; Megatron-Core's grid (stride etp) takes tp // etp ranks of a tp
    group first, folded or not."""
    from bastion.predict import moe
    from bastion.specs import ParallelPlan

    cluster = load_cluster("h100-sxm:64")

    def group(plan: ParallelPlan, layout: str) -> tuple[int, int, int]:
        routing = moe.routing_layout(plan.tp, plan.etp, plan.sequence_parallel, layout)
        found = moe.expert_placement(QWEN3, cluster, plan, routing)["ep_group"]
        return found["rank_stride"], found["tp_ranks"], found["data_parallel_ranks"]

    carved = ParallelPlan(dp=8, tp=2, ep=8, global_batch=64, sequence_parallel=True)
    assert group(carved, "bastion") == (2, 1, 8)
    assert group(carved, "megatron") == (1, 2, 4)
    folded = ParallelPlan(dp=2, tp=4, ep=4, etp=2, global_batch=64, sequence_parallel=True)
    assert folded.folds_experts and group(folded, "megatron") == (2, 2, 2)
    line = moe.placement_line(moe.expert_placement(QWEN3, cluster, folded, moe.routing_layout(4, 2, True, "megatron")))
    assert "folded over tensor-parallel ranks" in line and "each group on 2 of the 4 tp ranks × 2 dp ranks" in line
    assert "members 2 ranks apart" in line
    whole = moe.placement_line(moe.expert_placement(QWEN3, cluster, ParallelPlan(dp=64, global_batch=64)))
    assert whole.startswith("experts: no expert parallelism (ep 1)")
