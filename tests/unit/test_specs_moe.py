"""Mixture-of-experts specs: presets match the published totals and active counts, fields are checked, the
predictor's model states shard routed experts over ep."""

from __future__ import annotations

import dataclasses

import pytest

from bastion.errors import ConfigError
from bastion.specs.model import load_model, model_from_mapping
from bastion.specs.plan import ParallelPlan

# (total, active): Mixtral 8x7B as counted from its config.json (the paper's 46.7B / 12.9B); Qwen3-30B-A3B as its
# checkpoint's tensors add up, per-head q/k norms included (the report's 30.5B / 3.3B)
PUBLISHED = {
    "mixtral-8x7b": (46_702_792_704, 12_879_925_248),
    "qwen3-30b-a3b": (30_532_122_624, None),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_moe_presets_match_the_published_counts(name):
    model = load_model(name)
    total, active = PUBLISHED[name]
    assert model.total_params() == total
    if active is not None:
        assert model.active_params() == active
    assert 3.3e9 <= load_model("qwen3-30b-a3b").active_params() < 3.4e9  # "3.3B activated"


def test_gpt_oss_120b_matches_the_model_card_once_its_biases_and_sinks_are_added_back():
    """OpenAI's model card (arXiv 2508.10925, Table 1): 116.83B total, 5.13B active (the unembedding counted, the
    embedding not). The preset leaves out the linear biases and attention sinks bastion cannot express."""
    spec = load_model("gpt-oss-120b")
    layers, per_expert_bias = 36, 2 * 2880 + 2880
    attention_biases = layers * (64 * 64 + 2 * 8 * 64 + 2880)
    router_biases, sinks = layers * 128, layers * 64
    unmodelled = attention_biases + router_biases + sinks + layers * 128 * per_expert_bias
    assert spec.total_params() + unmodelled == pytest.approx(116.83e9, abs=0.005e9)
    active = spec.active_params() - spec.embedding_params()
    assert active + attention_biases + router_biases + sinks + layers * 4 * per_expert_bias == pytest.approx(
        5.13e9, abs=0.005e9)
    assert unmodelled / spec.total_params() < 4e-4  # the approximation is small
    assert (spec.num_experts, spec.top_k, spec.num_shared_experts, spec.q_width) == (128, 4, 0, 4096)


def test_tiny_moe_is_the_issue_shape():
    tiny = load_model("tiny-moe")
    assert (tiny.num_layers, tiny.num_experts, tiny.top_k, tiny.num_shared_experts, tiny.dense_layers) == (
        4, 8, 2, 1, 1)
    assert [tiny.is_moe_layer(i) for i in range(4)] == [False, True, True, True]
    # a dense layer, then three MoE layers of router + 8 experts + 1 shared expert
    h, ef = tiny.hidden_size, tiny.expert_width
    moe_mlp = h * 8 + 8 * 3 * h * ef + 3 * h * ef
    assert tiny.layer_params(1) - tiny.layer_params(0) == moe_mlp - 3 * h * tiny.ffn_hidden_size
    assert tiny.active_params() < tiny.total_params()
    assert load_model("small-moe").total_params() > tiny.total_params()


def test_earlier_field_name_is_read_and_bad_moe_fields_are_refused():
    base = {"num_layers": 2, "hidden_size": 8, "num_heads": 2, "ffn_hidden_size": 16, "vocab_size": 32,
            "num_experts": 4, "top_k": 2}
    assert model_from_mapping({**base, "expert_ffn_hidden_size": 4}, "old model.json").moe_ffn_hidden_size == 4
    with pytest.raises(ConfigError, match="dense_layers"):
        model_from_mapping({**base, "dense_layers": 2}, "m")
    with pytest.raises(ConfigError, match="router"):
        model_from_mapping({**base, "router": "argmax"}, "m")
    with pytest.raises(ConfigError, match="top_k"):
        model_from_mapping({**base, "top_k": 5}, "m")


def test_expert_parallelism_shards_only_the_routed_experts():
    from bastion.predict.memory import model_state_bytes, stage_states

    tiny = load_model("tiny-moe")
    fp32 = dict(precision="fp32", global_batch=8)
    one = model_state_bytes(tiny, ParallelPlan(**fp32), 0)["params"]
    ep2 = [model_state_bytes(tiny, ParallelPlan(dp=2, ep=2, **fp32), 0, r)["params"] for r in range(2)]
    routed = 3 * tiny.routed_expert_params() * 4  # three MoE layers, fp32
    assert ep2 == [one - routed // 2] * 2
    # ZeRO-3 over dp 4 with ep 2: experts split over ep, then over the 2 ranks holding the same experts
    z3 = ParallelPlan(dp=4, ep=2, zero_stage=3, **fp32)
    assert sum(model_state_bytes(tiny, z3, 0, r)["params"] for r in range(4)) == one
    assert sum(stage_states(tiny, z3, 0)) == sum(model_state_bytes(tiny, z3, 0, 0).values())
    dense = dataclasses.replace(tiny, num_experts=0, top_k=0, num_shared_experts=0, dense_layers=0)
    assert model_state_bytes(dense, ParallelPlan(**fp32), 0)["params"] == dense.total_params() * 4


def test_plans_with_ep_are_checked_and_what_the_runtime_cannot_run_is_refused():
    from bastion.errors import PlanError
    from bastion.runtime.preflight import check_runtime_executes

    tiny = load_model("tiny-moe")
    fp32 = dict(precision="fp32", global_batch=8)
    for plan, reason in ((ParallelPlan(dp=2, ep=4, **fp32), "ep does not divide dp"),
                         (ParallelPlan(dp=6, ep=3, global_batch=12), "ep does not divide experts"),
                         (ParallelPlan(dp=2, ep=2, **fp32), None)):
        if reason is None:
            plan.validate(tiny)
            continue
        with pytest.raises(PlanError) as caught:
            plan.validate(tiny)
        assert caught.value.reason == reason
    # every composition of ep with dp, pp, tp (etp 1 or tp), sp and cp runs; parallel folding does not
    for plan in (ParallelPlan(dp=2, ep=2, pp=2, tp=2, **fp32), ParallelPlan(dp=2, ep=2, tp=2, sequence_parallel=True,
                                                                            **fp32),
                 ParallelPlan(dp=2, ep=2, tp=2, etp=2, sequence_parallel=True, **fp32),
                 ParallelPlan(dp=2, ep=2, cp=2, **fp32)):
        check_runtime_executes(tiny, plan)
    # parallel folding with etp 1, with or without sp: the ep groups take in the tp ranks, each dispatching its
    # own shard of the sequence (without sp its slice of the replicated activation)
    for plan in (ParallelPlan(tp=2, ep=2, sequence_parallel=True, **fp32),
                 ParallelPlan(dp=2, tp=2, ep=4, sequence_parallel=True, **fp32), ParallelPlan(tp=2, ep=2, **fp32)):
        assert plan.folds_experts
        check_runtime_executes(tiny, plan)
    with pytest.raises(PlanError, match="tp = 2 does not divide seq_len 63"):  # the slices must be whole
        check_runtime_executes(tiny.with_seq_len(63), ParallelPlan(tp=2, ep=2, **fp32))
    # with etp > 1 too: each expert's width split over etp of the tp ranks, which gather their rows
    mla = load_model("tiny-mla")
    for plan in (ParallelPlan(tp=4, ep=2, etp=2, sequence_parallel=True, **fp32), ParallelPlan(tp=4, ep=2, etp=2,
                                                                                                **fp32)):
        assert plan.folds_experts
        check_runtime_executes(mla, plan)
    wide = ParallelPlan(dp=4, ep=2, tp=2, etp=4, **fp32)  # ep 2 divides dp 4: not folded, etp wider than tp
    wide.validate(tiny)  # the spec and the predictor accept it
    with pytest.raises(PlanError, match="does not execute etp = 4 with tp = 2") as caught:
        check_runtime_executes(tiny, wide)
    assert caught.value.reason == "runtime limitation" and "divisor of tp = 2" in caught.value.fix
