"""Mixture-of-experts and MLA in the predictor and the planner: the all-to-all, grouped-GEMM shapes, imbalance,
overlap, expert tensor parallelism, uneven pipeline layouts, MLA FLOPs and activations."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bastion.errors import ConfigError, PlanError
from bastion.planner.search import PlanRequest, search
from bastion.planner.space import SearchSpace, enumerate_space, uneven_layout
from bastion.predict import PredictOptions, comm, compute, estimate, flops, moe
from bastion.predict.calibration import gemm_efficiency_measured, small_m_factor
from bastion.predict.estimate import step_floor, step_time_lower_bound
from bastion.predict.memory import (
    activation_bytes_per_token,
    fsdp_unit_numels,
    fsdp_units,
    layer_numel,
    layer_param_shapes,
    layer_saved_tensors,
    model_state_bytes,
    stage_dense_layers,
    stage_expert_grad_bytes,
)
from bastion.predict.software import software_stack
from bastion.specs import ParallelPlan, load_cluster, load_model
from bastion.specs.plan import RECOMPUTE_MODES

H100 = load_cluster("h100-sxm:64")


def test_all_to_all_inside_a_node_beats_one_across_nodes_and_small_messages_run_slower() -> None:
    inside = comm.place_group(H100, 8, 1)
    across = comm.place_group(H100, 8, 8)
    assert (inside.domains, across.domains) == (1, 8)
    nbytes = 64e6
    assert comm.all_to_all_time(H100, nbytes, inside) < comm.all_to_all_time(H100, nbytes, across)
    assert comm.all_to_all_time(H100, nbytes, comm.place_group(H100, 1, 1)) == 0.0
    # message-size efficiency: a thousandth of the bytes takes more than a thousandth of the time
    small = comm.all_to_all_time(H100, nbytes / 1000, across)
    assert small > comm.all_to_all_time(H100, nbytes, across) / 1000
    # only the peers' shares move: a bigger group sends a larger fraction of the same buffer over the NICs
    assert comm.all_to_all_time(H100, nbytes, comm.place_group(H100, 32, 1)) > comm.all_to_all_time(
        H100, nbytes, comm.place_group(H100, 16, 1))


def test_expert_gemms_run_at_their_own_shape_so_few_tokens_per_expert_run_slower() -> None:
    model = load_model("qwen3-30b-a3b")  # 128 experts, top-8
    # the same routed FLOPs per rank: all 128 experts with 32 rows each (weight-streaming bound), or 16 experts
    # with 8x the rows
    whole = moe.routed_cost(model, H100, 512, 1, 1, 1, "bf16", 1.0)
    split = moe.routed_cost(model, H100, 512, 1, 8, 1, "bf16", 1.0)
    assert split.gemm_fwd < whole.gemm_fwd
    assert whole.a2a == 0 and split.a2a > 0  # ep = 1 moves nothing
    # fp8 expert GEMMs pay their operands' casts, as the dense ones do
    assert moe.routed_cost(model, H100, 512, 1, 8, 1, "fp8", 1.0).membound > split.membound


def test_the_grouped_gemm_rate_is_what_the_published_benchmarks_reach_against_the_dense_rate(monkeypatch) -> None:
    b200 = load_cluster("b200:8").accelerator
    # one forward benchmark on a B200 (blackwell): the rate is the dense-rate prediction / the published time
    dense_s = 4 * compute.gemm_time(b200, "bf16", 1024, 2048, 768)
    table = {"implementations": {"cublas_per_expert": {}, "torch_grouped_mm": {}},
             "benchmark": [{"implementation": "torch_grouped_mm", "accelerator": "b200", "precision": "bf16",
                            "passes": "fwd", "m": [4096], "n": [768], "k": [2048], "groups": [4],
                            "us": [dense_s * 1e6 / 0.6]}]}
    monkeypatch.setattr(moe, "grouped_gemm_table", lambda: table)
    moe.grouped_gemm_rate.cache_clear()
    try:
        assert moe.grouped_gemm_rate("torch_grouped_mm", "blackwell", "bf16")[0] == pytest.approx(0.6)
        # another generation, another precision, another implementation: no benchmark, the dense rate
        for key in (("torch_grouped_mm", "hopper", "bf16"), ("torch_grouped_mm", "blackwell", "fp8"),
                    ("cublas_per_expert", "blackwell", "bf16")):
            rate, note = moe.grouped_gemm_rate(*key)
            assert rate == 1.0 and "dense rate" in note
        # a benchmark faster than the dense rate does not make the experts faster than their own GEMMs
        table["benchmark"][0]["us"] = [dense_s * 1e6 / 1.5]
        moe.grouped_gemm_rate.cache_clear()
        assert moe.grouped_gemm_rate("torch_grouped_mm", "blackwell", "bf16")[0] == 1.0
    finally:
        moe.grouped_gemm_rate.cache_clear()


def test_torch_grouped_mm_runs_the_experts_below_the_dense_rate_on_blackwell_as_published() -> None:
    model = load_model("qwen3-30b-a3b")
    b200, h100 = load_cluster("b200:8"), H100
    # torchao's B200 microbenchmarks run bf16 torch._grouped_mm at about half of the dense rate bastion gives
    # the same GEMMs; the H200 figure of PyTorch's SM100 GroupMM PR reaches it (capped at 1)
    blackwell, _ = moe.grouped_gemm_rate("torch_grouped_mm", "blackwell", "bf16")
    assert 0.4 < blackwell < 0.7
    assert moe.grouped_gemm_rate("torch_grouped_mm", "hopper", "bf16")[0] == 1.0
    router = compute.gemm_time(b200.accelerator, "bf16", 4096, model.hidden_size, model.num_experts)
    dense = moe.routed_cost(model, b200, 4096, 1, 8, 1, "bf16", 1.0)
    grouped = moe.routed_cost(model, b200, 4096, 1, 8, 1, "bf16", 1.0, grouped_gemm="torch_grouped_mm")
    assert grouped.gemm_fwd - router == pytest.approx((dense.gemm_fwd - router) / blackwell)
    assert grouped.membound == dense.membound and grouped.a2a == dense.a2a
    assert (moe.routed_cost(model, h100, 4096, 1, 8, 1, "bf16", 1.0, grouped_gemm="torch_grouped_mm")
            == moe.routed_cost(model, h100, 4096, 1, 8, 1, "bf16", 1.0))
    # the software stacks that run torch._grouped_mm say so, and an unknown implementation is refused
    assert software_stack("torchtitan-2024").options.grouped_gemm == "torch_grouped_mm"
    assert software_stack("production").options.grouped_gemm == "cublas_per_expert"
    with pytest.raises(ConfigError, match="grouped_gemm implementation"):
        PredictOptions(grouped_gemm="cutlass")


def test_an_all_to_all_dispatcher_permutes_every_routed_copy_twice_on_each_side() -> None:
    model = load_model("qwen3-30b-a3b")
    tokens, ep = 4096, 8
    a2a = moe.routed_cost(model, H100, tokens, 1, ep, 1, "bf16", 1.0, dispatcher="alltoall")
    fused = moe.routed_cost(model, H100, tokens, 1, ep, 1, "bf16", 1.0, dispatcher="deepep")
    # the global permute before the exchange (and its reverse after the combine) is the only difference: one
    # more pass of permute_elements over every routed copy of a token
    facts = moe.moe_facts()
    routed = tokens * model.top_k
    extra = routed * model.hidden_size * 2 * facts["permute_elements"] / facts["permute_bandwidth_fraction"]
    assert a2a.membound - fused.membound == pytest.approx(compute.membound_time(H100.accelerator, extra))
    # without expert parallelism nothing is exchanged, so the tokens are permuted once whatever the dispatcher
    assert (moe.routed_cost(model, H100, tokens, 1, 1, 1, "bf16", 1.0, dispatcher="alltoall").membound
            == moe.routed_cost(model, H100, tokens, 1, 1, 1, "bf16", 1.0, dispatcher="deepep").membound)
    assert moe.permute_passes(ep, "allgather") == moe.permute_passes(ep, "hybridep") == 1


def test_gemms_with_fewer_rows_than_the_calibration_measured_follow_the_published_small_m_rates() -> None:
    # at and above the calibration's smallest M nothing changes; below it the rate falls as DeepGEMM's tables
    # show (M 256 per group ~3/4 of the large-M rate, M 64 about a quarter), continuous at the edge
    assert small_m_factor(2048) == small_m_factor(8192) == 1.0
    factors = [small_m_factor(m) for m in (32, 64, 128, 256, 512, 1024, 2047)]
    assert factors == sorted(factors) and factors[-1] > 0.99
    assert 0.7 < small_m_factor(256) < 0.85 and 0.2 < small_m_factor(64) < 0.35
    assert small_m_factor(16) == small_m_factor(64)  # held flat below the smallest published M
    # applied to every GEMM through the one shape curve: an expert GEMM of 256 rows takes longer per FLOP
    edge = gemm_efficiency_measured("bf16", 2048, 4096, 1536)
    assert gemm_efficiency_measured("bf16", 256, 4096, 1536) == pytest.approx(edge * small_m_factor(256))
    per_flop = [compute.gemm_time(H100.accelerator, "bf16", m, 4096, 1536) / m for m in (256, 2048)]
    assert per_flop[0] > per_flop[1] * 1.2


def test_imbalance_follows_the_balancing_mechanism_and_slows_the_step() -> None:
    ds, mixtral = load_model("deepseek-v3"), load_model("mixtral-8x7b")
    assert moe.imbalance(ds, PredictOptions())[0] == moe.moe_facts()["imbalance_bias_balanced"]
    capped = replace(mixtral, capacity_factor=1.25)
    assert moe.imbalance(capped, PredictOptions())[0] == 1.25
    assert moe.imbalance(mixtral, PredictOptions(moe_imbalance=2.0)) == (2.0, "given")
    plan = ParallelPlan(dp=64, ep=8, global_batch=64, zero_stage=3)
    model = load_model("qwen3-30b-a3b")
    even = estimate(model, H100, plan, 4096, options=PredictOptions(moe_imbalance=1.0))
    skewed = estimate(model, H100, plan, 4096, options=PredictOptions(moe_imbalance=2.0))
    assert skewed.step_time_s > even.step_time_s
    assert skewed.time.ep_comm > even.time.ep_comm and skewed.time.compute > even.time.compute
    assert any("imbalance" in a and "2" in a for a in skewed.assumptions)


def test_all_to_all_share_is_reported_and_hidden_as_the_software_says() -> None:
    model = load_model("qwen3-30b-a3b")
    plan = ParallelPlan(dp=16, pp=4, ep=16, global_batch=64, zero_stage=1, pp_schedule="1f1b")
    exposed = estimate(model, H100, plan, 4096)
    assert exposed.time.ep_comm > 0
    experts = exposed.to_dict()["experts"]
    assert experts["all_to_all_share"] == pytest.approx(exposed.time.ep_comm / exposed.step_time_s)
    assert experts["placement"]["experts_per_rank"] == 8 and experts["placement"]["ep_group"]["spans_domains"]
    # the dispatch's send and receive buffers
    no_ep = estimate(model, H100, replace(plan, ep=1), 4096)
    assert exposed.memory.comm_buffers - no_ep.memory.comm_buffers == pytest.approx(
        2 * 4096 * model.top_k * model.hidden_size * 2)
    assert sum(v for k, v in exposed.time.to_dict().items() if k != "step") == pytest.approx(exposed.step_time_s)
    overlapped = estimate(model, H100, plan, 4096, options=PredictOptions(moe_a2a_overlap=1.0))
    assert overlapped.time.ep_comm < exposed.time.ep_comm
    # the slowdown of the compute under the hidden part stays (network.toml overlap_slowdown), and no more than
    # the layer's compute can hide it
    slowdown = moe.load_calibration().network["overlap_slowdown"]
    assert overlapped.time.ep_comm >= exposed.time.ep_comm * slowdown * (1 - 1e-9)
    assert moe.exposed_a2a(1.0, 0.5, 1.0) == pytest.approx(0.5 + 0.5 * slowdown)
    assert software_stack("deepseek-dualpipe").options.moe_a2a_overlap == 1.0
    assert software_stack("bastion").options.moe_a2a_overlap == 0.0
    dense = estimate(load_model("llama3-8b"), H100, ParallelPlan(dp=64, global_batch=64), 4096)
    assert dense.time.ep_comm == 0 and "experts" not in dense.to_dict()


def test_ep_group_inside_one_node_when_it_fits_there() -> None:
    mixtral = load_model("mixtral-8x7b")
    placement = moe.expert_placement(mixtral, H100, ParallelPlan(dp=64, ep=8, global_batch=64))
    assert not placement["ep_group"]["spans_domains"] and placement["experts_per_rank"] == 1
    assert not placement["folded_over_tp"] and placement["expert_data_parallel"] == 8
    assert moe.expert_placement(mixtral, H100, ParallelPlan(dp=8, tp=8, ep=8, etp=8, global_batch=64))[
        "ep_group"]["spans_domains"]  # ep members etp ranks apart: one per node


def test_the_bastion_layout_is_what_bastions_runtime_routes_and_where_it_puts_the_ep_group() -> None:
    """bastion's runtime (the `bastion` stack): ep members tp ranks apart, and a tp rank routes its 1/tp of the
    tokens only under sp with etp = 1 — the megatron layout (Megatron-Core) always splits them."""
    assert moe.routing_layout(4, 1, True, "megatron") == (0.25, 1, 1)
    assert moe.routing_layout(4, 4, True, "megatron") == (0.25, 4, 4)
    assert moe.routing_layout(4, 1, True, "bastion") == (0.25, 1, 4)
    assert moe.routing_layout(4, 1, False, "bastion") == (1.0, 1, 4)
    assert moe.routing_layout(4, 4, True, "bastion") == (1.0, 1, 4)
    model = load_model("mixtral-8x7b")
    runtime_options = software_stack("bastion").options
    assert runtime_options.moe_expert_layout == "bastion"
    # ep 8 × tp 4 under the bastion layout spans 4 nodes of 8; megatron, the ep group is 8 neighbouring ranks
    plan = ParallelPlan(dp=16, tp=4, ep=8, global_batch=64, sequence_parallel=True)
    megatron_est, bastion_est = estimate(model, H100, plan, 4096), estimate(model, H100, plan, 4096, options=runtime_options)
    assert not megatron_est.experts["placement"]["ep_group"]["spans_domains"]
    assert bastion_est.experts["placement"]["ep_group"]["scale_up_domains"] == 4
    assert bastion_est.time.ep_comm > megatron_est.time.ep_comm
    # without sp every tp rank dispatches all of the micro-batch's tokens: tp times the all-to-all buffers
    no_sp = replace(plan, sequence_parallel=False)
    with_sp_buffers = estimate(model, H100, plan, 4096, options=runtime_options).memory.comm_buffers
    without = estimate(model, H100, no_sp, 4096, options=runtime_options)
    assert without.experts["routed_token_share"] == 1.0
    a = 2
    tokens = no_sp.micro_batch * 4096
    assert without.memory.comm_buffers - with_sp_buffers == pytest.approx(
        2 * tokens * (1 - 1 / 4) * model.top_k * model.hidden_size * a)
    # and keeps the permuted copies and the experts' tensors of all of them: whole on each tp rank, unless etp = tp
    # splits the experts' width (the permuted copies stay whole)
    per_token = {(layout, etp): activation_bytes_per_token(model, 4096, 4, False, "none", "bf16",
                                                           PredictOptions(moe_expert_layout=layout), True, etp)
                 for layout in ("megatron", "bastion") for etp in (1, 4)}
    assert per_token["megatron", 1] < per_token["bastion", 4] < per_token["bastion", 1]
    assert activation_bytes_per_token(model, 4096, 4, True, "none", "bf16", runtime_options, True, 1) == (
        activation_bytes_per_token(model, 4096, 4, True, "none", "bf16",
                                   replace(runtime_options, moe_expert_layout="megatron"), True, 1))


# ---- parallel folding: ep wider than dp × cp (Megatron-Core lays the experts' grid over tp × cp × dp) -------

QWEN3_235B = load_model("qwen3-235b-a22b")
#: ep 8 over dp 4 and tp 2 (the shape of a published Megatron-Core run: tp 2, pp 32, dp 4, ep 8)
FOLDED = ParallelPlan(dp=4, tp=2, pp=2, ep=8, zero_stage=1, global_batch=64, sequence_parallel=True)


def test_folded_expert_parallelism_validates_with_any_etp_whose_grid_fits() -> None:
    assert FOLDED.folds_experts and not replace(FOLDED, ep=4).folds_experts
    FOLDED.validate(QWEN3_235B)  # etp 1: bastion's runtime folds it (runtime/mesh.py), with or without sp
    replace(FOLDED, sequence_parallel=False).validate(QWEN3_235B)
    split = replace(FOLDED, tp=4, dp=2, ep=4, etp=2)  # the experts split in width over tp ranks too
    assert split.folds_experts
    split.validate(QWEN3_235B)
    with pytest.raises(PlanError, match="does not divide tp × dp × cp"):
        replace(FOLDED, ep=16).validate(QWEN3_235B)


def test_folded_experts_split_over_tp_and_dp_ranks() -> None:
    # 128 experts over ep 8: 16 per rank whichever ranks hold them; expert-data-parallel = tp·dp / ep = 1, so
    # ZeRO-1 keeps every local expert's optimizer state whole, unlike ep 4 over the 4 dp ranks (2 tp replicas)
    assert FOLDED.expert_data_parallel == 1 and replace(FOLDED, ep=4).expert_data_parallel == 1
    assert replace(FOLDED, dp=8, ep=8, global_batch=64).expert_data_parallel == 1
    assert replace(FOLDED, dp=16, ep=8, global_batch=64).expert_data_parallel == 2
    assert ParallelPlan(dp=8, tp=2, ep=16, global_batch=64).expert_data_parallel == 1
    assert ParallelPlan(dp=8, tp=4, ep=16, global_batch=64).expert_data_parallel == 2
    # every (tp, dp) rank holds a different eighth of the experts: the same bytes on each
    per_rank = {model_state_bytes(QWEN3_235B, FOLDED, 0, dp_rank=d, tp_rank=t)["params"]
                for d in range(4) for t in range(2)}
    assert len(per_rank) == 1
    experts_bytes = 2 * QWEN3_235B.routed_expert_params() * 47 // 8  # 47 layers per stage, 2 bytes each
    # ep 4 over the dp ranks holds a quarter of the experts (replicated over tp): an eighth more than folding
    quarter = model_state_bytes(QWEN3_235B, replace(FOLDED, ep=4), 0)["params"]
    assert quarter - per_rank.pop() == experts_bytes
    # ZeRO-1 shards the local experts' optimizer state over the expert-data-parallel ranks: tp 4 × dp 8 / ep 16
    # = 2 of them, so the state of this rank's experts is half what ZeRO-0 keeps
    wide = ParallelPlan(dp=8, tp=4, pp=2, ep=16, global_batch=64, sequence_parallel=True)
    assert wide.folds_experts and wide.expert_data_parallel == 2
    kept = model_state_bytes(QWEN3_235B, wide, 0)["optimizer"]
    sharded = model_state_bytes(QWEN3_235B, replace(wide, zero_stage=1), 0)["optimizer"]
    local_expert_state = 12 * QWEN3_235B.routed_expert_params() * 47 // 16
    assert kept - sharded >= local_expert_state // 2


def test_folded_plans_are_predicted_with_their_expert_memory() -> None:
    est = estimate(QWEN3_235B, load_cluster("h100-sxm:16"), FOLDED, 4096)
    assert est.step_time_s > 0 and est.time.ep_comm > 0
    assert est.to_dict()["experts"]["placement"]["folded_over_tp"]
    # the bastion layout (ep carved from dp × cp) has no folded form: the bastion stack costs it as Megatron-Core
    runtime_stack = estimate(QWEN3_235B, load_cluster("h100-sxm:16"), FOLDED, 4096,
                             options=software_stack("bastion").options)
    assert runtime_stack.experts["layout"] == "megatron" and runtime_stack.time.ep_comm == est.time.ep_comm
    # folding ep 8 over tp 2 × dp 4 holds 1/8 of the experts per rank; ep 4 over the dp ranks holds 1/4
    half = replace(FOLDED, ep=4)
    assert model_state_bytes(QWEN3_235B, FOLDED, 0)["params"] < model_state_bytes(QWEN3_235B, half, 0)["params"]


def test_expert_gradients_reduce_over_the_ranks_that_hold_the_same_experts() -> None:
    cluster = load_cluster("h100-sxm:16")
    # folded ep 8 over tp 2 x dp 4: each rank holds its own eighth of the experts, nothing to reduce them with
    assert moe.expert_data_parallel_group(cluster, 4, 2, 8, 1).size == 1
    experts_bytes = 2 * QWEN3_235B.routed_expert_params() * 47 // 8  # 47 layers per stage, bf16 gradients
    assert stage_expert_grad_bytes(QWEN3_235B, FOLDED, 0) == experts_bytes
    # folded, the expert-data-parallel ranks are etp x ep apart; over dp ranks only, tp x ep apart
    big = load_cluster("h100-sxm:64")

    def group(plan: ParallelPlan) -> comm.GroupPlacement:
        return moe.expert_data_parallel_group(big, plan.shard_degree, plan.tp, plan.ep, plan.etp)

    wide = ParallelPlan(dp=8, tp=4, pp=2, ep=16, global_batch=64, sequence_parallel=True)
    assert group(wide) == comm.GroupPlacement(wide.expert_data_parallel, 1, 2)  # 16 ranks apart: two nodes
    split = ParallelPlan(dp=16, tp=2, pp=2, ep=4, global_batch=64, sequence_parallel=True)
    assert group(split) == comm.GroupPlacement(split.expert_data_parallel, 1, 4)  # 8 apart: four nodes
    # so wider experts add no data-parallel traffic to the folded plan (the reduction hides under the backward
    # and the gathers are exposed: only the dense parameters' part is left), but do where experts are replicated
    options = PredictOptions(overlap_param_gather=False)
    wider = replace(QWEN3_235B, moe_ffn_hidden_size=2 * QWEN3_235B.moe_ffn_hidden_size)

    def dp_comm(model, plan):  # noqa: ANN001, ANN202
        return estimate(model, cluster, plan, 4096, options=options).time.dp_comm

    assert dp_comm(wider, FOLDED) == pytest.approx(dp_comm(QWEN3_235B, FOLDED))
    replicated = replace(FOLDED, tp=1, dp=8, ep=4, sequence_parallel=False)
    assert replicated.expert_data_parallel == 2 and not replicated.folds_experts
    assert dp_comm(wider, replicated) > 1.2 * dp_comm(QWEN3_235B, replicated)


def test_zero3_gathers_only_this_ranks_experts_and_over_the_ranks_that_hold_them() -> None:
    # a layer's routed experts are a unit of their own, this rank's 1/ep of them
    layer = fsdp_units(QWEN3_235B, 1, "layer")
    assert sum(n for n, _ in layer) == layer_numel(QWEN3_235B, 1) and [e for _, e in layer] == [False, True]
    split = dict((e, n) for n, e in fsdp_units(QWEN3_235B, 1, "layer", 8, 1))
    assert split[True] * 8 == dict((e, n) for n, e in layer)[True] and split[False] == layer[0][0]
    assert max(fsdp_unit_numels(QWEN3_235B, 1, "module", 8, 1)) < max(fsdp_unit_numels(QWEN3_235B, 1, "module"))
    # ep 8 over dp 8: no other rank holds this rank's experts, so wider experts add nothing to gather; ep 4
    # leaves two copies of each expert, whose gathers grow with the experts
    cluster = load_cluster("h100-sxm:16")
    wider = replace(QWEN3_235B, moe_ffn_hidden_size=2 * QWEN3_235B.moe_ffn_hidden_size)
    plan = ParallelPlan(dp=8, tp=2, pp=1, ep=8, zero_stage=3, global_batch=64, sequence_parallel=True,
                        recompute="full")

    def dp_comm(model, plan):  # noqa: ANN001, ANN202
        return estimate(model, cluster, plan, 4096).time.dp_comm

    assert dp_comm(wider, plan) == pytest.approx(dp_comm(QWEN3_235B, plan), rel=0.02)
    half = replace(plan, ep=4)
    assert dp_comm(wider, half) > 1.2 * dp_comm(QWEN3_235B, half)


def test_etp_splits_expert_parameters_and_adds_its_collectives() -> None:
    model = load_model("mixtral-8x7b")
    base = ParallelPlan(dp=16, tp=4, ep=4, global_batch=64, sequence_parallel=True)
    split = replace(base, etp=4)
    whole_bytes = model_state_bytes(model, base, 0)["params"]
    split_bytes = model_state_bytes(model, split, 0)["params"]
    per_rank_experts = model.routed_expert_params() * model.num_layers // base.ep
    assert whole_bytes - split_bytes == 2 * per_rank_experts * 3 // 4  # bf16 parameters, 3/4 of them gone
    t_whole, t_split = estimate(model, H100, base, 4096), estimate(model, H100, split, 4096)
    assert t_whole.time.etp_comm == 0 < t_split.time.etp_comm
    assert t_split.memory.params < t_whole.memory.params


def test_uneven_layout_puts_fewer_layers_on_the_ends_and_the_predictor_follows_it() -> None:
    layout = uneven_layout(61, 16)
    counts = [int(c) for c in layout.split(",")]
    assert sum(counts) == 61 and len(counts) == 16
    assert counts[0] < max(counts) and counts[-1] < max(counts) and max(counts) - min(counts) <= 1 + 1
    assert uneven_layout(64, 16) == ""  # even splits need none
    model = load_model("llama3-8b")  # 32 layers
    even = ParallelPlan(dp=16, pp=4, global_batch=64)
    explicit = replace(even, pipeline_layout="8,8,8,8")
    skewed = replace(even, pipeline_layout="5,11,8,8")
    e_even, e_explicit = estimate(model, H100, even, 4096), estimate(model, H100, explicit, 4096)
    assert e_explicit.step_time_s == pytest.approx(e_even.step_time_s)
    e_skewed = estimate(model, H100, skewed, 4096)
    assert e_skewed.step_time_s > e_even.step_time_s  # the 11-layer stage paces the pipeline
    per_stage = [m.params for m in e_skewed.memory_by_stage]
    assert per_stage[1] > per_stage[2] > per_stage[0] - model.vocab_size * model.hidden_size * 2


def test_layers_without_experts_are_counted_per_stage() -> None:
    ds = load_model("deepseek-v3")  # 3 leading dense layers
    plan = ParallelPlan(dp=8, pp=16, ep=8, global_batch=128, pipeline_layout=uneven_layout(61, 16))
    counts = plan.chunk_layers(ds)
    assert stage_dense_layers(ds, plan.pp_schedule, 16, 1, 0, counts) == min(3, counts[0])
    assert sum(stage_dense_layers(ds, plan.pp_schedule, 16, 1, i, counts) for i in range(16)) == 3
    # Llama 4-style interleaving: every second layer has experts (layers 1, 3, 5, 7 of 8)
    interleaved = replace(load_model("tiny-moe"), num_layers=8, moe_layer_freq=2)
    assert [stage_dense_layers(interleaved, "1f1b", 4, 1, i) for i in range(4)] == [1, 1, 1, 1]
    assert stage_dense_layers(interleaved, "1f1b", 2, 1, 0, (3, 5)) == 2


def test_mla_flops_use_the_latent_projections_and_the_two_head_widths() -> None:
    ds = load_model("deepseek-v3")
    assert flops.attention_matmul_params(ds) == ds.mla_params_per_layer() - ds.q_lora_rank - ds.kv_lora_rank
    s = 4096
    assert flops.attention_flops_per_token(ds, s, causal=False) == 2.0 * s * ds.num_heads * (192 + 128)
    # the matmul parameters are the spec's active parameters less the norms and the routers
    norms = ds.num_layers * (ds.norm_params_per_layer() + ds.q_lora_rank + ds.kv_lora_rank)
    routers = ds.num_moe_layers * ds.hidden_size * ds.num_experts
    assert flops.layers_matmul_params(ds) + ds.vocab_size * ds.hidden_size == ds.matmul_params() - norms - routers
    # ~37B active parameters: about 6 x 37e9 FLOPs per token plus attention
    assert 2.1e11 < flops.model_flops_per_token(ds, s) < 3.0e11


def test_mla_activations_keep_the_latents_whole_on_every_tp_rank() -> None:
    ds = load_model("deepseek-v3")
    names = {t.name for t in layer_saved_tensors(ds, 4096, "none")}
    assert {"attention.kv_latent", "attention.q_latent", "attention.k_rope", "moe.permuted_input"} <= names
    one = activation_bytes_per_token(ds, 4096, 1, True, "none")
    eight = activation_bytes_per_token(ds, 4096, 8, True, "none")
    latents = 2 * 2 * (ds.q_lora_rank + ds.kv_lora_rank) + 2 * ds.qk_rope_head_dim
    assert eight == pytest.approx((one - latents) / 8 + latents)


def test_mla_parameters_are_the_runtimes_tensors_split_by_head_under_tp() -> None:
    mla = load_model("tiny-mla")
    assert model_state_bytes(mla, ParallelPlan(precision="fp32"), 0)["params"] == 4 * mla.total_params()
    names = {p.name for p in layer_param_shapes(mla)}
    assert {"attention.wq_a.weight", "attention.q_norm.weight", "attention.wq_b.weight", "attention.wkv_a.weight",
            "attention.kv_norm.weight", "attention.wkv_b.weight", "attention.wo.weight"} <= names
    # tp 2: the per-head up projections and wo halve, the down projections to the latents and their norms stay
    # whole on every rank (a layer without experts: its MLP halves too)
    h, heads, nope, rope, v = (mla.hidden_size, mla.num_heads, mla.qk_nope_head_dim, mla.qk_rope_head_dim,
                               mla.v_head_dim)
    mlp = 3 * h * mla.ffn_hidden_size
    for q_lora in (mla.q_lora_rank, 0):
        dense = moe.dense_layer_model(replace(mla, q_lora_rank=q_lora))
        query = q_lora * heads * (nope + rope) if q_lora else h * heads * (nope + rope)
        per_head = query + mla.kv_lora_rank * heads * (nope + v) + heads * v * h
        assert layer_numel(dense, 2) == layer_numel(dense, 1) - (per_head + mlp) // 2, q_lora


@pytest.mark.parametrize("options", [PredictOptions(), PredictOptions(moe_expert_layout="bastion")],
                         ids=["megatron", "bastion"])
def test_step_time_floor_holds_for_moe_plans_with_etp_and_layouts(options: PredictOptions) -> None:
    model = replace(load_model("tiny-moe"), num_layers=5)  # 5 layers: uneven layouts on pp 2 and 4
    cluster = load_cluster("h100-sxm:16")
    enum = enumerate_space(model, cluster, 32, 512, SearchSpace())
    assert any(leaf.pipeline_layout for leaf in enum.leaves) and any(leaf.etp > 1 for leaf in enum.leaves)
    checked = 0
    for leaf in enum.leaves[::37]:
        # under bastion's layout a plan that folds ep over tp ranks runs Megatron-Core's: the floor sees the same
        floor = step_floor(model, cluster, leaf.plan(32), 512, options)
        assert floor.step == step_time_lower_bound(model, cluster, leaf.plan(32), 512, options)
        for zero in leaf.zero_stages:
            for recompute in RECOMPUTE_MODES:
                est = estimate(model, cluster, leaf.plan(32, zero, recompute), 512, options=options)
                assert floor.step <= est.step_time_s
                # the all-to-all, expert-TP and pipeline terms every plan of the leaf pays (the p90 floor's width)
                assert all(seconds <= getattr(est.time, term) for term, seconds in floor.terms.items()), leaf
                checked += 1
    assert checked > 100


def test_planner_searches_ep_etp_and_layouts_and_explains_the_placement() -> None:
    model = replace(load_model("tiny-moe"), num_layers=5)
    result = search(PlanRequest(model=model, cluster=load_cluster("h100-sxm:16"), global_batch=32, seq_len=512,
                                workers=1, space=SearchSpace(pins={"pp": 2})))
    best = result.plans[0]
    assert best.plan.pipeline_layout == uneven_layout(5, 2 * best.plan.vpp)
    entry = best.to_dict()
    assert entry["experts"]["placement"]["ep"] == best.plan.ep
    assert "all_to_all_share" in entry["experts"]


# ---- node-limited routing (DeepSeek-V3: each token to at most 4 nodes) -------------------------------------------

def test_node_limited_routing_bounds_the_cross_node_all_to_all() -> None:
    model = load_model("deepseek-v3")
    assert model.max_routed_nodes == 4 and load_model("qwen3-235b-a22b").max_routed_nodes == 0
    assert load_model("kimi-k2").max_routed_nodes == 0  # its config: n_group 1, topk_group 1 (no node limit)
    cluster = load_cluster("h800:512")
    plan = ParallelPlan(dp=64, pp=8, ep=64, zero_stage=1, global_batch=512, precision="fp8",
                        pipeline_layout=uneven_layout(61, 8))
    limited = estimate(model, cluster, plan, 4096)
    free = estimate(replace(model, max_routed_nodes=0), cluster, plan, 4096)
    # ep 64 spans 8 nodes: top-8 copies crossing to 7/8 remote nodes each against at most 4 nodes per token
    assert limited.time.ep_comm < free.time.ep_comm
    group = comm.place_group(cluster, 64, 1)
    assert (group.domains, group.local) == (8, 8)
    nbytes = 8 * 4096 * 7168 * 2.0
    assert moe.remote_domains_per_token(model, group, hierarchical=False) == 4 * 7 / 8
    one = moe.hierarchical_a2a_time(cluster, nbytes, 8, 4 * 7 / 8, group)
    assert one == pytest.approx(comm.exchange_time(cluster, nbytes * 63 / 64, nbytes / 8 * 4 * 7 / 8))
    # inside one node the limit changes nothing
    inside = ParallelPlan(dp=64, pp=8, ep=8, zero_stage=1, global_batch=512, precision="fp8",
                          pipeline_layout=uneven_layout(61, 8))
    assert estimate(model, cluster, inside, 4096).time.ep_comm == \
        estimate(replace(model, max_routed_nodes=0), cluster, inside, 4096).time.ep_comm


# ---- token dispatchers: DeepEP / Hybrid-EP's once-per-node crossing, Megatron's allgather ------------------------

def test_a_hierarchical_dispatcher_sends_a_token_once_per_remote_node_it_reaches() -> None:
    model = load_model("qwen3-235b-a22b")  # 128 experts, top-8, no node limit
    group = comm.place_group(H100, 32, 1)
    assert (group.domains, group.local) == (4, 8)
    # 32 experts per node: a node holds none of a token's 8 experts with probability C(96, 8) / C(128, 8)
    missed = 1.0
    for i in range(8):
        missed *= (96 - i) / (128 - i)
    remote = moe.remote_domains_per_token(model, group, hierarchical=True)
    assert remote == pytest.approx(3 * (1 - missed))
    assert 2.5 < remote < 3 < 8 * 24 / 32  # fewer crossings than the 6 remote copies NCCL's all-to-all sends
    # every copy crosses on its own without the hierarchy or the node limit, and inside one node nothing changes
    assert moe.remote_domains_per_token(model, group, hierarchical=False) is None
    assert moe.remote_domains_per_token(model, comm.place_group(H100, 8, 1), hierarchical=True) is None
    # node-limited routing and the hierarchy together: the tighter of the two
    limited = replace(model, max_routed_nodes=2)
    assert moe.remote_domains_per_token(limited, group, hierarchical=True) == pytest.approx(2 * 3 / 4)


@pytest.mark.parametrize("dispatcher", ["deepep", "hybridep"])
def test_deepep_and_hybrid_ep_shorten_only_an_all_to_all_that_crosses_nodes(dispatcher: str) -> None:
    model = load_model("qwen3-235b-a22b")
    across = ParallelPlan(tp=2, dp=16, pp=2, ep=32, sequence_parallel=True, zero_stage=1, global_batch=128)
    inside = replace(across, ep=8)
    nccl, hierarchical = PredictOptions(moe_dispatcher="alltoall"), PredictOptions(moe_dispatcher=dispatcher)
    fast = estimate(model, H100, across, 4096, options=hierarchical)
    assert fast.time.ep_comm < 0.7 * estimate(model, H100, across, 4096, options=nccl).time.ep_comm
    assert fast.to_dict()["experts"]["dispatcher"] == dispatcher
    assert any(a.startswith(f"token dispatcher: {dispatcher}") for a in fast.assumptions)
    assert estimate(model, H100, inside, 4096, options=hierarchical).time.ep_comm == \
        estimate(model, H100, inside, 4096, options=nccl).time.ep_comm


def test_the_allgather_dispatcher_gathers_every_token_of_the_ep_group() -> None:
    model = load_model("mixtral-8x7b")  # top-2 of 8: the gather moves 8 tokens' rows per own token, all-to-all 2
    plan = ParallelPlan(dp=64, ep=8, zero_stage=1, global_batch=64)
    gathered = estimate(model, H100, plan, 4096, options=PredictOptions(moe_dispatcher="allgather"))
    assert gathered.time.ep_comm > 2 * estimate(model, H100, plan, 4096).time.ep_comm
    tokens, a = 4096, 2
    one = comm.all_gather_time(H100, tokens * model.hidden_size * a * 8, comm.place_group(H100, 8, 1))
    layers = model.num_layers
    assert gathered.time.ep_comm == pytest.approx(4 * one * layers)


def test_an_unknown_dispatcher_is_a_guidance_error() -> None:
    from bastion.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown moe_dispatcher 'nccl'") as info:
        PredictOptions(moe_dispatcher="nccl")
    assert "deepep" in info.value.fix
