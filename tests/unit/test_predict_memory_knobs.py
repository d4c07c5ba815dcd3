"""The memory knobs real recipes use, as plan fields the predictor costs and the planner may choose: partial full
recompute (recompute_layers), activation offload to host memory (activation_offload), and context parallelism's
ring of K,V hops."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bastion.errors import PlanError
from bastion.planner.space import MemoryChoice, SearchSpace, memory_choices, uneven_layout
from bastion.predict import PredictOptions, comm, compute, estimate, moe
from bastion.predict.estimate import memory_lower_bound, step_time_lower_bound
from bastion.predict.memory import offloaded_layers, recomputed_dense_layers, recomputed_layers
from bastion.predict.validate import predict_case
from bastion.specs import ParallelPlan, load_cluster, load_model

# llama3-70b: 80 layers over pp 4 = 20 layers per stage (one chunk each)
MODEL = load_model("llama3-70b")


def plan(**fields: object) -> ParallelPlan:
    base = dict(dp=2, tp=8, pp=4, global_batch=64, sequence_parallel=True)
    return ParallelPlan(**{**base, **fields})  # type: ignore[arg-type]


def test_partial_recompute_sits_between_none_and_full_in_memory_and_time() -> None:
    cluster = load_cluster("h100-sxm:64")
    none, full = estimate(MODEL, cluster, plan()), estimate(MODEL, cluster, plan(recompute="full"))
    partial = [estimate(MODEL, cluster, plan(recompute="full", recompute_layers=r)) for r in (5, 10, 15)]
    mem = [none.memory.activations] + [e.memory.activations for e in partial] + [full.memory.activations]
    step = [none.step_time_s] + [e.step_time_s for e in partial] + [full.step_time_s]
    assert mem == sorted(mem, reverse=True) and len(set(mem)) == len(mem)
    assert step == sorted(step) and len(set(step)) == len(step)
    # the recompute FLOPs only for the layers named: 5 of 20 re-run a quarter of full recompute's forwards
    assert partial[0].time.recompute == pytest.approx(full.time.recompute / 4)
    assert partial[0].hardware_flops_per_step - none.hardware_flops_per_step == pytest.approx(
        (full.hardware_flops_per_step - none.hardware_flops_per_step) / 4)
    # as many layers as the chunk holds (or more) is full recompute of every layer
    every = estimate(MODEL, cluster, plan(recompute="full", recompute_layers=20))
    assert every.step_time_s == pytest.approx(full.step_time_s)
    assert every.memory.total == pytest.approx(full.memory.total)
    more = plan(recompute="full", recompute_layers=99)
    assert recomputed_layers(MODEL, more, 0) == 20 and recomputed_layers(MODEL, plan(), 0) == 0


def test_partial_recompute_counts_layers_per_pipeline_chunk() -> None:
    # interleaved: each of pp 4 ranks holds 2 chunks of 10 layers; 3 per chunk -> 6 of the rank's 20
    interleaved = plan(pp_schedule="interleaved-1f1b", vpp=2, recompute="full", recompute_layers=3,
                       activation_offload=12)
    assert recomputed_layers(MODEL, interleaved, 1) == 6
    # offloaded: of each chunk's 7 layers that keep their activations, all but the chunk's last
    assert offloaded_layers(MODEL, interleaved, 1) == 12
    assert offloaded_layers(MODEL, replace(interleaved, recompute="none", recompute_layers=0), 1) == 18
    assert offloaded_layers(MODEL, replace(interleaved, recompute_layers=0), 1) == 0  # every layer recomputed


def test_activation_offload_saves_memory_and_costs_what_the_host_link_cannot_hide() -> None:
    h100, gb200 = load_cluster("h100-sxm:64"), load_cluster("gb200:64")
    kept = estimate(MODEL, h100, plan())
    offloaded = estimate(MODEL, h100, plan(activation_offload=10))
    assert offloaded.memory.activations < 0.7 * kept.memory.activations
    assert kept.time.offload == 0 and offloaded.time.offload > 0
    # the rank's micro-batches take longer, and so does the pipeline bubble, which is a share of them
    assert offloaded.step_time_s - kept.step_time_s == pytest.approx(
        offloaded.time.offload + offloaded.time.bubble - kept.time.bubble)
    # NVLink-C2C (225 GB/s a GPU each way) hides more of the copies than PCIe Gen5 x16 (64 GB/s)
    fast = estimate(MODEL, gb200, plan(activation_offload=10))
    assert fast.time.offload < offloaded.time.offload
    # and the copies' HBM traffic is never free, so offloading never wins a tie
    assert fast.time.offload > 0


def test_activation_offload_needs_a_host_link_in_the_catalog() -> None:
    b200 = load_cluster("b200:64")
    assert b200.accelerator.host_link_gbs == 0
    with pytest.raises(PlanError, match="host link"):
        estimate(MODEL, b200, plan(activation_offload=4))
    assert not any(c.activation_offload for c in memory_choices(SearchSpace(), MODEL, b200, 4, 1))
    offer = memory_choices(SearchSpace(), MODEL, load_cluster("gb200:64"), 4, 1)
    assert MemoryChoice("none", 0, 10) in offer and MemoryChoice("full", 10) in offer


def test_pinned_memory_knobs_are_tried_as_given() -> None:
    space = SearchSpace(pins={"recompute_layers": 3})
    assert memory_choices(space, MODEL, load_cluster("h100-sxm:64"), 4, 1) == (MemoryChoice("full", 3),)


def test_bounds_hold_for_every_memory_choice_the_planner_makes() -> None:
    for cluster in (load_cluster("h100-sxm:64"), load_cluster("gb200:64")):
        base = plan(zero_stage=1)
        floor_memory = memory_lower_bound(MODEL, cluster, base)
        floor_time = step_time_lower_bound(MODEL, cluster, base)
        for choice in memory_choices(SearchSpace(), MODEL, cluster, 4, 1):
            est = estimate(MODEL, cluster, plan(zero_stage=1, recompute=choice.recompute,
                                                recompute_layers=choice.recompute_layers,
                                                activation_offload=choice.activation_offload))
            assert est.memory.total >= floor_memory and est.step_time_s >= floor_time, choice


def test_partial_recompute_of_an_moe_model_costs_its_dense_and_expert_layers_apart() -> None:
    # tiny-moe: layer 0 without experts, layers 1-3 with them; the first recompute_layers of the chunk re-run
    model, cluster = load_model("tiny-moe"), load_cluster("h100-sxm:8")
    base = ParallelPlan(dp=8, global_batch=64, recompute="full")

    def recompute_s(spec: object, layers: int = 0) -> float:
        return estimate(spec, cluster, replace(base, recompute_layers=layers)).time.recompute

    dense_layer = recompute_s(moe.dense_layer_model(model)) / 4
    expert_layer = recompute_s(replace(model, dense_layers=0)) / 4
    assert dense_layer != pytest.approx(expert_layer)
    assert recomputed_dense_layers(model, replace(base, recompute_layers=1), 0) == 1
    assert recompute_s(model, 1) == pytest.approx(dense_layer)
    assert recompute_s(model, 2) == pytest.approx(dense_layer + expert_layer)
    assert recompute_s(model) == pytest.approx(dense_layer + 3 * expert_layer)


def test_memory_knobs_follow_an_uneven_pipeline_layout() -> None:
    model = load_model("tiny-moe")
    layout = ParallelPlan(pp=2, pipeline_layout="1,3", global_batch=8, recompute="full", recompute_layers=2)
    assert [recomputed_layers(model, layout, i) for i in (0, 1)] == [1, 2]
    offload = replace(layout, recompute="none", recompute_layers=0, activation_offload=5)
    assert [offloaded_layers(model, offload, i) for i in (0, 1)] == [0, 2]  # never a chunk's last layer
    # DeepSeek-V3's 61 layers on 16 stages: chunks of 3 and 4 layers, so the planner tries halves of 4
    ds, h100 = load_model("deepseek-v3"), load_cluster("h100-sxm:128")
    choices = memory_choices(SearchSpace(), ds, h100, 16, 1)
    assert MemoryChoice("full", 2) in choices and MemoryChoice("none", 0, 2) in choices
    plan_ds = ParallelPlan(dp=8, pp=16, ep=8, global_batch=128, pipeline_layout=uneven_layout(61, 16))
    floor_memory = memory_lower_bound(ds, h100, plan_ds)
    floor_time = step_time_lower_bound(ds, h100, plan_ds)
    for choice in choices:
        est = estimate(ds, h100, replace(plan_ds, **choice._asdict()))
        assert est.memory.total >= floor_memory and est.step_time_s >= floor_time, choice


def test_ring_attention_exposes_each_hop_by_what_it_outlasts_of_one_step() -> None:
    cluster = load_cluster("h100-sxm:64")
    group = comm.place_group(cluster, 4, 8)
    hop = comm.p2p_time(cluster, 64e6, group.domains > 1)
    # attention per step longer than a hop hides it; shorter leaves the difference, once per hop
    assert comm.ring_attention_exposed(cluster, 64e6, 4, group, 8 * hop, 16 * hop) == (0.0, 0.0)
    fwd, bwd = comm.ring_attention_exposed(cluster, 64e6, 4, group, 2 * hop, 4 * hop)
    assert fwd == pytest.approx(3 * (hop - hop / 2)) and bwd == pytest.approx(3 * (2 * hop - hop))
    # the total being enough is not: one long step cannot hide the other hops (the old whole-layer overlap)
    assert comm.ring_attention_exposed(cluster, 64e6, 4, group, 3 * hop, 6 * hop)[0] > 0
    forward, backward = compute.ring_merge_bytes_per_token(1024, 128, 4)
    assert forward == pytest.approx(3 * 6 * 1024 / 0.9) and backward > forward


def test_ring_and_all_gather_context_parallelism_are_costed_apart() -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("h100-sxm:64")
    cp_plan = ParallelPlan(dp=2, tp=8, cp=4, global_batch=8, sequence_parallel=True)
    ring = estimate(model, cluster, cp_plan, 32768, options=PredictOptions(context_parallel="ring"))
    gather = estimate(model, cluster, cp_plan, 32768, options=PredictOptions(context_parallel="all-gather"))
    assert ring.time.cp_comm != gather.time.cp_comm
    # ring keeps only its own K,V; all-gather keeps the whole sequence's for backward
    assert ring.memory.activations < gather.memory.activations


def test_a_case_row_stating_the_knobs_predicts_them() -> None:
    row = {"case_id": "knobs", "num_layers": "80", "hidden_size": "8192", "num_heads": "64", "num_kv_heads": "8",
           "ffn_hidden_size": "28672", "ffn_type": "swiglu", "vocab_size": "128256", "seq_len": "8192",
           "global_batch_size": "64", "micro_batch_size": "1", "tp": "8", "pp": "4", "dp": "2", "cp": "1",
           "vpp": "1", "zero_stage": "1", "sequence_parallel": "1", "precision": "bf16", "accelerator": "gb200",
           "num_gpus": "64", "gpus_per_node": "8", "iteration_time_s": "10", "framework": "megatron-bridge"}
    plain = predict_case(row)
    partial = predict_case({**row, "recompute_layers": "5"})
    offload = predict_case({**row, "recompute": "none", "activation_offload": "10"})
    assert any("recompute: not given; full, as recompute_layers says" in a for a in partial.assumptions)
    assert partial.predicted_s > plain.predicted_s and offload.predicted_s > plain.predicted_s


def test_fp8_recipes_differ_in_quantisation_traffic_and_gemm_rate() -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("h100-sxm:8")
    fp8 = ParallelPlan(dp=8, global_batch=8, zero_stage=1, precision="fp8")
    bf16 = estimate(model, cluster, ParallelPlan(dp=8, global_batch=8, zero_stage=1), 4096)
    by_recipe = {r: estimate(model, cluster, fp8, 4096, options=PredictOptions(fp8_recipe=r))
                 for r in ("delayed", "tensorwise", "rowwise", "blockwise", "mxfp8")}
    cast = {r: e.time.memory_bound - bf16.time.memory_bound for r, e in by_recipe.items()}
    # a per-tensor scale of the current tensor reads it once more for the amax; a scale per row quantises each
    # operand once per axis, reading it twice each time; MXFP8's 32-element blocks cost one pass and the scales
    assert cast["delayed"] < cast["mxfp8"] < cast["tensorwise"] < cast["rowwise"]
    assert cast["tensorwise"] / cast["delayed"] == pytest.approx(6.7 / 4.4)
    # blockwise: tiles along both axes for activations and gradients, one pass for the 128x128 weight blocks
    assert cast["delayed"] < cast["blockwise"] < cast["tensorwise"]
    # a rowwise recipe does not give a tensorwise speed-up
    assert by_recipe["rowwise"].step_time_s > by_recipe["tensorwise"].step_time_s
    # DeepGEMM's ceiling binds the blockwise GEMMs on Hopper only where the calibrated rate is above it
    gemm = {r: compute.gemm_time(cluster.accelerator, "fp8", 8192, 8192, 8192, r) for r in ("delayed", "blockwise")}
    assert gemm["blockwise"] >= gemm["delayed"]
    assert compute.gemm_time(load_cluster("b200:8").accelerator, "fp8", 8192, 8192, 8192, "blockwise") == \
        compute.gemm_time(load_cluster("b200:8").accelerator, "fp8", 8192, 8192, 8192, "delayed")
    # every recipe keeps the bf16 plan's figures where nothing is fp8
    assert estimate(model, cluster, bf16.plan, 4096, options=PredictOptions(fp8_recipe="rowwise")).step_time_s \
        == bf16.step_time_s


def test_fp8_recipe_fact_selects_the_recipe() -> None:
    from bastion.predict.frameworks import SoftwareFacts, resolve

    _, options, _ = resolve(SoftwareFacts(framework="torchtitan", version="2024-12"))
    assert options.fp8_recipe == "tensorwise"  # torchao's default
    _, options, _ = resolve(SoftwareFacts(framework="megatron-bridge", version="2025-11", fp8_recipe="current"))
    assert options.fp8_recipe == "current"
    _, options, _ = resolve(SoftwareFacts(framework="megatron-bridge", version="2025-11"))
    assert options.fp8_recipe == "delayed"  # Transformer Engine's default recipe
