"""The predictor on the third blind file: data/blind3_cases.csv holds 33 published runs (30 dense, 3 mixture-of-experts)
from seven publication families, committed before any prediction was made on them (f6bea4b; predictor code and data
last changed in 0314257), so that changes made after blind2 was seen can be judged on rows nobody has looked at.
Provenance: data/SOURCES.md. Figures: benchmarks/bench_heldout.py tests/validation/data/blind3_cases.csv, run once after
the freeze -> benchmarks/results/blind3_2026-12-07.json.

Measured (33 of 33 rows predicted, none refused; |error| median / p90, signed median, and how often the published step
time lies in the p10-p90 interval every prediction carries):
    fms_fsdp_readme             4 rows  10.9% / 21.4%   -1%  coverage 100%  (IBM fms-fsdp, 128 A100: 7B/13B -12/-26%,
                                                                             34B/70B full AC +10%)
    ibm_fsdp_blog_2403          8 rows  19.0% / 36.6%  -19%  coverage  75%  (A100 -22..+7%; 96 H100 -17..-40%)
    ibm_fsdp_compile_blog_2405  8 rows  11.7% / 23.3%  -11%  coverage 100%  (torch.compile; A100 -11..+15%, H100 -11..-26%)
    tinyllama                   1 row   22.3%          +22%  coverage 100%
    megatron_fsdp_v2_qwen3      3 rows  54.6% / 69.1%  -55%  coverage   0%  (Qwen3-30B-A3B on 8 GB200: -52%, -55%, MXFP8 -73%)
    mlperf_training_v31_gpt3    7 rows  12.5% / 12.9%  +12%  coverage 100%  (GPT-3 175B FP8, NeMo 23.09, 512-10,752 H100)
    mlperf_training_v40_gpt3    2 rows  19.3% / 19.4%  +19%  coverage 100%  (NeMo 24.04, 10,752 / 11,616 H100)
    all                        33 rows  13.1% / 39.0%    0%  coverage  85%,  median interval width 81%
By framework: other (fms-fsdp, TinyLlama) 21 rows 13.2% / 26.3%, coverage 90%; nemo (MLPerf) 9 rows 12.6% / 19.2%, 100%;
megatron-lm (Megatron-FSDP) 3 rows 54.6% / 69.1%, 0%. These assertions hold the figures near what was measured so that a
regression shows; they do not assert a target.

Afterwards: the NeMo Megatron 2022-23 entries (branch nemoold, written without seeing this file) moved the MLPerf v3.1
rows (NeMo 23.09, fp8) from 12.5% to 19.3% — an out-of-sample test they failed; a NeMo 2023-03 entry (fp8 plans run
Transformer Engine's flash attention, cited) was added after seeing that: 13.8% / 14.3%, and that family is in-sample
since (holdout.toml). The other six families are unchanged and remain out of sample; all 33 rows 14.3% / 39.0%,
coverage 85% (MEASURED below).

Afterwards (branch finemoe): mechanisms of fine-grained experts were added after the Megatron-FSDP Qwen3-30B-A3B
rows' errors were seen (the experts' GEMMs at the published rate of the software's grouped-GEMM implementation, which
leaves Transformer Engine's per-expert cuBLAS at the dense rate; an all-to-all dispatcher permuting every routed copy
twice on each side): -52/-55/-73% -> -49/-52/-71%, 52.3% / 67.3%, coverage 0%; that family is in-sample since
(holdout.toml). The MXFP8 row stays predicted faster than bf16 although it was published 32% slower: its
quantisation and host work per expert is not modelled. All 33 rows unchanged at 14.3% / 39.0%, coverage 85%.

Afterwards (branch fsdpfix): two mechanisms of the IBM PyTorch-FSDP runs were added after their errors were seen,
each from the publications' or PyTorch's own words, none fitted: (1) the network as published — a new optional
column node_scale_out_gbit (a node's NICs together: 400 Gb/s on the 128 A100, 800 Gb/s on the 96 H100, 3.2 Tb/s on
the 464 H100, read per node, inferred), where the catalog had assumed one 200 / 400 Gb/s NIC per GPU, 4x more; the
March blog itself measured "a 10% gap due to network 'peeking' out" on its H100s; (2) an `sdpa` fact before PyTorch
2.5 (2024-10, SDPA's first Hopper-native backend, cuDNN) runs FlashAttention-2, capped on Hopper (frameworks.py
SDPA_HOPPER_KERNEL_SINCE). Moves: ibm_fsdp_blog_2403 19.0% / 36.6% -> 13.0% / 29.4% (signed -19% -> -13%; 96 H100
-35/-40/-21/-17% -> -28/-34/-14/-11%; A100 -13/-22/0/+7% -> -8/-18/+4/+12%), coverage 75% -> 88%; fms_fsdp_readme
10.9% / 21.4% -> 8.7% / 11.4% (13B at batch 1 -26% -> -4%); ibm_fsdp_compile_blog_2405 11.7% / 23.3% -> 13.4% /
21.5% (464 H100 -22/-26/-11/-11% -> -20/-25/-10/-9%, A100 0/-11/+12/+15% -> +6/-6/+17/+20%: the A100 compile rows
move the wrong way). Those three families are in-sample since (holdout.toml); TinyLlama, the MLPerf rows and the MoE
family are unchanged. All 33 rows 14.3% / 39.0% -> 14.1% / 32.4%, coverage 85% -> 88%. Not closed: the 96-H100 7B/13B
rows stay -28/-34% (the blog's own guess is the H100's HBM bandwidth, which the predictor's memory-bound terms
already carry); the 13B rows ran the blog's "checkpoint every n blocks" (n unpublished, recompute empty), which
the predictor fills with no recompute, as it fits in memory with FSDP over all ranks — under the HSDP the README
prints for 7B/13B the model states shard over 8 GPUs only (about 23 GiB more per GPU for 13B), which the columns
cannot express (see the rows' notes).
"""

from __future__ import annotations

from pathlib import Path

import published_case_checks as checks
import pytest
import test_software_facts

from bastion.predict.frameworks import FACT_COLUMNS, MOE_FACT_COLUMNS, framework_releases
from bastion.predict.validate import (
    COLUMNS,
    MOE_COLUMNS,
    NETWORK_COLUMNS,
    read_cases,
    validate_cases,
)

DATA = Path(__file__).parent / "data"
BLIND3 = DATA / "blind3_cases.csv"
OTHER_CASE_FILES = checks.other_case_files(BLIND3)
FAMILIES = {"ibm_fsdp_blog_2403", "fms_fsdp_readme", "ibm_fsdp_compile_blog_2405", "tinyllama",
            "megatron_fsdp_v2_qwen3", "mlperf_training_v31_gpt3", "mlperf_training_v40_gpt3"}
ROWS = read_cases(BLIND3)
REPORT = validate_cases(BLIND3)
#: family -> (rows predicted, median |error|, p90 |error|, coverage of the shipped interval), measured at f6bea4b;
#: all and mlperf_training_v31_gpt3 re-measured after the NeMo 2023-03 entry, megatron_fsdp_v2_qwen3 after finemoe,
#: all and the three IBM fms-fsdp families after fsdpfix (the docstring's last paragraph: the compile family's median
#: grew, 11.7% -> 13.4%)
MEASURED = {"all": (33, 0.141, 0.324, 0.879), "fms_fsdp_readme": (4, 0.087, 0.114, 1.0),
            "ibm_fsdp_blog_2403": (8, 0.130, 0.294, 0.875), "ibm_fsdp_compile_blog_2405": (8, 0.134, 0.215, 1.0),
            "megatron_fsdp_v2_qwen3": (3, 0.523, 0.673, 0.0), "mlperf_training_v31_gpt3": (7, 0.138, 0.143, 1.0),
            "mlperf_training_v40_gpt3": (2, 0.193, 0.194, 1.0), "tinyllama": (1, 0.223, 0.223, 1.0)}


def test_the_file_has_the_moe_case_file_columns_and_states_its_evidence() -> None:
    checks.assert_rows_state_their_evidence(BLIND3, [*COLUMNS, *FACT_COLUMNS, *MOE_COLUMNS, *MOE_FACT_COLUMNS,
                                                     *NETWORK_COLUMNS])
    assert {r["model"] for r in ROWS if r["num_experts"]} == {"Qwen3-30B-A3B"}


def test_its_frameworks_are_known_or_declared_other() -> None:
    assert {r["framework"] for r in ROWS} == {"other", "nemo", "megatron-lm"}
    assert all(framework_releases().get(r["framework"]) for r in ROWS if r["framework"] != "other")


def test_its_families_are_new_and_declared_out_of_sample() -> None:
    # NeMo 2023-03's fp8 attention entry (frameworks.toml) was added after the MLPerf v3.1 rows were seen, the
    # fine-grained MoE mechanisms (predict/moe.py) after the Megatron-FSDP Qwen3 rows were, the per-node network
    # column and SDPA-before-2.5 as FlashAttention-2 (fsdpfix) after the IBM fms-fsdp rows were
    checks.assert_families_new_and_blind(BLIND3, OTHER_CASE_FILES, FAMILIES,
                                         seen_since=frozenset({"mlperf_training_v31_gpt3", "megatron_fsdp_v2_qwen3",
                                                               "ibm_fsdp_blog_2403", "fms_fsdp_readme",
                                                               "ibm_fsdp_compile_blog_2405"}))


def test_no_prediction_depends_on_the_publication(tmp_path: Path) -> None:
    test_software_facts.test_blanking_source_group_source_and_notes_changes_no_prediction(BLIND3, tmp_path)


def test_every_row_is_predicted_or_refused_with_a_reason() -> None:
    checks.assert_each_row_predicted_or_refused(BLIND3, REPORT, refused=set())  # none was refused when measured


@pytest.mark.parametrize("family", sorted(MEASURED))
def test_blind3_figures_stay_near_what_was_measured(family: str) -> None:
    checks.assert_figures_near(checks.cases_by_family(BLIND3, REPORT)[family], MEASURED[family])
