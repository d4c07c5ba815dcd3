"""The predictor against 152 published training runs (the project's copy of public_cases.csv).

Target (issue 2, section 5): median |relative error| <= 10% and p90 <= 25% on iteration time, one physical model
for every row (no per-source, per-model or per-row factors).
"""

from __future__ import annotations

import pytest
from targets import assert_meets_target

from bastion.predict.validate import PUBLIC_CASES, read_cases, validate_cases

REPORT = validate_cases()

# Measured with the model as committed: median 12.2%, p90 34.1%, max 77.6% (151 predicted, 1 skipped).
# What is left is the attention kernels of the publications' software, which the case file does not record
# (test_public_cases_diagnosis.py keeps this diagnosis checked):
# - llm-foundry's 2023 MPT benchmarks ran Triton flash attention (the default attn_impl of its benchmark script;
#   later versions of the script install flash-attn 2, which does not use Hopper's wgmma/TMA either); on the
#   long-sequence rows (8k-65k tokens) the published times imply attention at one rate per card, 0.33 of the
#   A100 bf16 peak and 0.17 of the H100's, whatever the model, head_dim or sequence length, against ~0.6 for the
#   torch 2.11 SDPA the curves are calibrated on (31 rows, -5% to -58%, median -30%).
# - Megatron-LM 2021/22 and Megatron-DeepSpeed (BLOOM) materialised the s×s scores with dropout.
# - DeepSpeed ZeRO-3 without model parallelism in Narayanan et al. 2021 (R0011-R0016, -28% to -78%): the published
#   times are flat in the data-parallel degree, far above the all-gather/reduce-scatter volume on that fabric.
# No single kernel assumption for every row meets the target (median/p90: calibrated flash 12.2%/34.1%; flash +
# dropout 11.4%/31.9%; flash capped at FlashAttention-2's 0.35 on Hopper 12.2%/31.8%; unfused softmax + dropout
# 24.3%/78.3%); given each publication's documented kernel, the same model gives median 6.1%, p90 21.1% (the
# what-if in test_public_cases_diagnosis.py).
MISSED_TARGET = ("median 12.2%, p90 34.1% of 151 rows: the published runs' 2021-23 attention kernels (flash attention "
                 "in llm-foundry at 0.33/0.17 of the A100/H100 peak, unfused softmax with dropout in "
                 "Megatron-LM) are slower than the torch 2.11 SDPA the curves are calibrated on, and the case file "
                 "does not say which kernel a row used; with each source's kernel the model gives 6.1%/21.1%")


def test_every_row_is_predicted_or_reported_with_a_reason() -> None:
    rows = read_cases(PUBLIC_CASES)
    s = REPORT.summary()
    assert s["n"] == len(rows) == s["predicted"] + s["skipped"]
    assert s["skipped"] <= 2
    assert all(item["reason"] for item in REPORT.skipped)


def test_errors_stay_where_they_were_measured() -> None:
    # guards against regressions while the target below is not met
    s = REPORT.summary()
    assert s["median_abs_rel_error"] <= 0.13, s
    assert s["p90_abs_rel_error"] <= 0.36, s


@pytest.mark.xfail(reason=MISSED_TARGET, strict=False)
def test_median_and_p90_error_meet_the_target() -> None:
    assert_meets_target(REPORT.summary())
