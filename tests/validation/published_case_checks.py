"""Checks shared by the case files of published runs held out of the predictor (heldout_cases.csv, blind_cases.csv,
blind2_cases.csv, blind3_cases.csv, blind4_cases.csv): each row states its evidence, a blind file's families are new
and declared out of sample, every row is predicted or refused with a reason, and a family's figures stay near what was
measured once."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

from bastion.predict.holdout import FAMILY_COLUMN, family_notes
from bastion.predict.validate import PUBLIC_CASES, CaseResult, ValidationReport, read_cases
from bastion.stats import percentile

DATA = Path(__file__).parent / "data"
#: every case file of published runs the project keeps: a blind file's families must be new to all the others
CASE_FILES = (PUBLIC_CASES, *(DATA / f"{name}_cases.csv" for name in ("nemo", "torchtitan", "heldout", "moe", "blind",
                                                                       "blind2", "blind3", "blind4")))


def other_case_files(path: Path) -> tuple[Path, ...]:
    """Every case file but `path` (`CASE_FILES`)."""
    return tuple(f for f in CASE_FILES if f != path)

#: how far a figure may move before a test calls it a regression: 2 points of |error|, 3 of p90, 5 of coverage
MEDIAN_SLACK, P90_SLACK, COVERAGE_SLACK = 0.02, 0.03, 0.05


def assert_rows_state_their_evidence(path: Path, columns: list[str]) -> None:
    """The file has exactly `columns`; every row cites its source, software evidence and framework, with a YYYY-MM
    version or none, and names only real columns as inferred."""
    assert path.read_text().splitlines()[0].split(",") == columns
    rows = read_cases(path)
    for row in rows:
        assert row["source"].strip() and row["facts_source"].strip() and row["notes"].strip(), row["case_id"]
        assert row["framework"].strip(), row["case_id"]
        version = row["framework_version"].strip()
        assert not version or re.fullmatch(r"20\d\d-(0[1-9]|1[0-2])", version), row["case_id"]
        for column in filter(None, row["inferred"].split(";")):
            assert column in columns, (row["case_id"], column)
    assert len({r["case_id"] for r in rows}) == len(rows)


def assert_families_new_and_blind(path: Path, other_case_files: tuple[Path, ...], families: set[str],
                                  seen_since: frozenset[str] = frozenset()) -> None:
    """The file's families are exactly `families`, none appears in another case file, holdout.toml says each was
    compiled blind, and lists as in-sample exactly `seen_since`: the families something in the predictor was chosen
    after seeing (its `why` says what), every other one out of sample."""
    found = {r[FAMILY_COLUMN] for r in read_cases(path)}
    seen = {r[FAMILY_COLUMN] for other in other_case_files for r in read_cases(other)}
    assert found == families and not found & seen
    notes = family_notes()
    assert all("blind" in notes[f]["why"] for f in found)
    assert {f for f in found if notes[f]["in_sample"]} == seen_since


def assert_each_row_predicted_or_refused(path: Path, report: ValidationReport, refused: set[str]) -> None:
    """Every row is either predicted, with an interval around its prediction, or refused with a reason; the refused
    ones are those recorded when the figures were measured."""
    ids = {r["case_id"] for r in read_cases(path)}
    assert {c.case_id for c in report.cases} | {s["case_id"] for s in report.skipped} == ids
    assert all(s["reason"].strip() for s in report.skipped)
    assert {s["case_id"] for s in report.skipped} == refused
    assert all(c.p10_s is not None and c.p10_s < c.predicted_s < c.p90_s for c in report.cases)


def cases_by_family(path: Path, report: ValidationReport) -> dict[str, list[CaseResult]]:
    """The predicted cases of each publication family, and of all families under "all"."""
    family_of = {r["case_id"]: r[FAMILY_COLUMN] for r in read_cases(path)}
    groups: dict[str, list[CaseResult]] = defaultdict(list)
    for case in report.cases:
        groups[family_of[case.case_id]].append(case)
        groups["all"].append(case)
    return groups


def assert_figures_near(cases: list[CaseResult], measured: tuple[int, float, float, float]) -> None:
    """`measured` = (rows, median |error|, p90 |error|, coverage of the shipped p10-p90 interval): the row count is
    exact, the errors may not grow and the coverage may not fall by more than the slacks."""
    n, median, p90, coverage = measured
    errors = [abs(c.rel_error) for c in cases]
    got = {"n": len(cases), "median": statistics.median(errors), "p90": percentile(errors, 90),
           "coverage": sum(c.p10_s <= c.published_s <= c.p90_s for c in cases) / len(cases)}
    print(f"\n{got}")
    assert got["n"] == n
    assert got["median"] <= median + MEDIAN_SLACK, got
    assert got["p90"] <= p90 + P90_SLACK, got
    assert got["coverage"] >= coverage - COVERAGE_SLACK, got
