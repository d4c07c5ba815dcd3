"""Software as facts a user knows: every case file's rows carry `framework` / `framework_version` (and explicit
behaviours where published), and a prediction never depends on the publication a row comes from."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bastion.predict.frameworks import FRAMEWORKS, facts_from_row
from bastion.predict.validate import PUBLIC_CASES, read_cases, validate_cases

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
