"""Every parallel plan trains exactly like one process: per-step loss and final parameters within 1e-5.

Real gloo processes (torchrun): the session's shared launches, one per world size for every equivalence
module's plans (conftest.equivalence_runs); the reference is an independent single-process loop
(helpers/equivalence.reference_run). Also checks, on the same runs, that each rank's parameter/gradient/optimizer
bytes equal the predictor's `model_state_bytes` exactly, that every plan reports the same params_sha256 layout,
and that the ranks of plans with activation offload move the predictor's `offloaded_bytes_per_step` to host memory.
"""

from __future__ import annotations

import pytest

from helpers.equivalence import FP32, check_group, declare

pytestmark = [pytest.mark.dist, pytest.mark.timeout(1800)]


WORLD4 = declare(4, {
    "dp4-zero0": dict(dp=4, zero_stage=0, micro_batch=1, global_batch=8, **FP32),
    # zero 1 runs as FSDP2 with unsharded parameters (runtime/mesh.py): with one micro-batch like zero 2; with
    # several its gradients accumulate whole and are reduce-scattered once, after the last
    "dp4-zero1": dict(dp=4, zero_stage=1, micro_batch=2, global_batch=8, **FP32),
    "dp4-zero1-accumulate": dict(dp=4, zero_stage=1, micro_batch=1, global_batch=8, **FP32),
    "dp4-zero2": dict(dp=4, zero_stage=2, micro_batch=2, global_batch=8, **FP32),
    "dp4-zero3": dict(dp=4, zero_stage=3, micro_batch=1, global_batch=8, **FP32),
    "tp2-dp2-sp": dict(dp=2, tp=2, sequence_parallel=True, zero_stage=3, micro_batch=2, global_batch=8, **FP32),
    "tp2-dp2-zero0-full-recompute": dict(dp=2, tp=2, zero_stage=0, recompute="full", micro_batch=2,
                                         global_batch=8, **FP32),
})


#: a pipeline turns FSDP2's gradient sync and resharding after backward off for every backward but the step's one
#: reduction, whatever the ZeRO stage: each rank holds its stage's parameters gathered and gradients whole then
WORLD4_PIPELINED = declare(4, {
    "pp2-dp2-zero1": dict(pp=2, dp=2, zero_stage=1, pp_schedule="1f1b", micro_batch=1, global_batch=8, **FP32),
    "pp2-dp2-zero3": dict(pp=2, dp=2, zero_stage=3, pp_schedule="1f1b", micro_batch=1, global_batch=8, **FP32),
})


def _runnable_on_this_torch(plans: dict[str, dict]) -> dict[str, dict]:
    """torch < 2.13 on gloo crashes in the V schedules; the runtime refuses them there with guidance."""
    import torch

    from bastion.specs.schedules import get_schedule

    return {name: plan for name, plan in plans.items()
            if get_schedule(plan.get("pp_schedule", "1f1b")).refusal(torch.__version__, "cpu") is None}


WORLD2 = declare(2, _runnable_on_this_torch({
    "pp2-gpipe": dict(pp=2, pp_schedule="gpipe", micro_batch=2, global_batch=8, **FP32),
    "pp2-1f1b": dict(pp=2, pp_schedule="1f1b", micro_batch=2, global_batch=8, **FP32),
    "pp2-interleaved-1f1b": dict(pp=2, pp_schedule="interleaved-1f1b", vpp=2, micro_batch=2, global_batch=8,
                                 **FP32),
    "pp2-zero-bubble": dict(pp=2, pp_schedule="zero-bubble", micro_batch=2, global_batch=8, **FP32),
    # tiny's 4 layers on 2 × 3 = layers + 2 chunks: the first holds the embedding alone, the last the head alone
    "pp2-interleaved-ends-alone": dict(pp=2, pp_schedule="interleaved-1f1b", vpp=3, micro_batch=2,
                                       global_batch=8, **FP32),
    "pp2-zbv": dict(pp=2, pp_schedule="zbv", vpp=2, micro_batch=2, global_batch=8, **FP32),
    "pp2-dualpipev": dict(pp=2, pp_schedule="dualpipev", vpp=2, micro_batch=2, global_batch=8, **FP32),
    "tp2-selective-recompute": dict(tp=2, sequence_parallel=True, recompute="selective", micro_batch=4,
                                    global_batch=8, **FP32),
    # activation offload (runtime/offload.py) composed with FSDP2 ZeRO-3 and partial recompute (layers 1 and 2
    # offloaded, after the recomputed layer 0), with a pipeline (each stage's first layer), with tp + sp and
    # selective recompute (DTensor saved tensors); check_group also checks each rank's bytes moved
    "dp2-zero3-recompute1-offload2": dict(dp=2, zero_stage=3, recompute="full", recompute_layers=1,
                                          activation_offload=2, micro_batch=2, global_batch=8, **FP32),
    "pp2-1f1b-offload1": dict(pp=2, pp_schedule="1f1b", activation_offload=1, micro_batch=2, global_batch=8,
                              **FP32),
    "tp2-sp-selective-offload2": dict(tp=2, sequence_parallel=True, recompute="selective", activation_offload=2,
                                      micro_batch=4, global_batch=8, **FP32),
}))
#: tiny's 4 layers on 3 stages: the embedding and the LM head take a layer's slot each (1 + 2 + 1 layers)
WORLD3 = declare(3, {
    "pp3-1f1b-uneven": dict(pp=3, pp_schedule="1f1b", micro_batch=2, global_batch=8, **FP32),
})
WORLD8 = declare(8, {
    "pp2-dp2-tp2": dict(pp=2, dp=2, tp=2, sequence_parallel=True, zero_stage=3, pp_schedule="1f1b",
                        micro_batch=1, global_batch=8, **FP32),
})


def test_data_parallel_and_tensor_parallel_on_4_processes(equivalence_runs, equivalence_reference):
    check_group(equivalence_runs(WORLD4), equivalence_reference("tiny"))


def test_pipelined_data_parallel_holds_its_states_whole_in_the_step_on_4_processes(equivalence_runs,
                                                                                    equivalence_reference):
    """check_group holds each rank's in-step bytes to the predictor's (whole); between steps FSDP2 keeps the
    parameters and gradients of ZeRO-1 as of ZeRO-3 sharded, which the summary reports as at rest."""
    from dataclasses import replace

    from bastion.predict.memory import model_state_bytes
    from bastion.specs.model import load_model
    from bastion.specs.plan import ParallelPlan

    results = equivalence_runs(WORLD4_PIPELINED)
    check_group(results, equivalence_reference("tiny"))
    spec = load_model("tiny")
    for name, result in results.items():
        sharded = replace(ParallelPlan.from_dict(result.summary["plan"]), zero_stage=3)
        for rank in result.summary["measured"]["model_state_bytes_by_rank"]:
            at_rest = model_state_bytes(spec, sharded, rank["pp_rank"], rank["dp_rank"], rank["tp_rank"])
            assert (rank["params_at_rest"], rank["grads_at_rest"]) == (at_rest["params"], at_rest["grads"]), \
                (name, rank)
            assert rank["params"] > rank["params_at_rest"] and rank["grads"] > rank["grads_at_rest"], (name, rank)


def test_every_pipeline_schedule_on_2_processes(equivalence_runs, equivalence_reference):
    check_group(equivalence_runs(WORLD2), equivalence_reference("tiny"))


def test_uneven_pipeline_split_on_3_processes(equivalence_runs, equivalence_reference):
    check_group(equivalence_runs(WORLD3), equivalence_reference("tiny"))


def test_pp2_dp2_tp2_on_8_processes(equivalence_runs, equivalence_reference):
    check_group(equivalence_runs(WORLD8), equivalence_reference("tiny"))
