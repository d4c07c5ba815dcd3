"""torch.compile in the predictor (PredictOptions.compiled): fused elementwise work and the activations it no
longer keeps, checked against the H200 measurements the fraction did not come from (whole-model steps)."""

from __future__ import annotations

import json

import pytest

from bastion.predict import PredictOptions, estimate
from bastion.predict.calibration import DATA_DIR, load_calibration
from bastion.predict.memory import activation_bytes_per_token
from bastion.predict.software import software_stack
from bastion.specs import ParallelPlan, load_cluster, load_model

MEASURED = json.loads((DATA_DIR / "h200-torch2.11-2026-11.json").read_text())


def test_compiling_scales_the_layers_memory_bound_work_and_nothing_else() -> None:
    model, cluster = load_model("llama3-8b", 8192), load_cluster("h200:8")
    plan = ParallelPlan(dp=8, zero_stage=3, global_batch=8)
    eager = estimate(model, cluster, plan, options=PredictOptions())
    compiled = estimate(model, cluster, plan, options=PredictOptions(compiled=True))
    fraction = load_calibration().membound["compiled_layer_membound_fraction"]
    assert 0 < fraction < 1
    assert compiled.time.compute == eager.time.compute
    assert compiled.time.optimizer == eager.time.optimizer
    # the layers' share shrinks by the fraction; the LM head's loss is outside the compiled blocks
    assert compiled.time.memory_bound < eager.time.memory_bound
    assert compiled.time.memory_bound > fraction * eager.time.memory_bound
    assert compiled.step_time_s < eager.step_time_s


def test_compiled_swiglu_keeps_no_silu_output() -> None:
    # the H200 layer runs: 39 bytes per token x hidden eager, 32 compiled; the silu output is 2 bytes x ffn (3.5 h)
    model = load_model("llama3-8b", 8192)
    eager = activation_bytes_per_token(model, 8192, 1, False, "none", "bf16", PredictOptions())
    compiled = activation_bytes_per_token(model, 8192, 1, False, "none", "bf16", PredictOptions(compiled=True))
    assert eager - compiled == 2 * model.ffn_hidden_size


def test_whole_model_compile_speedup_matches_the_h200_step_it_was_not_fitted_to() -> None:
    # the fraction comes from single-layer runs; this is the 1.5B model's whole training step (plain PyTorch,
    # whole-model torch.compile, whose loss is compiled too: fused cross-entropy)
    runs = {r["variant"]: r for r in MEASURED["train"] if r["model"] == "llama-1B-ish"}
    measured_speedup = runs["eager"]["step_s"] / runs["compile"]["step_s"]  # 1.19
    model, cluster = load_model("llama-1.5b", 2048), load_cluster("h200:1")
    plan = ParallelPlan(dp=1, global_batch=8, micro_batch=8, precision="bf16")
    eager = estimate(model, cluster, plan, options=PredictOptions()).step_time_s
    compiled = estimate(model, cluster, plan,
                        options=PredictOptions(compiled=True, fused_cross_entropy=True)).step_time_s
    assert eager / compiled == pytest.approx(measured_speedup, rel=0.05)


def test_the_compiled_runtime_is_a_named_stack() -> None:
    # bastion's own runtime, compiled: its MoE experts sit in the layout bastion executes and run torch's grouped
    # GEMM, its DTensor sequence parallelism keeps the matmuls' gathered inputs, FSDP2 runs on the runtime's schedule
    # with fp32 gradients
    assert software_stack("bastion-compiled").options == PredictOptions(
        compiled=True, moe_expert_layout="bastion", sp_gathered_inputs=True, grouped_gemm="torch_grouped_mm",
        runtime_fsdp=True, fp32_gradients=True)
