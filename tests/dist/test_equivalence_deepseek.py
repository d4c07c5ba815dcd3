"""DeepSeek-V3's runtime features train exactly like one process (losses and final parameters within the
equivalence tolerance of the independent single-process fp32 reference, 6 steps, real gloo processes):
uneven pipeline layouts (an explicit per-chunk layer list), full recomputation of the first layers of each chunk
only, multi-head latent attention (tiny-mla) under dp2, tp2, pp2 and ep2, and the sigmoid router with the
auxiliary-loss-free bias update under ep2.

Each rank's model-state bytes equal the predictor's too (predict/memory.py: explicit pipeline layouts, MLA's
tensors, experts split by etp)."""

from __future__ import annotations

import pytest

from helpers.equivalence import (FP32, check_group, check_model_state_bytes, check_routed_group, declare,
                                 step_records)

pytestmark = [pytest.mark.dist, pytest.mark.timeout(1800)]

LAYOUTS = {
    # tiny-moe's dense first layer alone on stage 0, its three MoE layers on stage 1
    "moe-pp2-layout-1-3": ("tiny-moe", dict(pp=2, pp_schedule="1f1b", pipeline_layout="1,3", micro_batch=2,
                                            global_batch=8, **FP32)),
    # only the first layer of the (single) chunk recomputed whole; the MoE layers keep their activations
    "moe-ep2-recompute-1-layer": ("tiny-moe", dict(dp=2, ep=2, zero_stage=3, recompute="full", recompute_layers=1,
                                                   micro_batch=2, global_batch=8, **FP32)),
    "dense-pp2-layout-3-1": ("tiny", dict(pp=2, pp_schedule="gpipe", pipeline_layout="3,1", micro_batch=2,
                                          global_batch=8, **FP32)),
}
declare(2, {name: plan for name, (_, plan) in LAYOUTS.items()}, models={name: m for name, (m, _) in LAYOUTS.items()})

MLA = "tiny-mla"
#: tiny-mla: MLA attention and the sigmoid router whose bias moves after every step (router_bias_update_rate)
MLA_PLANS = declare(2, {
    "mla-dp2-zero2": dict(dp=2, zero_stage=2, micro_batch=2, global_batch=8, **FP32),
    # heads split: wq_b and wkv_b colwise, wo rowwise; the shared rotary key's gradient summed over tp
    "mla-tp2": dict(tp=2, micro_batch=4, global_batch=8, **FP32),
    "mla-pp2-1f1b": dict(pp=2, pp_schedule="1f1b", micro_batch=2, global_batch=8, **FP32),
    # the routing bias updated from the global loads on both expert-parallel ranks alike
    "mla-ep2-zero3": dict(dp=2, ep=2, zero_stage=3, micro_batch=2, global_batch=8, **FP32),
}, MLA)


@pytest.fixture(scope="module")
def layout_runs(equivalence_runs) -> dict:
    return equivalence_runs(LAYOUTS)


def _of_model(results: dict, model: str) -> dict:
    return {name: result for name, result in results.items() if LAYOUTS[name][0] == model}


def test_uneven_pipeline_layouts_and_partial_recompute_train_like_one_process(layout_runs, equivalence_reference,
                                                                              moe_reference):
    from bastion.specs.model import load_model

    check_routed_group(_of_model(layout_runs, "tiny-moe"), moe_reference("tiny-moe"), "tiny-moe", state_bytes=False)
    check_group(_of_model(layout_runs, "tiny"), equivalence_reference("tiny"), "tiny", state_bytes=False)
    # the layout was run, not the even split (which trains the same): stage 0 holds the embedding and its layers
    for name, first_layers in (("moe-pp2-layout-1-3", 1), ("dense-pp2-layout-3-1", 3)):
        spec = load_model(LAYOUTS[name][0])
        expected = 4 * (spec.embedding_params() + sum(spec.layer_params(i) for i in range(first_layers)))
        stage0 = [r for r in layout_runs[name].summary["measured"]["model_state_bytes_by_rank"] if r["pp_rank"] == 0]
        assert [r["params"] for r in stage0] == [expected], name


def test_model_state_bytes_of_partial_recompute_equal_the_predictors(layout_runs):
    check_model_state_bytes({"moe-ep2-recompute-1-layer": layout_runs["moe-ep2-recompute-1-layer"]}, "tiny-moe")


def test_model_state_bytes_of_uneven_layouts_equal_the_predictors(layout_runs):
    for model in ("tiny-moe", "tiny"):
        check_model_state_bytes({n: r for n, r in _of_model(layout_runs, model).items() if "layout" in n}, model)


@pytest.fixture(scope="module")
def mla_runs(equivalence_runs) -> dict:
    return equivalence_runs(MLA_PLANS)


def test_latent_attention_and_routing_bias_train_like_one_process(mla_runs, moe_reference):
    check_routed_group(mla_runs, moe_reference(MLA), MLA, state_bytes=False)
    for name, result in mla_runs.items():  # the bias moved every step, by the rate at most per step
        steps = step_records(result)
        assert [r["router_bias_absmax"] for r in steps] == pytest.approx([0.01 * (i + 1) for i in range(6)]), name


def test_model_state_bytes_of_mla_equal_the_predictors(mla_runs):
    check_model_state_bytes(mla_runs, MLA)


#: expert tensor parallelism: each expert's w1/w3 split colwise and w2 rowwise over the attention's tp ranks
ETP_PLANS = declare(4, {
    # 2-D (ep, tp) expert DTensors
    "moe-ep2-tp2-etp2-zero3": dict(dp=2, ep=2, tp=2, etp=2, zero_stage=3, micro_batch=2, global_batch=8, **FP32),
    # sp: the block gathers the whole sequence (every etp rank needs the same rows) and keeps its output's shard
    "moe-ep2-tp2-etp2-sp-zero2": dict(dp=2, ep=2, tp=2, etp=2, sequence_parallel=True, zero_stage=2, micro_batch=2,
                                      global_batch=8, **FP32),
    # no expert parallelism: the experts split over tp only, like a dense MLP
    "moe-dp2-tp2-etp2-zero0": dict(dp=2, tp=2, etp=2, zero_stage=0, micro_batch=2, global_batch=8, **FP32),
}, "tiny-moe")


@pytest.fixture(scope="module")
def etp_runs(equivalence_runs) -> dict:
    return equivalence_runs(ETP_PLANS)


def test_expert_tensor_parallelism_trains_like_one_process(etp_runs, moe_reference):
    check_routed_group(etp_runs, moe_reference("tiny-moe"), "tiny-moe", state_bytes=False)
    # the experts were split, not replicated over tp: each rank holds half its etp = 1 expert bytes (fp32; the
    # expert data-parallel degree is 1 in both plans, so ZeRO does not shard the experts further)
    from bastion.predict.memory import model_state_bytes
    from bastion.specs.model import load_model
    from bastion.specs.plan import ParallelPlan

    spec = load_model("tiny-moe")
    for name, plan in ETP_PLANS.items():
        whole_experts = ParallelPlan(**{**plan, "etp": 1})
        local_expert_bytes = 4 * spec.num_moe_layers * spec.routed_expert_params() // plan.get("ep", 1)
        for rank in etp_runs[name].summary["measured"]["model_state_bytes_by_rank"]:
            etp1 = model_state_bytes(spec, whole_experts, rank["pp_rank"], rank["dp_rank"], rank["tp_rank"])
            assert rank["params"] == etp1["params"] - local_expert_bytes // 2, (name, rank)


def test_model_state_bytes_of_etp_equal_the_predictors(etp_runs):
    check_model_state_bytes(etp_runs, "tiny-moe")
