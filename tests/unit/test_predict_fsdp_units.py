"""What ZeRO-3 gathers at once: whole layers (FSDP2 per block) or sub-modules (DeepSpeed); and how often bastion's
runtime runs FSDP2's collectives in a step."""

from __future__ import annotations

import dataclasses
from dataclasses import astuple

import pytest

from bastion.predict import estimate
from bastion.predict.comm import fsdp_schedule
from bastion.predict.estimate import _data_parallel_schedule, _sync_points
from bastion.predict.memory import fsdp_unit_numels, fsdp_units, layer_numel
from bastion.predict.options import PredictOptions
from bastion.predict.software import software_stack
from bastion.specs import ParallelPlan, load_cluster, load_model


def test_units_partition_the_layer() -> None:
    model = load_model("llama3-70b")
    for tp in (1, 8):
        modules = fsdp_unit_numels(model, tp, "module")
        assert sum(modules) == layer_numel(model, tp) == fsdp_unit_numels(model, tp, "layer")[0]
        # q, k, v, o, w1, w3, w2 and the two norms
        assert len(modules) == 9
        h, f = model.hidden_size, model.ffn_hidden_size
        assert max(modules) == f * h // tp


def test_module_gathers_hold_less_memory_and_pay_more_latency() -> None:
    model, cluster = load_model("gpt3-175b"), load_cluster("a100-80g:1024")
    plan = ParallelPlan(dp=1024, zero_stage=3, micro_batch=1, global_batch=1024, recompute="full")
    by_layer = estimate(model, cluster, plan)
    by_module = estimate(model, cluster, plan, options=PredictOptions(fsdp_unit="module"))
    a = 2
    saved = 3 * a * (layer_numel(model, 1) - max(fsdp_unit_numels(model, 1, "module")))
    assert by_layer.memory.comm_buffers - by_module.memory.comm_buffers == pytest.approx(saved)
    # the same bytes move in more, smaller collectives: never faster
    assert by_module.time.dp_comm >= by_layer.time.dp_comm
    with pytest.raises(ValueError, match="fsdp_unit"):
        estimate(model, cluster, plan, options=PredictOptions(fsdp_unit="block"))


#: (gathers per micro-batch, reductions per micro-batch, gathers once, reductions once) per FSDP2 unit
@pytest.mark.parametrize(("pp", "zero", "expected"), [
    # the training loop: ZeRO 0 and 1 accumulate whole gradients and reduce them after the last micro-batch (the
    # parameters gathered once); ZeRO 2 reduce-scatters after every micro-batch, ZeRO 3 also gathers twice
    (1, 0, (0, 0, 1, 1)), (1, 1, (0, 0, 1, 1)), (1, 2, (1, 1, 0, 0)), (1, 3, (2, 1, 0, 0)),
    # a pipeline schedule defers every stage's reduction; ZeRO 3 still gathers per micro-batch
    (2, 0, (0, 0, 1, 1)), (2, 1, (0, 0, 1, 1)), (2, 2, (0, 0, 1, 1)), (2, 3, (2, 0, 0, 1)),
])
def test_fsdp2_runs_its_collectives_per_micro_batch_or_once_per_step(pp: int, zero: int,
                                                                    expected: tuple[int, ...]) -> None:
    plan = ParallelPlan(pp=pp, dp=2, zero_stage=zero, micro_batch=1, global_batch=8)
    assert astuple(fsdp_schedule(plan)) == expected


def test_a_deferred_reduction_is_one_synchronisation_point_per_unit_a_step() -> None:
    model, cluster = load_model("tiny"), load_cluster("a100-80g:8")
    units = len(fsdp_units(model, 1, "layer")) * model.num_layers + 1  # the blocks and the root
    for zero, per_step in ((0, 1), (1, 2), (2, 4 * 2)):  # 4 micro-batches; ZeRO 1/2 also gather
        plan = ParallelPlan(dp=2, zero_stage=zero, micro_batch=1, global_batch=8)
        # and the loop's two scalar all-reduces (gradient norm, logged loss)
        assert _sync_points(cluster, model, plan, model.num_layers, True, True)["all_reduce"] == (
            2 + units * per_step), zero


#: bastion's runtime on datasheet rates, with 2-byte gradients so that only the collectives' schedule differs
RUNTIME_SCHEDULE = dataclasses.replace(software_stack("bastion").options, fp32_gradients=False)
ONCE_PER_STEP = dataclasses.replace(RUNTIME_SCHEDULE, runtime_fsdp=False)


def test_on_a_gpu_bastions_zero2_reduces_and_gathers_with_every_micro_batch() -> None:
    # FSDP2's ZeRO-2 reduce-scatters after each backward and gathers for each forward (`fsdp_schedule`), where
    # DDP-like software reduces once per step: 4 micro-batches pay 4 times the same overlapped collectives
    model, cluster = load_model("llama3-8b"), load_cluster("h100-sxm:8")
    plan = ParallelPlan(dp=8, zero_stage=2, micro_batch=1, global_batch=32, recompute="full")
    runtime = estimate(model, cluster, plan, options=RUNTIME_SCHEDULE).time
    once = estimate(model, cluster, plan, options=ONCE_PER_STEP).time
    assert once.dp_comm > 0
    assert runtime.dp_comm == pytest.approx(4 * once.dp_comm)
    assert runtime.step - once.step == pytest.approx(3 * once.dp_comm)
    # ZeRO 0 and 1 defer the reduction in the runtime too: nothing changes there
    for zero in (0, 1):
        plan = dataclasses.replace(plan, zero_stage=zero)
        assert estimate(model, cluster, plan, options=RUNTIME_SCHEDULE).time == estimate(
            model, cluster, plan, options=ONCE_PER_STEP).time


def test_on_a_gpu_bastions_zero3_under_a_pipeline_reduces_once_a_step() -> None:
    # the pipeline schedule defers ZeRO-3's reduce-scatter to the step's end (gathers stay per micro-batch): the
    # reduction leaves every micro-batch's backward and is paid once, overlapped with the last backward
    model, cluster = load_model("llama3-8b"), load_cluster("h100-sxm:8")
    piped = ParallelPlan(dp=4, pp=2, zero_stage=3, micro_batch=1, global_batch=32, recompute="full")
    runtime = estimate(model, cluster, piped, options=RUNTIME_SCHEDULE)
    per_micro_batch = estimate(model, cluster, piped, options=ONCE_PER_STEP)
    assert runtime.time.dp_comm < per_micro_batch.time.dp_comm
    assert any("reduced 1 time a step (8 micro-batches)" in a for a in runtime.assumptions)
    # without a pipeline the runtime's ZeRO-3 gathers and reduces every micro-batch, as other software does
    flat = dataclasses.replace(piped, dp=8, pp=1)
    assert estimate(model, cluster, flat, options=RUNTIME_SCHEDULE).time == estimate(
        model, cluster, flat, options=ONCE_PER_STEP).time


def test_the_datasheet_schedule_of_bastions_runtime_is_fsdp_schedule() -> None:
    for pp, zero in ((1, 0), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)):
        plan = ParallelPlan(pp=pp, dp=2, zero_stage=zero, micro_batch=1, global_batch=8)
        assert _data_parallel_schedule(plan, RUNTIME_SCHEDULE) == fsdp_schedule(plan)
        # other software: ZeRO 0-2 once per step, ZeRO-3 every micro-batch, with or without a pipeline
        expected = (2, 1, 0, 0) if zero == 3 else (0, 0, 1, 1)
        assert astuple(_data_parallel_schedule(plan, ONCE_PER_STEP)) == expected
