"""The predictor out of sample on PyTorch-native runs: 26 dense Llama pre-training runs published by torchtitan
(FSDP2, DTensor TP with sequence parallelism, torch.distributed.pipelining, context parallelism, torch.compile,
torchao Float8) — the stack bastion's own runtime uses. Data and provenance: data/torchtitan_cases.csv,
data/SOURCES.md.

Nothing here is tuned to pass: the file's columns and rows are checked, the error figures are recorded (printed and
attached as junit properties), and the issue's accuracy target is asserted under a non-strict xfail. One guard is a
real assertion: the rows whose settings map onto bastion's exactly (full recompute, sequences of 8K tokens or less)
stay within 10%.

Measured with the predictor as of commit 28db9cf (26 of 26 rows predicted; every error is a prediction too fast):
    all rows                   median |error| 22.1%, p90 50.1%, max 62.6%
    full recompute, seq <= 8K  6 rows (70B FSDP+TP, 405B FSDP+TP+PP 1F1B / interleaved, A100 70B):  -3.7% to +2.0%
    torchtitan "selective op" AC (mapped to `selective`), seq 8K: 11 rows, -13% to -33% (A100 -13/-16/-22%;
                               H100/H200 compiled -21 to -23%; H100 eager -31/-33%)
    no AC                      1 row (A100 Llama 2 13B): -6.7%
    32K-256K tokens, full AC   8 rows, -14% to -63%, growing with the sequence (8B on 8 GPUs: -36% at 32K without
                               CP, -63% at 256K with CP 8; 405B on 512 GPUs: -14% at 32K, -57% at 256K)
    by torch.compile           on 18 rows median 22.7% / off 2 rows 32.2% / not stated (A100) 6 rows 9.8%
    by precision               bf16 10 rows median 18.3% / fp8 16 rows 23.3%
    by parallelism             FSDP 15 rows 22.1%, FSDP+CP 3 rows 58.6%, FSDP+TP 2 rows 2.7%, FSDP+TP+PP 3 rows 3.7%,
                               FSDP+TP+PP+CP 3 rows 43.7%
Since then each row is predicted with torchtitan's software (`torchtitan-2024` in predict/data/software.toml):
SDPA's FlashAttention-2 backend (at most 35% of an H100 SXM's peak, FlashAttention-3 paper; scaled to the 500 W
part by its matmul_efficiency) and torchtitan's op-level selective checkpointing (recomputes wk, wo, w3 and the
elementwise ops; PredictOptions.selective_recompute). Measured: median 7.3%, p90 32.1%, max 41.8%. Left:
    context parallelism at 64K-256K (6 rows, -19% to -42%): the implied attention rate falls as cp grows (8B: 0.26
                               of the peak at cp 2, 0.18 at cp 8), a cost of torch's experimental CP of 2024-12 that
                               bastion does not model; 32K without CP -19%
    eager (no torch.compile)   2 rows, -20/-22% (compiled twins -7/-9%). The predictor's compile setting
                               (PredictOptions.compiled, right on the H200's whole-model step) is left off:
                               turned on, the compiled rows move further too fast (median 15%)
Since the rows state their software as facts (framework, framework_version, compile; issue 13), the printed
torch.compile setting is applied (PredictOptions.compiled, measured on bastion's own H200 runs, not on these rows):
the eager rows keep their prediction, the 18 compiled rows move further too fast. Measured: median 14.8%, p90 33.0%;
with the fp8 recipes (torchao's tensorwise: an amax pass before each cast) and torchtitan's all-gather context
parallelism (the knobs merge): median 13.5%, p90 32.4%.
What was physically different before (see the report in SOURCES.md): torchtitan's op-level selective AC recomputes every
second matmul of a block (wk, wo, w3), which bastion's `selective` (attention core only) does not; bastion has no
torch.compile setting (published eager runs are 14-16% slower than compiled ones, predicted equal); attention at
32K-256K tokens runs far below the rate bastion assumes (Dec 2024 SDPA, 500 W H100s, ring attention).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from targets import assert_meets_target, errors_by

from bastion.predict.frameworks import FACT_COLUMNS
from bastion.predict.validate import COLUMNS, PUBLIC_CASES, read_cases, validate_cases

TORCHTITAN_CASES = Path(__file__).parent / "data" / "torchtitan_cases.csv"
REPORT = validate_cases(TORCHTITAN_CASES)
ROWS = read_cases(TORCHTITAN_CASES)
BY_ID = {r["case_id"]: r for r in ROWS}
COMPILE = re.compile(r"torch\.compile (on|off|not stated);")


def _header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh))


def _compile(row: dict[str, str]) -> str:
    found = COMPILE.findall(row["notes"])
    assert len(found) == 1, (row["case_id"], found)
    return found[0]


def _parallelism(row: dict[str, str]) -> str:
    return "+".join(["FSDP"] + [k.upper() for k in ("tp", "pp", "cp") if int(row[k]) > 1])


def test_columns_equal_the_schema() -> None:
    assert _header(TORCHTITAN_CASES) == list(COLUMNS) + list(FACT_COLUMNS)
    assert _header(TORCHTITAN_CASES) == _header(PUBLIC_CASES)


def test_rows_are_dense_fsdp_tokens_per_gpu_runs_with_consistent_degrees() -> None:
    assert len(ROWS) == 26
    assert len(BY_ID) == len(ROWS)
    for r in ROWS:
        n, tp, pp, cp, dp = (int(r[k]) for k in ("num_gpus", "tp", "pp", "cp", "dp"))
        assert tp * pp * cp * dp == n, r["case_id"]
        # torchtitan: no gradient accumulation; the local batch is split into pipeline microbatches only under PP
        gbs, mbs = int(r["global_batch_size"]), int(r["micro_batch_size"])
        assert gbs % (mbs * dp) == 0, r["case_id"]
        if pp == 1:
            assert gbs == mbs * dp, r["case_id"]
        assert r["zero_stage"] == "3" and r["ffn_type"] == "swiglu", r["case_id"]
        assert r["metric"] == "tokens_per_s_per_gpu"
        derived = gbs * int(r["seq_len"]) / (float(r["value"]) * n)
        assert float(r["iteration_time_s"]) == pytest.approx(derived, rel=1e-5), r["case_id"]
        assert _compile(r) in ("on", "off", "not stated")


def test_every_row_is_predicted() -> None:
    s = REPORT.summary()
    assert s["n"] == s["predicted"] == len(ROWS), REPORT.skipped


def summary_by(key: Callable[[dict[str, str]], str]) -> dict[str, dict[str, float]]:
    return errors_by(REPORT, lambda case_id: key(BY_ID[case_id]))


GROUPINGS: dict[str, Callable[[dict[str, str]], str]] = {
    "compile": _compile,
    "precision": lambda r: r["precision"],
    "parallelism": _parallelism,
    "recompute": lambda r: r["recompute"],
    "accelerator": lambda r: r["accelerator"],
    "sequence": lambda r: "<=8K" if int(r["seq_len"]) <= 8192 else "32K-256K",
}


def test_record_the_measured_errors(record_property: pytest.RecordProperty) -> None:
    """Not an accuracy check: prints and records the figures so that a change in them is seen."""
    s = REPORT.summary()
    record_property("torchtitan_cases_summary", s)
    print(f"\ntorchtitan_cases: {s['predicted']}/{s['n']} predicted, median |error| {s['median_abs_rel_error']:.1%}, "
          f"p90 {s['p90_abs_rel_error']:.1%}, max {s['max_abs_rel_error']:.1%}")
    for grouping, key in GROUPINGS.items():
        table = summary_by(key)
        record_property(f"torchtitan_cases_by_{grouping}", table)
        assert sum(g["n"] for g in table.values()) == s["predicted"]
        for name, g in table.items():
            print(f"  {grouping:11s} {name:14s} {g['n']:3d} rows  median |error| {g['median_abs']:.1%}  "
                  f"p90 {g['p90_abs']:.1%}  median signed {g['median_signed']:+.1%}")


def test_rows_that_map_exactly_stay_within_ten_percent() -> None:
    # full activation checkpointing is the same computation in torchtitan and in bastion, and at 8K tokens or less
    # attention is a small part of the step: here the published settings leave nothing to interpretation
    # (measured -0.8% to +6.6% on 6 rows: 70B FSDP 32 x TP 8 with and without async TP, 405B TP 8 x PP 8 1F1B and
    # interleaved, Llama 3 70B and Llama 2 70B on 64 A100s; -3.7% to +2.0% before the FlashAttention-2 kernel)
    exact = [c for c in REPORT.cases
             if BY_ID[c.case_id]["recompute"] == "full" and int(BY_ID[c.case_id]["seq_len"]) <= 8192]
    assert len(exact) == 6
    worst = max(exact, key=lambda c: abs(c.rel_error))
    assert abs(worst.rel_error) <= 0.10, (worst.case_id, worst.rel_error)


@pytest.mark.xfail(strict=False, reason="measured median 13.5%, p90 32.4%: context parallelism at 64K-256K tokens "
                                        "(torch's 2024 CP costs more as cp grows); with the printed torch.compile "
                                        "applied the compiled rows are predicted too fast")
def test_median_and_p90_error_meet_the_issue_target() -> None:
    assert_meets_target(REPORT.summary())
