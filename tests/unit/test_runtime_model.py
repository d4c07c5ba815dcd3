"""The runtime's model: exact parameter counts, deterministic init that does not depend on the split."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bastion.runtime.model import build_model, canonical_name, count_parameters, init_weights
from bastion.runtime.parallelize import split_stage, stage_ids_for_rank
from bastion.specs.model import load_model
from bastion.specs.plan import ParallelPlan


@pytest.mark.parametrize("name", ["tiny", "small", "llama-1.5b", "llama3-8b", "llama2-70b", "tiny-moe",
                                  "small-moe", "mixtral-8x7b"])
def test_parameter_count_equals_the_spec(name):
    spec = load_model(name)
    assert count_parameters(build_model(spec)) == spec.total_params()


@pytest.mark.parametrize("changes", [
    {"ffn_type": "gelu", "bias": True, "position_embedding": "learned", "num_kv_heads": 4},
    {"tied_embeddings": True},
])
def test_parameter_count_of_gpt_style_and_tied_variants(changes):
    spec = dataclasses.replace(load_model("tiny"), **changes)
    model = build_model(spec)
    assert count_parameters(model) == spec.total_params()
    if not spec.bias:
        assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def _materialise(module, spec, seed):
    module.to_empty(device="cpu")
    init_weights(module, spec, seed)
    return dict(module.named_parameters())


def test_init_is_deterministic_and_seeded():
    spec = load_model("tiny")
    first = _materialise(build_model(spec), spec, 0)
    again = _materialise(build_model(spec), spec, 0)
    other = _materialise(build_model(spec), spec, 1)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not torch.equal(first["layers.0.attention.wq.weight"], other["layers.0.attention.wq.weight"])
    # norms start at one, residual projections are scaled down with depth
    assert torch.equal(first["norm.weight"], torch.ones(spec.hidden_size))
    assert first["layers.0.attention.wo.weight"].std() < first["layers.0.attention.wq.weight"].std()


@pytest.mark.parametrize("schedule,vpp", [("1f1b", 1), ("interleaved-1f1b", 2), ("zbv", 2)])
def test_pipeline_stages_hold_the_same_weights_as_the_full_model(schedule, vpp):
    spec = load_model("tiny")
    full = _materialise(build_model(spec), spec, 0)
    plan = ParallelPlan(pp=2, vpp=vpp, pp_schedule=schedule, micro_batch=1, global_batch=4)
    seen = {}
    for pp_rank in range(2):
        for sid in stage_ids_for_rank(plan, pp_rank):
            stage = split_stage(build_model(spec), sid, 2 * vpp)
            for name, value in _materialise(stage, spec, 0).items():
                assert name not in seen, f"{name} held by two stages"
                seen[name] = value
    assert set(seen) == set(full)
    assert all(torch.equal(seen[n], full[n]) for n in full)


def test_v_schedule_puts_first_and_last_chunk_on_rank_0():
    plan = ParallelPlan(pp=2, vpp=2, pp_schedule="dualpipev", micro_batch=1, global_batch=4)
    assert stage_ids_for_rank(plan, 0) == [0, 3]
    assert stage_ids_for_rank(plan, 1) == [1, 2]
    interleaved = ParallelPlan(pp=2, vpp=2, pp_schedule="interleaved-1f1b", micro_batch=1, global_batch=4)
    assert stage_ids_for_rank(interleaved, 1) == [1, 3]


def test_canonical_names_strip_wrappers():
    assert canonical_name("layers.0._checkpoint_wrapped_module.attention.wq.weight") == "layers.0.attention.wq.weight"
    assert canonical_name("_orig_mod.layers.1.ffn_norm.weight") == "layers.1.ffn_norm.weight"


def test_forward_gives_uniform_loss_at_init():
    spec = load_model("tiny")
    model = build_model(spec)
    _materialise(model, spec, 0)
    tokens = torch.randint(0, spec.vocab_size, (2, spec.seq_len))
    logits = model(tokens)
    assert logits.shape == (2, spec.seq_len, spec.vocab_size)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    assert abs(float(loss.detach()) - torch.log(torch.tensor(256.0)).item()) < 0.1


def test_an_uneven_pipeline_layout_splits_the_layers_as_written():
    spec = load_model("tiny-moe")
    plan = ParallelPlan(pp=2, pipeline_layout="1,3", micro_batch=1, global_batch=4)
    first, last = (split_stage(build_model(spec), sid, 2, plan.chunk_layers(spec)) for sid in (0, 1))
    assert list(first.layers) == ["0"] and list(last.layers) == ["1", "2", "3"]
    assert first.tok_embeddings is not None and first.output is None and last.output is not None
    assert list(split_stage(build_model(spec), 1, 2).layers) == ["2", "3"]  # no layout: the even split
    with pytest.raises(ValueError, match="cannot be split"):
        split_stage(build_model(spec), 0, 2, (1, 2))


@pytest.mark.parametrize("full_layers,wrapped", [(0, ["2", "3"]), (1, ["2"]), (5, ["2", "3"])])
def test_recompute_layers_wraps_the_first_layers_of_each_chunk(full_layers, wrapped):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    from bastion.runtime.parallelize import apply_activation_checkpointing

    chunk = split_stage(build_model(load_model("tiny")), 1, 2)
    apply_activation_checkpointing(chunk, "full", full_layers)
    assert [n for n, block in chunk.layers.items() if isinstance(block, CheckpointWrapper)] == wrapped


def test_runtime_status_names_every_plan_train_refuses_with_its_fix():
    """What `plan` and `estimate` report per plan: tied embeddings split over stages or tp ranks, learned positions
    under tp, ALiBi, and etp wider than tp without folding are refused by `bastion train`; the rest executes
    (parallel folding with etp > 1 among it)."""
    from bastion.runtime.preflight import runtime_status

    tiny = load_model("tiny")
    fp32 = dict(precision="fp32", global_batch=8)
    assert runtime_status(tiny, ParallelPlan(tp=2, pp=2, sequence_parallel=True, **fp32)) == {"executes": True}
    cases = ((dataclasses.replace(tiny, tied_embeddings=True), ParallelPlan(pp=2, **fp32), "ties its embedding"),
             (dataclasses.replace(tiny, position_embedding="learned"), ParallelPlan(tp=2, **fp32),
              "learned position embeddings"),
             (load_model("bloom-176b"), ParallelPlan(**fp32), "ALiBi"),
             (load_model("tiny-moe"), ParallelPlan(dp=4, tp=2, ep=2, etp=4, **fp32), "etp = 4"))
    for spec, plan, problem in cases:
        status = runtime_status(spec, plan)
        assert status["executes"] is False and problem in status["refusal"] and status["fix"], problem
    # ep 4 folded over dp 2 × tp 4, each expert split over 2 of the tp ranks (Megatron-Core's parallel folding)
    folded = ParallelPlan(dp=2, tp=4, ep=4, etp=2, **fp32)
    assert folded.folds_experts and runtime_status(load_model("small-moe"), folded) == {"executes": True}


def test_preflight_accepts_layouts_partial_recompute_mla_and_etp_dividing_tp_offload_and_refuses_wider_etp():
    from bastion.errors import PlanError
    from bastion.runtime.preflight import check_runtime_executes, check_runtime_supports

    mla = load_model("tiny-mla")
    check_runtime_supports(mla)
    fp32 = dict(precision="fp32", micro_batch=1, global_batch=4)
    check_runtime_executes(mla, ParallelPlan(pp=2, pipeline_layout="1,3", recompute="full", recompute_layers=1,
                                             **fp32))
    check_runtime_executes(mla, ParallelPlan(dp=2, tp=2, ep=2, etp=2, **fp32))
    check_runtime_executes(mla, ParallelPlan(tp=4, etp=2, **fp32))  # each expert split over 2 of the 4 tp ranks
    check_runtime_executes(mla, ParallelPlan(activation_offload=1, recompute="full", recompute_layers=1, **fp32))
    with pytest.raises(PlanError, match="does not execute etp"):
        check_runtime_executes(mla, ParallelPlan(dp=4, tp=2, ep=2, etp=4, **fp32))
