"""Activation memory against Korthikanti et al. 2022 (arXiv 2205.05198), Table 2, and pipeline in-flight counts."""

from __future__ import annotations

import pytest

from bastion.predict.memory import activation_bytes_per_token, stage_memory
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
        return activation_bytes_per_token(model, s, tp, sp, rc, "fp16", GPT) * s

    assert per_layer(1, False, "none") == pytest.approx(sbh * (34 + 5 * a * s / h))
    assert per_layer(t, False, "none") == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    assert per_layer(t, True, "none") == pytest.approx(sbh / t * (34 + 5 * a * s / h))
    assert per_layer(t, False, "selective") == pytest.approx(sbh * (10 + 24 / t))
    assert per_layer(t, True, "selective") == pytest.approx(sbh * 34 / t)
    assert per_layer(1, False, "full") == pytest.approx(2 * sbh)


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
    assert flash == pytest.approx(2 * (4 * 4096 + 4 * 4096 + 2 * 4 * 4096) + 4 * 32)


def test_swiglu_gqa_counts_match_the_h200_layer_measurement_within_15_percent() -> None:
    # h200 calibration `layer`, eager: 39.0 bytes per token per hidden unit (h 4096, 32/8 heads, ffn 14336)
    model = ModelSpec(name="l", num_layers=1, hidden_size=4096, num_heads=32, num_kv_heads=8,
                      ffn_hidden_size=14336, vocab_size=32000)
    per_token_per_h = activation_bytes_per_token(model, 2048, 1, False, "none", "bf16") / 4096
    assert per_token_per_h == pytest.approx(39.0, rel=0.15)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_1f1b_stage_i_holds_p_minus_i_microbatches(stage: int) -> None:
    assert layer_microbatches_in_flight("1f1b", 4, 1, 16, stage, 32) == (4 - stage) * 8


def test_gpipe_holds_every_microbatch_and_few_microbatches_cap_1f1b() -> None:
    assert layer_microbatches_in_flight("gpipe", 4, 1, 16, 3, 32) == 16 * 8
    assert layer_microbatches_in_flight("1f1b", 8, 1, 2, 0, 32) == 2 * 4


def test_interleaved_adds_chunks_on_the_first_stage() -> None:
    # Megatron: warm-up (p - 1)·2 + (v - 1)·p chunk-microbatches + 1, each of L/(p·v) layers
    assert layer_microbatches_in_flight("interleaved-1f1b", 4, 2, 16, 0, 32) == (6 + 4 + 1) * 4
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
