"""Leave-one-family-out: how the predictor does on publications it was not shown, and whether its intervals hold.

A family is a case file's `source_group` (one publication family), read here for grouping only: predictions never
see it (tests/validation/test_software_facts.py). The point prediction has no constant fitted to published times,
so holding a family out changes only what is calibrated on rows — the interval (predict/intervals.py): each
family's interval comes from the residuals of every other family (q per stratum, and the width factor's κ per
class and the coverage of schedules and context-parallel chunks, predict/intervals.py). What cannot be held out mechanically — a stack
or mapping entry chosen after looking at a family's rows — is declared in data/holdout.toml, and such a family is
reported as in-sample.

Every row is predicted twice: with its software facts (stratum "software known") and with them blanked (the
documented default stack, stratum "software unknown"), each with its own held-out interval.
"""

from __future__ import annotations

import statistics
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.predict.calibration import DATA_DIR
from bastion.predict.frameworks import FACT_COLUMNS, MOE_FACT_COLUMNS
from bastion.predict.intervals import (
    KNOWN,
    LEVEL,
    STRATA,
    UNKNOWN,
    StepShares,
    bounds,
    conformal_quantile,
    derive_spread,
    estimate_shares,
    log_residual,
    width_factor,
)
from bastion.predict.validate import RowSkipped, case_estimate, read_cases
from bastion.stats import percentile

#: the column that names a row's publication family (for grouping only)
FAMILY_COLUMN = "source_group"
HOLDOUT_NOTES = DATA_DIR / "holdout.toml"
#: what "software unknown" blanks: every software fact and a named stack
SOFTWARE_CELLS = (*FACT_COLUMNS, *MOE_FACT_COLUMNS, "software")


@dataclass
class HeldOutCase:
    case_id: str
    family: str
    published_s: float
    #: stratum -> predicted step time (software known: the row's facts; unknown: the default stack)
    predicted_s: dict[str, float]
    #: stratum -> the prediction's term shares (what its interval's width factor reads)
    shares: dict[str, StepShares]
    #: stratum -> (p10, p90), calibrated without this row's family
    interval: dict[str, tuple[float, float]] = field(default_factory=dict)

    def rel_error(self, stratum: str = KNOWN) -> float:
        return (self.predicted_s[stratum] - self.published_s) / self.published_s

    def covered(self, stratum: str = KNOWN) -> bool:
        lo, hi = self.interval[stratum]
        return lo <= self.published_s <= hi

    def width(self, stratum: str = KNOWN) -> float:
        """(p90 - p10) / predicted."""
        lo, hi = self.interval[stratum]
        return (hi - lo) / self.predicted_s[stratum]


def family_notes() -> dict[str, dict[str, Any]]:
    return tomllib.loads(HOLDOUT_NOTES.read_text())


def predict_rows(paths: Sequence[Path]) -> tuple[list[HeldOutCase], list[dict[str, str]]]:
    """Every row of the case files predicted with and without its software facts (no interval yet)."""
    cases, skipped = [], []
    for path in paths:
        for row in read_cases(Path(path)):
            try:
                given, given_est, model, _ = case_estimate(row)
                blank, blank_est, _, _ = case_estimate({**row, **{c: "" for c in SOFTWARE_CELLS}})
            except RowSkipped as exc:
                skipped.append({"case_id": row.get("case_id", ""), "reason": str(exc)})
                continue
            cases.append(HeldOutCase(case_id=given.case_id, family=(row.get(FAMILY_COLUMN) or "").strip(),
                                     published_s=given.published_s,
                                     predicted_s={KNOWN: given.predicted_s, UNKNOWN: blank.predicted_s},
                                     shares={KNOWN: estimate_shares(given_est, model),
                                             UNKNOWN: estimate_shares(blank_est, model)}))
    return cases, skipped


@dataclass(frozen=True)
class Calibration:
    """An interval calibration from a set of rows, per stratum: the width factor's spread (κ per class, coverage)
    and q (predict/intervals.py)."""

    spread: dict[str, dict[str, Any]]
    q: dict[str, float]

    def width(self, case: HeldOutCase, stratum: str) -> float:
        return width_factor(case.shares[stratum], self.spread[stratum])

    def interval(self, case: HeldOutCase, stratum: str) -> tuple[float, float]:
        return bounds(case.predicted_s[stratum], self.q[stratum] * self.width(case, stratum))


def fit(cases: Iterable[HeldOutCase]) -> Calibration:
    """Per stratum: κ and the coverage from its residuals, and the conformal quantile of |ln(published /
    predicted)| over `cases` (the width factor only widens it, predict/intervals.py)."""
    cases = list(cases)
    residuals = {s: [log_residual(c.published_s, c.predicted_s[s]) for c in cases] for s in STRATA}
    spread = {s: derive_spread([(c.family, r, c.shares[s]) for c, r in zip(cases, residuals[s], strict=True)])
              for s in STRATA}
    q = {s: conformal_quantile(residuals[s]) for s in STRATA}
    return Calibration(spread, q)


def attach_held_out_intervals(cases: list[HeldOutCase]) -> None:
    """Each case's interval from the residuals of every other family."""
    by_family: dict[str, list[HeldOutCase]] = defaultdict(list)
    for c in cases:
        by_family[c.family].append(c)
    for family, members in by_family.items():
        calibration = fit(c for c in cases if c.family != family)
        for c in members:
            c.interval = {s: calibration.interval(c, s) for s in STRATA}


def _errors(cases: list[HeldOutCase], stratum: str) -> dict[str, Any]:
    if not cases:
        return {"n": 0}
    errs = [c.rel_error(stratum) for c in cases]
    return {"n": len(cases), "median_abs_rel_error": statistics.median(abs(e) for e in errs),
            "p90_abs_rel_error": percentile((abs(e) for e in errs), 90),
            "median_rel_error": statistics.median(errs),
            "coverage": sum(c.covered(stratum) for c in cases) / len(cases),
            "median_interval_width": statistics.median(c.width(stratum) for c in cases)}


@dataclass
class HoldoutReport:
    cases: list[HeldOutCase]
    skipped: list[dict[str, str]]

    def families(self) -> dict[str, dict[str, Any]]:
        notes = family_notes()
        groups: dict[str, list[HeldOutCase]] = defaultdict(list)
        for c in self.cases:
            groups[c.family].append(c)
        return {name: {"in_sample": bool(notes.get(name, {}).get("in_sample", False)),
                       "why": notes.get(name, {}).get("why", "not seen by the project"),
                       **{s: _errors(members, s) for s in STRATA}}
                for name, members in sorted(groups.items())}

    def summary(self) -> dict[str, Any]:
        families = self.families()
        outside = [c for c in self.cases if not families[c.family]["in_sample"]]
        return {"rows": len(self.cases), "skipped": len(self.skipped), "families": len(families),
                "in_sample_families": sorted(f for f, v in families.items() if v["in_sample"]),
                "all_families": {s: _errors(self.cases, s) for s in STRATA},
                "out_of_sample_families_only": {s: _errors(outside, s) for s in STRATA}}

    def to_dict(self) -> dict[str, Any]:
        return {"method": METHOD, "summary": self.summary(), "families": self.families(),
                "cases": [{"case_id": c.case_id, "family": c.family, "published_s": c.published_s,
                           **{f"{key} ({s})": value for s in STRATA for key, value in (
                               ("predicted_s", c.predicted_s[s]), ("predicted_p10_s", c.interval[s][0]),
                               ("predicted_p90_s", c.interval[s][1]))}}
                          for c in self.cases],
                "skipped": self.skipped}


METHOD = (f"leave-one-family-out (family = {FAMILY_COLUMN}): point predictions have no constant fitted to "
          f"published times, so only the interval is re-calibrated per held-out family: the split-conformal quantile "
          f"(level {LEVEL}) of |ln(published/predicted)| and the width factor's κ per class and coverage, over the "
          f"other families' rows, per stratum (software "
          f"known: the row's facts; unknown: facts blanked, the documented default stack). Families whose "
          f"software was chosen after seeing them are marked in_sample (predict/data/holdout.toml).")


def leave_one_family_out(paths: Sequence[Path]) -> HoldoutReport:
    cases, skipped = predict_rows(paths)
    families = sorted({c.family for c in cases})
    if len(families) < 2:  # holding the one family out leaves no residual to calibrate its interval on
        raise ConfigError(f"--holdout family needs predicted rows of at least two publication families "
                          f"({FAMILY_COLUMN}); the case files give {len(families)}"
                          f"{' (' + families[0] + ')' if families else ''}.",
                          fix="add case files with rows of other families, or leave --holdout out.")
    attach_held_out_intervals(cases)
    return HoldoutReport(cases=cases, skipped=skipped)


def calibrate(paths: Sequence[Path], commit: str = "") -> dict[str, Any]:
    """The content of data/intervals.json: the calibration over every row of the case files."""
    cases, _ = predict_rows(paths)
    calibration = fit(cases)
    return {"method": "split-conformal widened per plan (predict/intervals.py): w = sqrt(1 + sum_c (kappa_c * "
                      "share_c)^2) per plan; q = ceil((n+1)*level)-th smallest |ln(published/predicted)|; interval = "
                      "predicted * exp(-q*w) .. predicted * exp(q*w) (p10-p90); kappa_c derived from the rows "
                      "where class c is at least large_share of the step, or the stated prior",
            "level": LEVEL, "computed": datetime.now(UTC).strftime("%Y-%m-%d"), "commit": commit,
            "case_files": [Path(p).name for p in paths],
            "strata": {s: {"q": calibration.q[s], "rows": len(cases), "families": sorted({c.family for c in cases}),
                           "spread": calibration.spread[s]} for s in STRATA}}
