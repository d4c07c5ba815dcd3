"""Why the published runs miss the target: the attention kernels of their software, which the case file does not
record. Two checks that keep the diagnosis honest as the model changes:

1. On every row where attention dominates the predicted step (long sequences), the attention rate the published
   time implies — all other parts costed as predicted — is one number per card, whatever the model size,
   head_dim (64/128), sequence length (8k-65k) or memory variant: a property of a kernel, not of the rows. It is
   0.33 of the A100 bf16 peak and 0.17 of the H100's, against the calibrated torch 2.11 SDPA's ~0.6. The rows
   are llm-foundry's 2023 benchmarks, whose submit script defaulted to `attn_impl: triton` (Triton flash attention;
   later versions install flash-attn 2, which on Hopper does not use its wgmma/TMA instructions either).
2. What-if, not the predictor: given each publication's documented attention implementation (Megatron-LM
   2021-22 and Megatron-DeepSpeed: unfused softmax with dropout; llm-foundry 2023: flash attention at the rate
   check 1 finds on each card), the same physical model meets the target (median 6.1%, p90 21.1%). The
   llm-foundry rates are read off 31 long-sequence rows themselves (two numbers, applied to that source's 108
   rows), so this bounds what knowing the software would give; it does not validate those two numbers.
"""

from __future__ import annotations

import importlib
import math
import statistics

import pytest

from bastion.predict import PredictOptions, flops
from bastion.predict.memory import stage_layer_count
from bastion.predict.options import PRODUCTION_STACK
from bastion.predict.validate import PUBLIC_CASES, RowSkipped, case_estimate, percentile, read_cases

# the package re-exports the function `estimate`, which hides the module of the same name
estimate_module = importlib.import_module("bastion.predict.estimate")

ROWS = read_cases(PUBLIC_CASES)
#: long-sequence rows (the case file's own split) where the predicted attention kernels are at least this share
#: of the step
LONG_SEQUENCE = 8192
ATTENTION_DOMINATED = 0.2


def implied_attention(row: dict[str, str], options: PredictOptions = PRODUCTION_STACK) -> dict[str, float]:
    """Predicted attention seconds per step on the critical rank, its share of the step, and the fraction of the
    bf16 peak attention would have to run at for the prediction to equal the published time."""
    result, est, model, cluster = case_estimate(row, options)
    plan = est.plan
    fwd, fwdbwd = estimate_module.attention_times(model, cluster, plan, est.seq_len, options)
    recomputed = plan.recompute in ("full", "selective")
    layers = max(stage_layer_count(model, plan, i) for i in range(plan.pp))
    runs = layers * plan.num_microbatches
    attention_s = runs * (fwdbwd + (fwd if recomputed else 0.0))
    # executed FLOPs: causal forward, backward = 2.5 x forward, the forward again when recomputed
    fwd_flops = (plan.micro_batch * flops.attention_flops_per_token(model, est.seq_len, causal=True) * est.seq_len
                 / (plan.tp * plan.cp))
    executed = runs * fwd_flops * (3.5 + (1.0 if recomputed else 0.0))
    peak = cluster.accelerator.peak_tflops("bf16") * 1e12
    needed_s = attention_s + result.published_s - result.predicted_s
    return {"share": attention_s / result.predicted_s, "predicted": executed / attention_s / peak,
            "implied": executed / needed_s / peak if needed_s > 0 else math.inf}


def attention_dominated_rows() -> dict[str, list[tuple[str, dict[str, float]]]]:
    by_card: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for row in ROWS:
        try:
            found = implied_attention(row)
        except RowSkipped:
            continue
        if int(row["seq_len"]) >= LONG_SEQUENCE and found["share"] >= ATTENTION_DOMINATED:
            card = row["accelerator"].split("-")[0]  # a100-40g and a100-80g are the same chip
            by_card.setdefault(card, []).append((row["case_id"], found))
    return by_card


DOMINATED = attention_dominated_rows()


def implied_rate(card: str) -> float:
    return statistics.median(f["implied"] for _, f in DOMINATED[card])


def test_attention_dominated_rows_imply_one_kernel_rate_per_card() -> None:
    assert sum(len(v) for v in DOMINATED.values()) >= 25
    assert set(DOMINATED) == {"a100", "h100"}
    for card, lo, hi in (("a100", 0.30, 0.36), ("h100", 0.15, 0.19)):
        rate = implied_rate(card)
        assert lo <= rate <= hi, (card, rate)
        implied = [f["implied"] for _, f in DOMINATED[card]]
        # one rate across 125M-13B models, head_dim 64 and 128, 8k-65k tokens: at least 80% within 20% of it
        assert sum(abs(x / rate - 1) <= 0.2 for x in implied) >= 0.8 * len(implied), (card, sorted(implied))
        # far below what the calibrated kernel reaches on the same rows: not noise, a different kernel
        assert rate < 0.65 * statistics.median(f["predicted"] for _, f in DOMINATED[card])
    # the Hopper card gains only ~1.6x over the Ampere one where its tensor cores give 3.2x: a kernel that does
    # not use Hopper's instructions
    assert 1.3 < implied_rate("h100") * 989.4 / (implied_rate("a100") * 312.0) < 2.0


def test_with_each_publications_documented_attention_kernel_the_target_holds() -> None:
    caps = {card: implied_rate(card) for card in DOMINATED}
    errors = []
    for row in ROWS:
        if row["source_group"].startswith("mosaicml"):
            options = PredictOptions(flash_attention=True, fused_cross_entropy=True,
                                     attention_efficiency_cap=caps[row["accelerator"].split("-")[0]])
        else:  # Megatron-LM 2021-22 and Megatron-DeepSpeed (BLOOM): no flash attention, dropout on
            options = PredictOptions(flash_attention=False, dropout=True, fused_cross_entropy=True)
        try:
            errors.append(abs(case_estimate(row, options)[0].rel_error))
        except RowSkipped:
            continue
    errors.sort()
    median, p90 = percentile(errors, 50), percentile(errors, 90)
    assert len(errors) >= 150
    assert median <= 0.10 and p90 <= 0.25, (median, p90)


@pytest.mark.parametrize("card", ["a100", "h100"])
def test_the_calibrated_kernel_is_what_the_rows_miss(card: str) -> None:
    # with the implied rate as a ceiling the attention-dominated rows land within 10% (median): nothing else in
    # the model has to change for them
    cap = implied_rate(card)
    errs = []
    for case_id, _ in DOMINATED[card]:
        row = next(r for r in ROWS if r["case_id"] == case_id)
        options = PredictOptions(flash_attention=True, fused_cross_entropy=True, attention_efficiency_cap=cap)
        errs.append(abs(case_estimate(row, options)[0].rel_error))
    assert statistics.median(errs) < 0.10, sorted(errs)
