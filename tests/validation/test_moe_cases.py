"""Published mixture-of-experts training runs (data/moe_cases.csv, provenance in data/SOURCES.md): the file parses
with the MoE columns, every row is predicted or refused with a stated reason, every row carries its source and
evidence, and the case-file reader maps the MoE columns onto ModelSpec / ParallelPlan (refusing MLA, etp > 1 and
pipeline layouts bastion cannot express yet). Accuracy is recorded, not asserted (issue 14 sets the target).

The first `bastion validate` of the complete file (predictor of branch moecases @b036efa, 2026-12-07): 31 rows,
19 predicted, 12 refused; median |error| 36.0%, p90 56.9%, max 156%.
    Qwen3-235B-A22B, 256 H100, 4K (E0003, E0005)   +156% (TP2 EP8 Megatron-FSDP, full recompute), -54% (TP4 PP8)
    Qwen3-235B-A22B, 256 H100, 16K-128K, CP 1-8    -36% ... +3%; forced balance -20/-12/-3/+3%, its dropless twin
                                                   -36/-27/-16/-5% (one prediction for both: no load-imbalance term)
    Qwen3-235B-A22B, 256 GB200 (bf16, MXFP8)       -36%, -36%
    Qwen3-30B-A3B, torchtitan + DeepEP, 8-128 B200 -52% to -53%; torchtitan's default all-to-all (E0028) -68%
Refused: E0001/E0002 (ep 32 over dp 16) and E0004 (ep 8 over dp 4): Megatron's parallel folding lets EP span tp ranks,
bastion's ep must divide dp × cp; E0018-E0021, E0029 MLA; E0016/E0017 gb300, E0031 tpu-v6e (not in the catalogue);
E0030 no GPU count published.

Branch predict (2026-12-07): h800 and gb300 catalogued, folded expert parallelism predicted, DeepSeek-V3's node-limited
routing in the all-to-all, an unpublished uneven pipeline split taken as the planner's: 29 of 31 predicted (E0030 no
GPU count, E0031 TPU), median |error| 24.8%, p90 50.0%.

Branch predict2 (2026-12-07), mechanisms chosen AFTER these rows' errors were seen (so no longer blind): expert GEMMs
below the calibration's smallest M at DeepGEMM's published small-M rates, expert gradients reduced and ZeRO-3
expert units gathered over the expert-data-parallel ranks (this rank's 1/ep of the experts): E0003 +173% -> +25%,
E0004 -29% -> -28%, E0005 -45% -> -43%, torchtitan Qwen3-30B rows 1-1.5 points faster; median |error| 24.8%,
p90 49.3%, interval coverage 75.9% (was 79.3%: torchtitan E0026, E0027 now 1-2% below their p10).

Branch moeacc (2026-12-07), two MoE software facts added as columns AFTER these rows' errors were seen (the values
come from what each row's notes already recorded; the mechanisms from the frameworks' code and docs, nothing fitted):
`moe_dispatcher` (DeepEP / Hybrid-EP send a token across the scale-out network once per remote node it reaches,
DeepEP internode.cu; Megatron-LM's own default is the allgather dispatcher) and `moe_a2a_overlap` (Megatron-Core
--overlap-moe-expert-parallel-comm, DeepSeek's DualPipe): E0001 +49% -> +5.5% (DeepEP over 4 nodes), E0002 +67% ->
-16.8% (DeepEP and '+1f1b overlap'), E0015 +11.3% -> -11.4% (A2A_OVERLAP=1), E0029 +35.0% -> -9.3% (DualPipe);
median |error| 16.8%, p90 31.0% (issue 14's 20% / 35% met, in-sample), interval coverage 75.9%. Still outside
35%: E0005 -43% (TP4 EP8 on H100), E0018 -53% (the DeepSeek-V3 GB200 baseline, MCore 0.13), E0028 -50%
(torchtitan's default all-to-all, the same inputs as E0022 but for the dispatcher, which bastion costs alike inside
one node).

Branch intervals2 (2026-12-07): the shipped interval's q is calibrated on the out-of-sample rows of the files compiled
blind (predict/intervals.py); the software-known q went from 0.164 to 0.314, so the interval coverage of these rows
went from 75.9% to 89.7% (predictions unchanged).

Branch finemoe (2026-12-07), two mechanisms of fine-grained experts chosen AFTER these rows' errors were seen, their
sizes from kernel benchmarks and framework docs (nothing fitted to step times): the experts' GEMMs at the rate of
the software's grouped-GEMM implementation (predict/data/grouped_gemm.toml: torch._grouped_mm, which torchtitan and
bastion's runtime call, reaches 0.54 of the dense rate on Blackwell in torchao's published B200 microbenchmarks;
Transformer Engine's per-expert cuBLAS GEMMs keep the dense rate), and an all-to-all dispatcher permuting every
routed copy twice on each side of the experts (Megatron-LM's DeepSeek-V3 GB200 guide, Sec. 2.1.1):
torchtitan Qwen3-30B rows E0022-E0027 -26...-28% -> -10...-13%, E0028 -50% -> -37%, E0004 -28% -> -26%, E0018
-53% -> -51%; median |error| 11.3%, p90 28.8%, interval coverage 93.1%. Still outside 35%: E0005 -43%, E0018
-51% (its baseline software is host-bound — "the CPU kernel launch speed cannot keep up", the same guide, Sec. 2
— which bastion does not model), E0028 -37% (torchtitan's default all-to-all: 1.49 x DeepEP's time on the same
inputs, not explained by the exchange's bytes inside one node).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from bastion.predict.frameworks import FACT_COLUMNS, MOE_FACT_COLUMNS
from bastion.predict.validate import (
    COLUMNS,
    MLA_COLUMNS,
    MOE_COLUMNS,
    RowSkipped,
    case_estimate,
    case_model,
    case_moe_plan,
    predict_case,
    read_cases,
    validate_cases,
)
from bastion.specs.plan import chunk_layer_counts

DATA = Path(__file__).parent / "data"
MOE_CASES = DATA / "moe_cases.csv"
ROWS = read_cases(MOE_CASES)
BY_ID = {r["case_id"]: r for r in ROWS}
REPORT = validate_cases(MOE_CASES)
SKIPPED = {s["case_id"]: s["reason"] for s in REPORT.skipped}
#: accelerators the rows name that bastion's catalogue lacks (SOURCES.md says so)
NOT_IN_CATALOGUE = {"tpu-v6e"}
#: (rows predicted, median |error|, p90 |error|, interval coverage) as measured on branch finemoe; in-sample (the
#: dispatcher and overlap facts, the grouped-GEMM rate and the permutation passes were added after the rows'
#: errors were seen)
RECORDED = (29, 0.113, 0.288, 0.931)
#: how far a figure may move, either way, before the record must be updated: 2 points of median, 3 of p90, one row
#: of coverage
MEDIAN_SLACK, P90_SLACK, COVERAGE_SLACK = 0.02, 0.03, 1 / 29


def _header() -> list[str]:
    with MOE_CASES.open(newline="") as fh:
        return next(csv.reader(fh))


def _row(case_id: str, **changes: str) -> dict[str, str]:
    return {**BY_ID[case_id], **changes}


def test_columns_are_the_schema_with_the_moe_columns() -> None:
    assert _header() == [*COLUMNS, *FACT_COLUMNS, *MOE_COLUMNS, *MOE_FACT_COLUMNS]


def test_at_least_25_published_runs_every_row_moe() -> None:
    assert len(ROWS) >= 25
    assert len(BY_ID) == len(ROWS), "case ids are unique"
    for row in ROWS:
        assert int(row["num_experts"]) > 1 and 1 <= int(row["top_k"]) <= int(row["num_experts"]), row["case_id"]
        assert int(row["moe_ffn_hidden_size"]) > 0 and row["attention"] in ("mha", "gqa", "mla"), row["case_id"]
        # the schema's convention: ffn_hidden_size is the dense layers' width, empty when no layer is dense
        assert bool(row["ffn_hidden_size"]) == (int(row["dense_layers"]) > 0), row["case_id"]
        if row["attention"] == "mla":
            assert all(row[c] for c in MLA_COLUMNS), row["case_id"]
            assert int(row["head_dim"]) == int(row["qk_nope_head_dim"]) + int(row["qk_rope_head_dim"])


def test_every_row_is_predicted_or_refused_with_a_reason() -> None:
    predicted = {c.case_id for c in REPORT.cases}
    assert predicted | set(SKIPPED) == set(BY_ID) and not predicted & set(SKIPPED)
    assert all(reason.strip() for reason in SKIPPED.values())
    for case in REPORT.cases:
        assert case.predicted_s > 0 and case.published_s == float(BY_ID[case.case_id]["iteration_time_s"])
    summary = REPORT.summary()
    print(f"\nmoe_cases.csv: {summary['predicted']} of {summary['n']} predicted, median |error| "
          f"{summary['median_abs_rel_error']:.1%}, p90 {summary['p90_abs_rel_error']:.1%}")
    for case in sorted(REPORT.cases, key=lambda c: c.case_id):
        print(f"  {case.case_id} {BY_ID[case.case_id]['model']:16} {case.rel_error:+.1%}")
    for case_id, reason in sorted(SKIPPED.items()):
        print(f"  {case_id} refused: {reason}")


def test_the_figure_is_the_recorded_one_and_meets_issue_14s_target() -> None:
    summary = REPORT.summary()
    covered = sum(c.p10_s <= c.published_s <= c.p90_s for c in REPORT.cases) / len(REPORT.cases)
    rows, median, p90, coverage = RECORDED
    assert summary["predicted"] == rows
    assert summary["median_abs_rel_error"] == pytest.approx(median, abs=MEDIAN_SLACK)
    assert summary["p90_abs_rel_error"] == pytest.approx(p90, abs=P90_SLACK)
    assert covered == pytest.approx(coverage, abs=COVERAGE_SLACK)
    assert summary["median_abs_rel_error"] <= 0.20 and summary["p90_abs_rel_error"] <= 0.35


def test_the_moe_software_facts_reach_the_prediction() -> None:
    # E0001 and E0002 differ only in the all-to-all overlap ('+1f1b overlap')
    differ = [k for k in BY_ID["E0001"] if BY_ID["E0001"][k] != BY_ID["E0002"][k]]
    assert set(differ) <= {"case_id", "value", "iteration_time_s", "notes", "facts_source", "moe_a2a_overlap"}
    assert predict_case(BY_ID["E0002"]).predicted_s < predict_case(BY_ID["E0001"]).predicted_s
    # DeepEP's once-per-node crossing of the 4 nodes E0001's ep 32 spans, against NCCL's all-to-all
    assert predict_case(BY_ID["E0001"]).predicted_s < 0.8 * predict_case(_row("E0001", moe_dispatcher="alltoall")
                                                                          ).predicted_s
    # without the columns a row takes its framework release's dispatcher (Megatron-LM: allgather)
    _, bare, _, _ = case_estimate(_row("E0001", moe_dispatcher="", moe_a2a_overlap=""))
    assert bare.experts["dispatcher"] == "allgather" and bare.experts["all_to_all_overlap"] == 0.0


def test_refusals_name_what_bastion_cannot_express() -> None:
    for row in ROWS:
        if row["accelerator"] in NOT_IN_CATALOGUE:
            assert row["case_id"] in SKIPPED
            assert "not in the catalogue" in SKIPPED[row["case_id"]] and "XLA" in SKIPPED[row["case_id"]]
        elif row["num_gpus"]:
            # ep wider than dp × cp (Megatron-Core's parallel folding), h800 and gb300 rows are predicted
            assert row["case_id"] not in SKIPPED, (row["case_id"], SKIPPED.get(row["case_id"]))
        elif row["attention"] == "mla" and row["num_gpus"]:  # MLA, etp and uneven layouts are predicted
            assert row["case_id"] not in SKIPPED, (row["case_id"], SKIPPED.get(row["case_id"]))


def test_every_row_has_its_source_and_evidence() -> None:
    sources = (DATA / "SOURCES.md").read_text()
    table = sources[sources.index("# Sources of `moe_cases.csv`"):]
    ranges = [(a, b or a, group) for a, b, group in
              re.findall(r"^\| (E\d{4})(?:-(E\d{4}))? \| (\w+) \|", table, flags=re.MULTILINE)]
    for row in ROWS:
        assert row["source"].strip() and row["model"].strip(), row["case_id"]
        assert "published:" in row["notes"] and row["notes"].startswith("Shape:"), row["case_id"]
        assert row["framework"] and row["facts_source"].strip(), row["case_id"]
        assert "framework_version" in row["inferred"].split(";"), "no release month is printed by these sources"
        listed = [group for a, b, group in ranges if a <= row["case_id"] <= b]
        assert listed == [row["source_group"]], (row["case_id"], listed)


def test_times_follow_from_the_published_figures() -> None:
    for row in ROWS:
        if not row["iteration_time_s"]:
            assert not row["num_gpus"], f"{row['case_id']}: only a run without a GPU count lacks a time"
            continue
        time, value = float(row["iteration_time_s"]), float(row["value"])
        if row["metric"] == "iteration_time_s":
            assert time == value
        elif row["metric"] == "tokens_per_s_per_gpu":
            tokens = int(row["global_batch_size"]) * int(row["seq_len"])
            assert time == pytest.approx(tokens / (value * int(row["num_gpus"])), rel=1e-3), row["case_id"]
        else:
            assert row["metric"] == "tflops_per_gpu" and row["flop_convention"] == "megatron_moe", row["case_id"]


def test_source_text_does_not_change_a_prediction() -> None:
    blank = [{**row, "source_group": "", "source": "", "notes": ""} for row in ROWS if row["case_id"] not in SKIPPED]
    assert [predict_case(row).predicted_s for row in blank] == \
        [c.predicted_s for c in sorted(REPORT.cases, key=lambda c: [r["case_id"] for r in ROWS].index(c.case_id))]


# ---- the reader: MoE columns onto ModelSpec / ParallelPlan -------------------------------------------------------

def test_moe_columns_become_model_fields() -> None:
    assumptions: list[str] = []
    model = case_model(BY_ID["E0022"], assumptions)
    assert (model.num_experts, model.top_k, model.moe_ffn_hidden_size, model.num_shared_experts,
            model.dense_layers, model.head_dim) == (128, 8, 768, 0, 0, 128)
    assert model.ffn_hidden_size == 768 and any(a.startswith("ffn_hidden_size:") for a in assumptions)
    dense_first = case_model(_row("E0022", dense_layers="2", ffn_hidden_size="6144", num_shared_experts="1"), [])
    assert (dense_first.dense_layers, dense_first.ffn_hidden_size, dense_first.num_shared_experts) == (2, 6144, 1)


def test_a_dense_first_row_without_its_dense_width_is_refused() -> None:
    with pytest.raises(RowSkipped, match="ffn_hidden_size is empty"):
        predict_case(_row("E0022", dense_layers="2"))


def test_ep_reaches_the_plan() -> None:
    result = predict_case(BY_ID["E0022"])
    assert result.predicted_s > 0
    with pytest.raises(RowSkipped, match=r"ep × etp = 16 × 1 does not divide tp × dp × cp = 8"):
        predict_case(_row("E0022", ep="16"))


def test_mla_columns_become_model_fields_and_incomplete_ones_are_refused() -> None:
    mla = next(row for row in ROWS if row["attention"] == "mla" and row["num_gpus"])
    model = case_model(mla, [])
    assert model.is_mla and model.kv_lora_rank == int(mla["kv_lora_rank"])
    assert model.head_dim == int(mla["qk_nope_head_dim"]) + int(mla["qk_rope_head_dim"])
    with pytest.raises(RowSkipped, match="multi-head latent attention without"):
        predict_case(_row("E0022", kv_lora_rank="512"))  # the other MLA widths missing
    with pytest.raises(RowSkipped, match="not one of mha, gqa, mla"):
        predict_case(_row("E0022", attention="sliding"))


def test_expert_tensor_parallelism_reaches_the_plan() -> None:
    assumptions: list[str] = []
    model = case_model(BY_ID["E0005"], [])
    assert case_moe_plan(_row("E0005", etp=""), model, 8, 4, assumptions)[:2] == (8, 1)
    assert any(a.startswith("etp: not given, assumed 1") for a in assumptions)
    assert case_moe_plan(_row("E0005", etp="2"), model, 8, 4, [])[:2] == (8, 2)
    assert predict_case(_row("E0005", etp="2")).predicted_s != predict_case(_row("E0005", etp="1")).predicted_s


def test_a_pipeline_layout_bastion_splits_alike_sets_the_virtual_stages() -> None:
    row = BY_ID["E0005"]
    model = case_model(row, [])
    assert tuple(int(n) for n in row["pipeline_layout"].split(";")) == chunk_layer_counts(94, 32)
    assert case_moe_plan(_row("E0005", vpp=""), model, 8, None, []) == (8, 1, 4, "")
    # with vpp empty the layout alone fixes it: the prediction equals the row's with vpp stated
    assert predict_case(_row("E0005", vpp="")).predicted_s == predict_case(row).predicted_s


def test_an_uneven_pipeline_layout_reaches_the_plan() -> None:
    layout = "3;" * 30 + "4;0"  # the DeepSeek-V3 kind: a last chunk without layers
    model = case_model(BY_ID["E0005"], [])
    assert case_moe_plan(_row("E0005", pipeline_layout=layout), model, 8, None, []) == \
        (8, 1, 4, layout.replace(";", ","))
    assert predict_case(_row("E0005", pipeline_layout=layout)).predicted_s > 0


@pytest.mark.parametrize(("layout", "match"), [
    (";".join(["3"] * 32), "places 96 layers, the model has 94"),
    ("2;3;3", "not a multiple of pp"),
    ("2;x;3", "not ';'-separated layer counts"),
])
def test_other_pipeline_layouts_are_refused(layout: str, match: str) -> None:
    with pytest.raises(RowSkipped, match=match):
        predict_case(_row("E0005", pipeline_layout=layout))
