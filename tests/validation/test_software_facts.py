"""Software as facts a user knows: every case file's rows carry `framework` / `framework_version` (and explicit
behaviours where published), and a prediction never depends on the publication a row comes from."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bastion.predict.frameworks import FRAMEWORKS, facts_from_row
from bastion.predict.validate import PUBLIC_CASES, predict_case, read_cases, validate_cases

DATA = Path(__file__).parent / "data"
CASE_FILES = (PUBLIC_CASES, DATA / "nemo_cases.csv", DATA / "torchtitan_cases.csv")


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: p.name)
def test_every_row_states_its_framework_with_evidence(path: Path) -> None:
    for row in read_cases(path):
        facts = facts_from_row(row)  # a bad value raises
        assert facts.framework in FRAMEWORKS and facts.framework != "other", row["case_id"]
        assert row["facts_source"].strip(), row["case_id"]


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: p.name)
def test_blanking_source_group_source_and_notes_changes_no_prediction(path: Path, tmp_path: Path) -> None:
    rows = read_cases(path)
    blank = tmp_path / path.name
    with blank.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "source_group": "", "source": "", "notes": "", "facts_source": ""} for r in rows)
    given, blanked = validate_cases(path), validate_cases(blank)
    assert [c.case_id for c in blanked.cases] == [c.case_id for c in given.cases]
    assert blanked.skipped == given.skipped
    for a, b in zip(given.cases, blanked.cases, strict=True):
        assert (b.predicted_s, b.software, b.assumptions) == (a.predicted_s, a.software, a.assumptions), a.case_id


def _nemo(case_id: str, **cells: str) -> dict[str, str]:
    row = next(r for r in read_cases(DATA / "nemo_cases.csv") if r["case_id"] == case_id)
    return {**row, **cells}


def test_unstated_settings_take_the_frameworks_default_recipe_not_the_fastest_plan() -> None:
    # N0042 (Megatron-Bridge 25.11) leaves recompute and sequence parallelism unstated: its framework's recipe
    # (frameworks.toml) runs no recompute and sequence parallelism on
    case = predict_case(_nemo("N0042"))
    assert any(a.startswith("recompute: not given; none, the framework's default recipe") for a in case.assumptions)
    assert any(a.startswith("sequence_parallel: not given; on") for a in case.assumptions)
    # with a framework that documents no recipe the practitioner's choice stands: the fastest plan that fits
    other = predict_case(_nemo("N0042", framework="other", framework_version=""))
    assert any("the practitioner's choice where no recipe says: the fastest combination that fits in memory" in a
               for a in other.assumptions)


def test_a_small_memory_shortfall_keeps_the_recipes_plan_and_says_so() -> None:
    # N0036: the recipe's plan is predicted at 189 GiB of 186: within the memory model's margin, kept, reported
    case = predict_case(_nemo("N0036"))
    assert any("exceeds 186 GiB per device (a memory shortfall" in a for a in case.assumptions)
    assert not any("recompute = full" in a for a in case.assumptions)
    # N0035: far beyond the margin, the run must have recomputed: the practitioner's choice, said
    case = predict_case(_nemo("N0035"))
    assert any("beyond the memory model's 10% margin" in a for a in case.assumptions)
    assert any("recompute = full" in a for a in case.assumptions)


def test_unstated_vpp_counts_splits_where_embedding_and_head_take_a_slot() -> None:
    # BLOOM: 70 layers on pp 12 split only as layers + 2 = 72 slots (6 per stage); with enough micro-batches
    # for interleaving, an unstated vpp must not fall back to 1 and its bubble
    bloom = next(r for r in read_cases(PUBLIC_CASES) if r["case_id"] == "R0040")
    bloom = {**bloom, "global_batch_size": "2304"}  # 144 micro-batches of 2 per replica: a multiple of pp
    open_vpp = predict_case({**bloom, "vpp": ""})
    assert not any("assumed 1" in a for a in open_vpp.assumptions if a.startswith("vpp"))
    assert any("vpp = " in a for a in open_vpp.assumptions)
    assert open_vpp.predicted_s < predict_case({**bloom, "vpp": "1"}).predicted_s
