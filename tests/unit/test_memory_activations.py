"""Activation memory against Korthikanti et al. 2022 (arXiv 2205.05198), Table 2, and pipeline in-flight counts."""

from __future__ import annotations

import json

import pytest

from bastion.predict.calibration import CALIBRATION_OPS_FILE, DATA_DIR
from bastion.predict.memory import (
    activation_bytes_per_token,
    layer_saved_tensors,
    saved_bytes_per_token,
    stage_memory,
)
from bastion.predict.options import PredictOptions
from bastion.predict.schedule import bubble_fraction, layer_microbatches_in_flight
from bastion.specs import ModelSpec, ParallelPlan, load_model

#: GPT as Korthikanti et al. model it: 4h GELU MLP, MHA, dropout, unfused softmax, fp16
GPT = PredictOptions(flash_attention=False, dropout=True)


def gpt(h: int, a: int, s: int) -> ModelSpec:
    return ModelSpec(name="gpt", num_layers=1, hidden_size=h, num_heads=a, ffn_hidden_size=4 * h, ffn_type="gelu",
                     vocab_size=51200, seq_len=s)


# (model, s, a, h, t) of the paper's Table 3 configurations: 22B, 175B (GPT-3), 530B (MT-NLG), 1T
CONFIGS = [(2048, 64, 6144, 8), (2048, 96, 12288, 8), (2048, 128, 20480, 8), (2048, 160, 25600, 8)]


@pytest.mark.parametrize(("s", "a", "h", "t"), CONFIGS)
def test_table2_all_variants(s: int, a: int, h: int, t: int) -> None:
    model = gpt(h, a, s)
    sbh = s * h  # per sequence (b = 1): the formulas are per layer for b·s tokens, so divide by s per token

    def per_layer(tp: int, sp: bool, rc: str) -> float:
        if rc == "full":
            return activation_bytes_per_token(model, s, tp, sp, rc, "fp16", GPT) * s
        # the paper leaves out small buffers such as the norms' statistics
        return saved_bytes_per_token(layer_saved_tensors(model, s, rc, "fp16", GPT), tp, sp, statistics=False) * s

    assert per_layer(1, False, "none") == pytest.approx(sbh * (34 + 5 * a * s / h))
    assert per_layer(t, False, "none") == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    assert per_layer(t, True, "none") == pytest.approx(sbh / t * (34 + 5 * a * s / h))
    assert per_layer(t, False, "selective") == pytest.approx(sbh * (10 + 24 / t))
    assert per_layer(t, True, "selective") == pytest.approx(sbh * 34 / t)
    assert per_layer(1, False, "full") == pytest.approx(2 * sbh)
    # the statistics left out are the two norms' fp32 1/rms per token, nothing else
    with_stats = activation_bytes_per_token(model, s, 1, False, "none", "fp16", GPT) * s
    assert with_stats - per_layer(1, False, "none") == 2 * 4 * s


def test_gpt3_175b_selective_plus_sp_saves_the_published_fraction() -> None:
    # Sec. 5 / Fig. 7: for GPT-3 (t = 8) sequence parallelism + selective recompute cut activation memory ~5x
    # against tensor parallelism alone
    model = gpt(12288, 96, 2048)
    tp_only = activation_bytes_per_token(model, 2048, 8, False, "none", "fp16", GPT)
    both = activation_bytes_per_token(model, 2048, 8, True, "selective", "fp16", GPT)
    assert tp_only / both == pytest.approx(5.0, rel=0.1)


def test_flash_attention_drops_the_s_squared_term() -> None:
    model = gpt(4096, 32, 8192)
    flash = activation_bytes_per_token(model, 8192, 1, False, "none", "bf16", PredictOptions(flash_attention=True))
    unfused = activation_bytes_per_token(model, 8192, 1, False, "none", "bf16", PredictOptions(flash_attention=False))
    assert unfused - flash == pytest.approx(2 * 32 * 8192 - 4 * 32)
    # bf16: 4h replicated (norm inputs, QKV and MLP inputs), Q K V + output 4h, GELU MLP 2·4h; fp32 log-sum-exp
    # per head and 1/rms per token per norm
    assert flash == pytest.approx(2 * (4 * 4096 + 4 * 4096 + 2 * 4 * 4096) + 4 * 32 + 2 * 4)


def test_transformer_engine_style_fp8_and_fused_swiglu_keep_less() -> None:
    """fp8 matmuls that keep their fp8-cast inputs (Transformer Engine): the QKV, MLP and w2 inputs drop from 2
    bytes to 1, and the output projection keeps a 1-byte copy beside the attention's bf16 output; a fused SwiGLU
    keeps its two inputs but not silu's output. Per token, one TP rank, no SP."""
    model = load_model("llama3-8b")
    h, q, f = model.hidden_size, model.q_width, model.ffn_hidden_size
    plain = activation_bytes_per_token(model, 8192, 1, False, "none", "fp8", PredictOptions())
    te = PredictOptions(fp8_saved_inputs=True)
    fp8 = activation_bytes_per_token(model, 8192, 1, False, "none", "fp8", te)
    assert plain - fp8 == pytest.approx((2 * h + f) * (2 - 1) - q)
    # bf16 matmuls are untouched by the fp8 option
    assert activation_bytes_per_token(model, 8192, 1, False, "none", "bf16", te) == activation_bytes_per_token(
        model, 8192, 1, False, "none", "bf16", PredictOptions())
    fused = activation_bytes_per_token(model, 8192, 1, False, "none", "bf16", PredictOptions(fused_swiglu=True))
    eager = activation_bytes_per_token(model, 8192, 1, False, "none", "bf16", PredictOptions())
    assert eager - fused == pytest.approx(2 * f)
    names = {t.name for t in layer_saved_tensors(model, 8192, "none", "fp8", PredictOptions(
        fp8_saved_inputs=True, fused_swiglu=True))}
    assert "feed_forward.silu_output" not in names and "attention.output_fp8" in names


H200_LAYERS = [r for r in json.loads((DATA_DIR / CALIBRATION_OPS_FILE).read_text())["layer"] if r["mode"] == "eager"]


@pytest.mark.parametrize("row", H200_LAYERS, ids=lambda r: f"h{r['hidden']}-s{r['seq']}")
def test_swiglu_gqa_layer_matches_the_h200_eager_measurement(row: dict) -> None:
    # one bf16 Llama layer (fused RMSNorm, flash SDPA, SwiGLU) on torch 2.11 CUDA; the measurement leaves out
    # the layer's input, which existed before the layer ran (its checkpointed rows count 0)
    model = ModelSpec(name="l", num_layers=1, hidden_size=row["hidden"], num_heads=row["heads"],
                      num_kv_heads=row["kv_heads"], ffn_hidden_size=row["ffn"], vocab_size=32000, seq_len=row["seq"])
    predicted = activation_bytes_per_token(model, row["seq"], 1, False, "none", "bf16") - 2 * row["hidden"]
    measured = row["saved_act_bytes"] / (row["batch"] * row["seq"])
    assert predicted == pytest.approx(measured, rel=1e-4)
    assert predicted / row["hidden"] == pytest.approx(row["saved_act_bytes_per_token_per_hidden"], rel=1e-4)


def test_composite_rmsnorm_keeps_the_normalised_input_too() -> None:
    # PyTorch's CPU RMSNorm is composite: per norm it also keeps the fp32 x·(1/rms); below fp32 it keeps an fp32
    # copy of the input instead of the input
    model = load_model("small")
    h = model.hidden_size

    def per_token(precision: str, fused: bool) -> float:
        return activation_bytes_per_token(model, 256, 1, False, "none", precision, PredictOptions(), fused)

    assert per_token("fp32", False) - per_token("fp32", True) == 2 * 4 * h
    assert per_token("bf16", False) - per_token("bf16", True) == 2 * (4 * h - 2 * h + 4 * h)
    # LayerNorm (biased models) is one kernel on every device
    biased = ModelSpec(name="b", num_layers=1, hidden_size=h, num_heads=8, ffn_hidden_size=4 * h,
                       ffn_type="gelu", vocab_size=256, bias=True)
    assert activation_bytes_per_token(biased, 256, 1, False, "none", "fp32", PredictOptions(), False) == \
        activation_bytes_per_token(biased, 256, 1, False, "none", "fp32", PredictOptions(), True)


def test_qwen3_qk_norms_keep_their_inputs_per_head() -> None:
    # the q/k RMSNorms keep the projections' outputs (before RoPE, whose constant tables keep nothing per token)
    # and one statistic per head; composite on CPU, also the fp32 normalised copies (torch 2.13 CPU, fp32,
    # saved_tensors_hooks on one block: 1,562 bytes per token more with the norms, 2 of them a constant)
    plain = ModelSpec(name="q", num_layers=1, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=32,
                      ffn_hidden_size=128, vocab_size=256)
    qwen = ModelSpec(**{**plain.to_dict(), "qk_norm": True})
    q, kv = plain.q_width, plain.kv_width

    def per_token(model: ModelSpec, fused: bool, tp: int = 1) -> float:
        saved = layer_saved_tensors(model, 64, "none", "fp32", PredictOptions(), fused)
        return saved_bytes_per_token(saved, tp, False)

    assert per_token(qwen, True) - per_token(plain, True) == 4 * (q + kv) + 4 * (4 + 2)
    assert per_token(qwen, False) - per_token(plain, False) == 2 * 4 * (q + kv) + 4 * (4 + 2)
    assert per_token(qwen, True, tp=2) - per_token(plain, True, tp=2) == (4 * (q + kv) + 4 * (4 + 2)) / 2


def test_the_norm_kernel_follows_the_device_unless_the_options_say() -> None:
    model = load_model("small")
    plan = ParallelPlan(micro_batch=2, global_batch=2, precision="fp32")
    cpu = stage_memory(model, plan, 256, 0, False, PredictOptions())
    gpu = stage_memory(model, plan, 256, 0, True, PredictOptions())
    forced = stage_memory(model, plan, 256, 0, False, PredictOptions(fused_rmsnorm=True))
    # 6 layers x 2 norms + the final norm, each an h-wide fp32 x·(1/rms) per token, 512 tokens
    assert cpu.activations - gpu.activations == (6 * 2 + 1) * 4 * model.hidden_size * 512
    assert forced.activations == gpu.activations


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_1f1b_stage_i_holds_p_minus_i_microbatches(stage: int) -> None:
    assert layer_microbatches_in_flight("1f1b", 4, 1, 16, stage, 8) == (4 - stage) * 8


def test_gpipe_holds_every_microbatch_and_few_microbatches_cap_1f1b() -> None:
    assert layer_microbatches_in_flight("gpipe", 4, 1, 16, 3, 8) == 16 * 8
    assert layer_microbatches_in_flight("1f1b", 8, 1, 2, 0, 4) == 2 * 4


def test_interleaved_adds_chunks_on_the_first_stage() -> None:
    # Megatron: warm-up (p - 1)·2 + (v - 1)·p chunk-microbatches + 1, each of L/(p·v) layers
    assert layer_microbatches_in_flight("interleaved-1f1b", 4, 2, 16, 0, 8) == (6 + 4 + 1) * 4
    # Korthikanti Sec. 4.2.3: interleaving costs a factor (1 + (p-1)/(p·v)) on stage 0 against L layers' worth
    assert pytest.approx(1 + 3 / 8, rel=0.01) == (6 + 4 + 1) * 4 / 32


def test_bubble_fractions() -> None:
    assert bubble_fraction("1f1b", 8, 1, 32) == pytest.approx(7 / 32)
    assert bubble_fraction("gpipe", 8, 1, 32) == pytest.approx(7 / 32)
    assert bubble_fraction("interleaved-1f1b", 8, 4, 32) == pytest.approx(7 / 128)
    assert bubble_fraction("zero-bubble", 8, 1, 32) == pytest.approx(7 / 96)
    assert bubble_fraction("zbv", 8, 2, 32) < bubble_fraction("zero-bubble", 8, 1, 32)
    assert bubble_fraction("1f1b", 1, 1, 32) == 0.0


def test_stage_memory_activations_scale_with_in_flight_microbatches() -> None:
    model = load_model("llama3-8b")
    plan = ParallelPlan(dp=1, tp=1, pp=4, global_batch=16, micro_batch=1)
    first = stage_memory(model, plan, 8192, 0, True, PredictOptions())
    middle = stage_memory(model, plan, 8192, 1, True, PredictOptions())
    assert first.activations / middle.activations == pytest.approx(4 / 3)
    last = stage_memory(model, plan, 8192, 3, True, PredictOptions())
    assert last.logits > 0 and first.logits == 0
