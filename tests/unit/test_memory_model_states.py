"""Model-state memory: the ZeRO paper's figures and exact per-rank bytes for the runtime's models."""

from __future__ import annotations

import dataclasses

import pytest

from bastion.predict.memory import model_state_bytes, state_bytes_per_param
from bastion.specs import ModelSpec, ParallelPlan, load_model

GB = 1e9


def zero_bytes_per_param(precision: str, zero_stage: int, dp: int) -> float:
    p, g, o = state_bytes_per_param(precision)
    return (p / dp if zero_stage >= 3 else p) + (g / dp if zero_stage >= 2 else g) + (o / dp if zero_stage >= 1 else o)


@pytest.mark.parametrize(("zero_stage", "published_gb"), [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_figure1_7_5b_on_64_gpus(zero_stage: int, published_gb: float) -> None:
    # Rajbhandari et al. 2020 (ZeRO), Figure 1: Ψ = 7.5B parameters, Nd = 64, K = 12 (mixed-precision Adam)
    total = 7.5e9 * zero_bytes_per_param("bf16", zero_stage, 64)
    assert total / GB == pytest.approx(published_gb, abs=0.05)


def test_mixed_precision_and_fp32_bytes_per_parameter() -> None:
    assert state_bytes_per_param("bf16") == (2, 2, 12)
    assert state_bytes_per_param("fp16") == (2, 2, 12)
    assert state_bytes_per_param("fp32") == (4, 4, 8)


def _plan(**kw) -> ParallelPlan:
    kw.setdefault("global_batch", kw.get("dp", 1) * 4)
    kw.setdefault("precision", "fp32")
    return ParallelPlan(**kw)


def test_tiny_fp32_single_rank_is_16_bytes_per_parameter() -> None:
    tiny = load_model("tiny")
    states = model_state_bytes(tiny, _plan(), 0)
    n = tiny.total_params()
    assert states == {"params": 4 * n, "grads": 4 * n, "optimizer": 8 * n}


def test_tiny_parameter_count_by_hand() -> None:
    # tiny: 4 layers, h 64, 4 heads of 16, 2 kv heads, SwiGLU 256, vocab 256, untied, RMSNorm, no biases
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 256 + 2 * 64
    expected = 4 * per_layer + 256 * 64 + 64 + 256 * 64
    assert model_state_bytes(load_model("tiny"), _plan(), 0)["params"] == 4 * expected


def test_qwen3_qk_norms_are_counted_and_replicated_over_tp() -> None:
    # two head_dim weights per layer, on every tp rank (the runtime's measured bytes: tests/dist/
    # test_context_parallel.py, the qk-norm case)
    qwen = load_model("qwen3-30b-a3b")
    plain = dataclasses.replace(qwen, qk_norm=False)
    extra = qwen.num_layers * 2 * qwen.head_dim
    assert qwen.total_params() - plain.total_params() == extra
    for tp_rank in range(2):
        plan = _plan(tp=2)
        assert (model_state_bytes(qwen, plan, 0, tp_rank=tp_rank)["params"]
                - model_state_bytes(plain, plan, 0, tp_rank=tp_rank)["params"]) == 4 * extra   # fp32 bytes
    assert model_state_bytes(qwen, _plan(), 0)["params"] == 4 * qwen.total_params()
    from bastion.predict.memory import stage_states

    plan = _plan(dp=2, tp=2, zero_stage=3)
    exact = model_state_bytes(qwen, plan, 0)
    assert stage_states(qwen, plan, 0) == (exact["params"], exact["grads"], exact["optimizer"])


@pytest.mark.parametrize("dp", [2, 3, 4])
def test_fsdp_shards_sum_to_the_whole_and_rank0_is_largest(dp: int) -> None:
    small = load_model("small")
    plan = _plan(dp=dp, zero_stage=3)
    whole = model_state_bytes(small, _plan(), 0)
    shards = [model_state_bytes(small, plan, 0, dp_rank=r) for r in range(dp)]
    for key in ("params", "grads", "optimizer"):
        assert sum(s[key] for s in shards) == whole[key]
        assert shards[0][key] == max(s[key] for s in shards)


def test_zero_stages_shard_what_they_should() -> None:
    tiny = load_model("tiny")
    whole = model_state_bytes(tiny, _plan(), 0)
    z1 = model_state_bytes(tiny, _plan(dp=2, zero_stage=1), 0)
    z2 = model_state_bytes(tiny, _plan(dp=2, zero_stage=2), 0)
    assert z1["params"] == whole["params"] and z1["grads"] == whole["grads"]
    assert z1["optimizer"] == whole["optimizer"] // 2  # every dim 0 of tiny is even
    assert z2["grads"] == whole["grads"] // 2 and z2["params"] == whole["params"]


def test_tensor_parallel_replicates_norms_and_splits_matrices() -> None:
    tiny = load_model("tiny")
    whole = model_state_bytes(tiny, _plan(), 0)["params"] // 4
    norms = 4 * 2 * 64 + 64
    ranks = [model_state_bytes(tiny, _plan(tp=2), 0, tp_rank=r)["params"] // 4 for r in range(2)]
    assert ranks[0] == ranks[1] == (whole - norms) // 2 + norms


def test_pipeline_stages_split_layers_embedding_first_head_last() -> None:
    tiny = load_model("tiny")
    whole = model_state_bytes(tiny, _plan(), 0)["params"]
    stages = [model_state_bytes(tiny, _plan(pp=2), i)["params"] for i in range(2)]
    assert sum(stages) == whole
    layer = tiny.params_per_layer() * 4
    assert stages[0] == 2 * layer + 4 * 256 * 64                 # two layers + embedding
    assert stages[1] == 2 * layer + 4 * (64 + 256 * 64)          # two layers + final norm + LM head


def test_tied_embeddings_count_once_on_one_stage_and_twice_across_stages() -> None:
    tied = ModelSpec(name="tied", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2, ffn_hidden_size=256,
                     vocab_size=256, seq_len=64, tied_embeddings=True)
    one = model_state_bytes(tied, _plan(), 0)["params"]
    assert one == 4 * tied.total_params()
    split = sum(model_state_bytes(tied, _plan(pp=2), i)["params"] for i in range(2))
    assert split == one + 4 * 256 * 64  # the last stage keeps its own copy of the table for the LM head


def test_v_schedule_puts_embedding_and_head_on_rank_0() -> None:
    tiny = load_model("tiny")
    plan = _plan(pp=2, vpp=2, pp_schedule="zbv")
    stage0 = model_state_bytes(tiny, plan, 0)["params"]
    stage1 = model_state_bytes(tiny, plan, 1)["params"]
    layer = tiny.params_per_layer() * 4
    assert stage1 == 2 * layer
    assert stage0 == 2 * layer + 4 * (2 * 256 * 64 + 64)


def test_mixed_precision_counts_2_2_12() -> None:
    small = load_model("small")
    n = small.total_params()
    states = model_state_bytes(small, _plan(precision="bf16"), 0)
    assert states == {"params": 2 * n, "grads": 2 * n, "optimizer": 12 * n}


@pytest.mark.parametrize("plan", [
    ParallelPlan(dp=2, tp=2, pp=2, global_batch=8, zero_stage=1),
    ParallelPlan(dp=3, pp=2, vpp=2, pp_schedule="zbv", global_batch=6, zero_stage=3, precision="fp32"),
    ParallelPlan(dp=4, tp=2, pp=4, vpp=2, pp_schedule="interleaved-1f1b", global_batch=16, zero_stage=2),
])
def test_estimate_fast_path_equals_the_exact_count(plan: ParallelPlan) -> None:
    from bastion.predict.memory import stage_states

    model = load_model("llama2-7b")
    for stage in range(plan.pp):
        exact = model_state_bytes(model, plan, stage)
        assert stage_states(model, plan, stage) == (exact["params"], exact["grads"], exact["optimizer"])


def test_bastions_runtime_holds_fp32_gradients_under_mixed_precision() -> None:
    # runtime/parallelize.py: fp32 parameters under autocast on one device; FSDP2 shards fp32 parameters and
    # reduces (and accumulates unsynced gradients) in reduce_dtype fp32. The bf16 working copy and the fp32
    # parameters + Adam moments stay ZeRO's 2 and 12 bytes.
    from bastion.predict import estimate
    from bastion.predict.software import software_stack
    from bastion.specs import load_cluster

    assert state_bytes_per_param("bf16", fp32_gradients=True) == (2, 4, 12)
    assert state_bytes_per_param("fp32", fp32_gradients=True) == (4, 4, 8)
    model = load_model("llama3-8b")
    for plan in (ParallelPlan(micro_batch=1, global_batch=4, recompute="full"),
                 ParallelPlan(dp=8, zero_stage=1, micro_batch=1, global_batch=16, recompute="full"),
                 ParallelPlan(dp=8, zero_stage=3, micro_batch=1, global_batch=16, recompute="full")):
        cluster = load_cluster(f"h100-sxm:{plan.num_gpus}")
        runtime = estimate(model, cluster, plan, options=software_stack("bastion").options).memory
        other = estimate(model, cluster, plan, options=software_stack("production").options).memory
        assert runtime.grads == 2 * other.grads
        assert (runtime.params, runtime.optimizer) == (other.params, other.optimizer)


@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_bastions_runtime_holds_a_pipeline_stages_states_whole_during_the_step(zero_stage: int) -> None:
    # torch.distributed.pipelining turns FSDP2's gradient sync and resharding after backward off for every
    # backward and reduces once per step (perform_reduce_grad), whatever the ZeRO stage: a rank holds its stage's
    # parameters gathered and its gradients whole until then, as ZeRO 0 holds them; the optimizer stays sharded
    tiny = load_model("tiny")
    plan = _plan(dp=2, pp=2, zero_stage=zero_stage, pp_schedule="1f1b")
    for stage in range(2):
        whole = model_state_bytes(tiny, dataclasses.replace(plan, zero_stage=0), stage)
        zero = model_state_bytes(tiny, plan, stage)
        in_step = model_state_bytes(tiny, plan, stage, runtime_fsdp=True)
        assert (in_step["params"], in_step["grads"]) == (whole["params"], whole["grads"])
        assert in_step["optimizer"] == zero["optimizer"] == whole["optimizer"] // 2
        # other software (runtime_fsdp off) keeps ZeRO's sharding, as bastion's runtime does without a pipeline
        assert zero["grads"] == (whole["grads"] // 2 if zero_stage >= 2 else whole["grads"])
        no_pipeline = dataclasses.replace(plan, pp=1, pp_schedule="1f1b")
        assert (model_state_bytes(tiny, no_pipeline, 0, runtime_fsdp=True)
                == model_state_bytes(tiny, no_pipeline, 0))


def test_bastions_pipeline_memory_counts_the_whole_states_and_the_fast_path_agrees() -> None:
    from bastion.predict.memory import held_whole_in_step, stage_memory, stage_states
    from bastion.predict.software import software_stack

    model = load_model("llama2-7b")
    bastion = software_stack("bastion").options
    plan = ParallelPlan(dp=4, tp=2, pp=4, vpp=2, pp_schedule="interleaved-1f1b", global_batch=16, zero_stage=3)
    assert held_whole_in_step(plan, runtime_fsdp=True)
    assert not held_whole_in_step(plan, runtime_fsdp=False)
    assert not held_whole_in_step(dataclasses.replace(plan, dp=1, global_batch=4), runtime_fsdp=True)
    for stage in range(plan.pp):
        exact = model_state_bytes(model, plan, stage, runtime_fsdp=True)
        states = stage_states(model, plan, stage, fp32_gradients=False, runtime_fsdp=True)
        assert states == (exact["params"], exact["grads"], exact["optimizer"])
        memory = stage_memory(model, plan, model.seq_len, stage, True, bastion)
        g_bytes = state_bytes_per_param(plan.precision, fp32_gradients=True)[1]
        assert (memory.params, memory.grads) == (exact["params"], exact["grads"] // 2 * g_bytes)
        assert memory.params > stage_states(model, plan, stage)[0]
