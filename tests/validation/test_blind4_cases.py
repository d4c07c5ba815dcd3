"""The fourth blind file: data/blind4_cases.csv holds 12 published dense pre-training runs of NVIDIA's NeMo MLPerf
Training submissions from three publication families no other case file uses (MLPerf Training v5.0 Llama 3.1 405B
on 512-8,192 H100 and 256/512 GB200, v4.1 GPT-3 175B on 256/512 H100 and 64 B200, v5.1 Llama 3.1 8B on 72/512
GB300), committed before any prediction was made on them. Provenance: data/SOURCES.md.

Only the structure and provenance are checked here, without predicting a row; the figures (what the predictor gives on
these rows) are added once, by the one bench run after the freeze (benchmarks/bench_heldout.py
tests/validation/data/blind4_cases.csv).
"""

from __future__ import annotations

from pathlib import Path

import published_case_checks as checks

from bastion.predict.frameworks import FACT_COLUMNS, MOE_FACT_COLUMNS, framework_releases
from bastion.predict.validate import COLUMNS, MOE_COLUMNS, PUBLIC_CASES, case_cluster, case_model, read_cases

DATA = Path(__file__).parent / "data"
BLIND4 = DATA / "blind4_cases.csv"
OTHER_CASE_FILES = (PUBLIC_CASES, DATA / "nemo_cases.csv", DATA / "torchtitan_cases.csv",
                    DATA / "heldout_cases.csv", DATA / "moe_cases.csv", DATA / "blind_cases.csv",
                    DATA / "blind2_cases.csv", DATA / "blind3_cases.csv")
FAMILIES = {"mlperf_training_v50_llama405b", "mlperf_training_v41_gpt3", "mlperf_training_v51_llama8b"}
ROWS = read_cases(BLIND4)


def test_the_file_has_the_moe_case_file_columns_and_states_its_evidence() -> None:
    checks.assert_rows_state_their_evidence(BLIND4, [*COLUMNS, *FACT_COLUMNS, *MOE_COLUMNS, *MOE_FACT_COLUMNS])
    assert not any(r["num_experts"] for r in ROWS)  # every run here is dense


def test_its_frameworks_are_known() -> None:
    assert {r["framework"] for r in ROWS} == {"nemo"}
    assert framework_releases().get("nemo")


def test_its_families_are_new_and_declared_out_of_sample() -> None:
    checks.assert_families_new_and_blind(BLIND4, OTHER_CASE_FILES, FAMILIES)


def test_each_plan_fills_its_job_and_batch() -> None:
    # the logs' step counters checked each global batch; the plan must tile the GPUs and the batch exactly
    for row in ROWS:
        n = {k: int(row[k]) for k in ("tp", "pp", "dp", "cp", "num_gpus", "global_batch_size", "micro_batch_size")}
        assert n["tp"] * n["pp"] * n["cp"] * n["dp"] == n["num_gpus"], row["case_id"]
        assert n["global_batch_size"] % (n["micro_batch_size"] * n["dp"]) == 0, row["case_id"]
        assert row["metric"] == "iteration_time_s" and float(row["value"]) == float(row["iteration_time_s"]) > 0


def test_every_row_parses_into_a_model_and_a_cluster() -> None:
    # reading only: the shape and the job as a prediction would take them, without predicting
    for row in ROWS:
        assumptions: list[str] = []
        model, cluster = case_model(row, assumptions), case_cluster(row, assumptions)
        assert model.num_layers == int(row["num_layers"]), row["case_id"]
        assert cluster.num_gpus == int(row["num_gpus"]), row["case_id"]
