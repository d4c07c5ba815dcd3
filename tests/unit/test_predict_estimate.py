"""estimate(): the contract, the shape of the time model, and agreement with the H200 calibration runs."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from bastion.errors import PlanError
from bastion.predict import PredictOptions, comm, estimate
from bastion.predict.calibration import DATA_DIR
from bastion.predict.memory import MEMORY_FIELDS
from bastion.specs import ModelSpec, ParallelPlan, load_cluster, load_model

TIME_FIELDS = ("compute", "recompute", "memory_bound", "tp_comm", "cp_comm", "dp_comm", "pp_comm", "bubble",
               "optimizer", "step")


def test_contract_fields_and_json() -> None:
    est = estimate(load_model("llama3-8b"), load_cluster("h100-sxm:64"),
                   ParallelPlan(dp=8, tp=8, global_batch=64, sequence_parallel=True), 8192)
    for name in MEMORY_FIELDS:
        assert getattr(est.memory, name) >= 0
    assert set(TIME_FIELDS) <= set(est.time.to_dict())
    parts = sum(v for k, v in est.time.to_dict().items() if k != "step")
    assert parts == pytest.approx(est.step_time_s)
    assert est.memory.total == pytest.approx(sum(getattr(est.memory, n) for n in MEMORY_FIELDS if n != "total"))
    assert len(est.memory_by_stage) == 1
    assert est.tokens_per_s == pytest.approx(64 * 8192 / est.step_time_s)
    assert 0.2 < est.mfu < 0.7 and est.hfu == est.mfu  # no recompute
    assert est.assumptions and json.loads(json.dumps(est.to_dict()))["plan"]["tp"] == 8


def test_inconsistent_plan_raises_plan_error_but_oom_does_not() -> None:
    with pytest.raises(PlanError):
        estimate(load_model("llama3-8b"), load_cluster("h100-sxm:64"), ParallelPlan(dp=4, tp=8, global_batch=4))
    big = estimate(load_model("llama3-70b"), load_cluster("h100-sxm:1"), ParallelPlan(global_batch=1))
    assert not big.fits and big.memory.total > big.hbm_bytes


def test_step_time_grows_with_global_batch_and_recompute() -> None:
    model, cluster = load_model("llama2-7b"), load_cluster("a100-80g:8")
    base = estimate(model, cluster, ParallelPlan(dp=8, global_batch=64, zero_stage=3))
    double = estimate(model, cluster, ParallelPlan(dp=8, global_batch=128, zero_stage=3))
    assert double.step_time_s == pytest.approx(2 * base.step_time_s, rel=0.05)
    full = estimate(model, cluster, ParallelPlan(dp=8, global_batch=64, zero_stage=3, recompute="full"))
    assert full.time.recompute > 0 and full.step_time_s > base.step_time_s
    assert full.hfu > full.mfu == pytest.approx(base.mfu * base.step_time_s / full.step_time_s)
    assert full.memory.activations < base.memory.activations / 5


def test_pipeline_bubble_follows_the_schedule() -> None:
    model, cluster = load_model("llama2-13b"), load_cluster("h100-sxm:32")
    kw = dict(dp=1, tp=8, pp=4, global_batch=16, sequence_parallel=True)
    one = estimate(model, cluster, ParallelPlan(**kw))
    inter = estimate(model, cluster, ParallelPlan(**kw, pp_schedule="interleaved-1f1b", vpp=2))
    zb = estimate(model, cluster, ParallelPlan(**kw, pp_schedule="zero-bubble"))
    per_mb = (one.step_time_s - one.time.bubble - one.time.pp_comm - one.time.dp_comm - one.time.optimizer) / 16
    assert one.time.bubble == pytest.approx(3 * per_mb, rel=1e-6)  # (p-1)/m of m micro-batches
    assert inter.time.bubble == pytest.approx(one.time.bubble / 2, rel=0.05)
    assert zb.time.bubble == pytest.approx(one.time.bubble / 3, rel=0.05)
    assert inter.time.pp_comm > one.time.pp_comm  # v times the hops
    gpipe = estimate(model, cluster, ParallelPlan(**kw, pp_schedule="gpipe"))
    assert gpipe.memory.activations > one.memory.activations


def test_fsdp_communication_is_exposed_on_a_slow_oversubscribed_fabric() -> None:
    model = load_model("llama2-7b")
    fast = load_cluster("h100-sxm:64")
    slow = replace(fast, network=replace(fast.network, scale_out_bw_gbs=3.0, oversubscription=4.0))
    plan = ParallelPlan(dp=64, global_batch=64, zero_stage=3)
    assert estimate(model, slow, plan).time.dp_comm > 10 * estimate(model, fast, plan).time.dp_comm
    assert estimate(model, slow, plan).step_time_s > estimate(model, fast, plan).step_time_s


def test_data_parallel_gradient_reduction_crossing_nodes_costs_more() -> None:
    model = load_model("llama2-7b")
    plan8 = ParallelPlan(dp=8, global_batch=8)
    plan64 = ParallelPlan(dp=64, global_batch=64)
    inside = estimate(model, load_cluster("a100-80g:8"), plan8).time.dp_comm
    across = estimate(model, load_cluster("a100-80g:64"), plan64).time.dp_comm
    assert across > inside


def test_context_parallel_splits_attention_and_activations() -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("h100-sxm:8")
    no_cp = estimate(model, cluster, ParallelPlan(dp=8, global_batch=8, zero_stage=3), 32768)
    plan = ParallelPlan(dp=2, cp=4, global_batch=2, zero_stage=3)
    ring = estimate(model, cluster, plan, 32768, options=PredictOptions(context_parallel="ring"))
    assert ring.memory.activations == pytest.approx(no_cp.memory.activations / 4, rel=0.01)
    # all-gather CP (bastion's runtime) also keeps the other 3 ranks' K,V of every layer: 32 layers x 8192 local
    # tokens x 3 x (K + V: 2 x 1024 wide) x 2 bytes
    gathered = estimate(model, cluster, plan, 32768)
    extra = 32 * 8192 * 3 * 2 * 1024 * 2
    assert gathered.memory.activations == pytest.approx(ring.memory.activations + extra, rel=1e-9)
    assert gathered.time.cp_comm > 0 and ring.time.cp_comm >= 0
    # ZeRO-3 shards over dp x cp = 8 ranks either way: the same model-state bytes as dp 8
    assert gathered.memory.params == pytest.approx(no_cp.memory.params, rel=1e-3)
    # under full recompute only the layer being re-materialised holds the gathered K,V: one layer's worth
    full = replace(plan, recompute="full")
    ring_full = estimate(model, cluster, full, 32768, options=PredictOptions(context_parallel="ring"))
    gathered_full = estimate(model, cluster, full, 32768)
    assert gathered_full.memory.activations == pytest.approx(ring_full.memory.activations + extra / 32, rel=1e-9)


def test_no_file_io_after_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    estimate(load_model("tiny"), load_cluster("cpu:4"), ParallelPlan(dp=4, global_batch=4))

    def forbidden(*_a, **_k):
        raise AssertionError("estimate read a file")

    monkeypatch.setattr(Path, "read_text", forbidden)
    monkeypatch.setattr(Path, "open", forbidden)
    model = ModelSpec(name="fresh", num_layers=6, hidden_size=768, num_heads=12, ffn_hidden_size=3072,
                      vocab_size=50000, ffn_type="gelu")
    est = estimate(model, load_cluster("cpu:4"), ParallelPlan(dp=2, tp=2, global_batch=8, zero_stage=3))
    assert math.isfinite(est.step_time_s)


def _h200_runs() -> list[dict]:
    return json.loads((DATA_DIR / "h200-torch2.11-2026-11.json").read_text())["train"]


@pytest.mark.parametrize("run", [r for r in _h200_runs() if r["variant"] != "compile"],
                         ids=lambda r: f"{r['model']}-{r['variant']}")
def test_reproduces_the_h200_calibration_training_steps(run: dict) -> None:
    # the plain-PyTorch steps measured with the same kernels the curves come from: within 15%, memory within 15%
    model = ModelSpec(name=run["model"], num_layers=run["layers"], hidden_size=run["hidden"], num_heads=run["heads"],
                      num_kv_heads=run["kv_heads"], ffn_hidden_size=run["ffn"], vocab_size=run["vocab"],
                      seq_len=run["seq"])
    plan = ParallelPlan(micro_batch=run["micro_batch"], global_batch=run["micro_batch"],
                        recompute="full" if "ckpt" in run["variant"] else "none")
    est = estimate(model, load_cluster("h200:1"), plan, options=PredictOptions())
    assert est.step_time_s == pytest.approx(run["step_s"], rel=0.15)
    assert est.memory.total / 2**30 == pytest.approx(run["peak_mem_GiB"] + 1.0, rel=0.15)


def test_ring_collectives_pay_one_hop_latency_per_rank_all_reduce_a_tree() -> None:
    # NCCL runs all-gather / reduce-scatter only as rings: n - 1 steps, each waiting for one hop (NVLink inside a
    # node, the network between nodes); all-reduce's tree crosses log2(nodes) network hops
    cluster = load_cluster("a100-80g:2048")
    net = cluster.network
    small, large = comm.place_group(cluster, 512, 1), comm.place_group(cluster, 2048, 1)
    assert (small.local, small.domains, large.domains) == (8, 64, 256)

    def ring(g: comm.GroupPlacement) -> float:
        return ((g.size - g.domains) * net.scale_up_latency_us + (g.domains - 1) * net.scale_out_latency_us) * 1e-6

    one_byte = 1.0  # the bandwidth terms are nearly the same constant for both groups
    gap = comm.all_gather_time(cluster, one_byte, large) - comm.all_gather_time(cluster, one_byte, small)
    assert gap == pytest.approx(ring(large) - ring(small), rel=1e-3)
    assert ring(large) > 5e-3  # thousands of ranks: milliseconds per collective, whatever its size
    tree_gap = comm.all_reduce_time(cluster, one_byte, large) - comm.all_reduce_time(cluster, one_byte, small)
    assert tree_gap == pytest.approx(2 * 2 * net.scale_out_latency_us * 1e-6, rel=0.05)  # two more tree levels
    # the reduce-scatter of a ZeRO-3 step over 2048 ranks is latency-dominated for a 1 MB bucket
    assert comm.reduce_scatter_time(cluster, 1e6, large) > 3 * comm.reduce_scatter_time(cluster, 1e6, small) / 2


def test_fp8_pays_for_casting_gemm_operands_and_keeps_the_lm_head_in_bf16() -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("h100-sxm:8")
    plans = {p: ParallelPlan(dp=8, global_batch=8, zero_stage=1, precision=p) for p in ("bf16", "fp8")}
    bf16, fp8 = (estimate(model, cluster, plans[p], 4096) for p in ("bf16", "fp8"))
    t, h, kv, f = 4096, 4096, 1024, 14336
    shapes = [(t, h, h + 2 * kv), (t, h, h), (t, h, 2 * f), (t, f, h)]
    elements = sum(m * k + k * n + m * n for m, k, n in shapes)
    cast_s = model.num_layers * elements * 4.4 / 3350e9  # fp8_recipes.toml's delayed scaling over the H100's HBM
    assert fp8.time.memory_bound - bf16.time.memory_bound == pytest.approx(cast_s, rel=1e-6)
    assert 0.05 < cast_s / fp8.time.compute < 0.25  # at h = 4096: about a tenth of the fp8 GEMM time
    # twice the peak does not make the step twice as fast: attention, casts, the optimizer and the head remain
    assert 1.1 < bf16.step_time_s / fp8.step_time_s < 1.6
    assert fp8.time.compute < 0.8 * bf16.time.compute  # the GEMMs themselves run at the fp8 rate...
    head_bf16 = 3 * 2 * t * h * model.vocab_size / (989.4e12 * 0.95)
    assert fp8.time.compute > head_bf16  # ...except the LM head, which stays in bf16


def test_attention_efficiency_cap_models_an_older_kernel() -> None:
    model, cluster = load_model("llama2-7b"), load_cluster("h100-sxm:8")
    plan = ParallelPlan(dp=8, global_batch=8, zero_stage=3)
    calibrated = estimate(model, cluster, plan, 16384)
    cap = 0.17  # llm-foundry's 2023 Triton kernel on an H100, as its published runs imply
    older = estimate(model, cluster, plan, 16384, options=PredictOptions(attention_efficiency_cap=cap))
    # causal attention per layer: 2·b·s²·h forward (half of 4·b·s²·h), 3.5x that forward + backward
    attention_flops = model.num_layers * 3.5 * 2 * 16384**2 * model.hidden_size
    measured = 586.68 / 989.4 * 0.75 / 0.787  # H200 SDPA fwd+bwd at 16k tokens, carried to the H100
    assert older.time.compute - calibrated.time.compute == pytest.approx(
        attention_flops / (989.4e12 * cap) - attention_flops / (989.4e12 * measured), rel=0.005)
    assert any("at most 0.17 of the bf16 peak" in a for a in older.assumptions)
    loose = estimate(model, cluster, plan, 16384, options=PredictOptions(attention_efficiency_cap=0.95))
    assert loose.step_time_s == calibrated.step_time_s  # a cap above the calibrated rate changes nothing


def test_zero_1_2_parameter_gathers_hide_under_the_next_forward() -> None:
    """FSDP2 (reshard_after_forward=False) and Megatron's --overlap-param-gather all-gather the updated
    parameters layer by layer in the next forward; DeepSpeed ZeRO-1/2 gathers them in one block after the
    optimizer step. Overlapped, only the first bucket's gather and the SM slowdown under the rest are paid."""
    from bastion.predict import comm
    from bastion.predict.calibration import load_calibration

    model, cluster = load_model("llama2-13b"), load_cluster("h100-sxm:64")
    plan = ParallelPlan(dp=64, zero_stage=1, micro_batch=1, global_batch=64)
    hidden = estimate(model, cluster, plan, 4096)
    exposed = estimate(model, cluster, plan, 4096, options=PredictOptions(overlap_param_gather=False))
    assert exposed.time.dp_comm > hidden.time.dp_comm > 0
    group = comm.place_group(cluster, 64, 1)
    gather = comm.all_gather_time(cluster, float(model.total_params() * 2), group)  # bf16 parameters
    first = comm.all_gather_time(cluster, PredictOptions().dp_bucket_bytes, group)  # one bucket, bf16 both ways
    slow = load_calibration().network["overlap_slowdown"]
    # here the forward (~0.5 s) outlasts the gather, so all of it is under compute
    assert exposed.time.dp_comm - hidden.time.dp_comm == pytest.approx(gather - first - slow * gather, rel=1e-6)
    # ZeRO 0 has nothing to gather: the option changes nothing
    plain = replace(plan, zero_stage=0)
    assert estimate(model, cluster, plain, 4096).step_time_s == estimate(
        model, cluster, plain, 4096, options=PredictOptions(overlap_param_gather=False)).step_time_s
