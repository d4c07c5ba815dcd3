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

The same machinery calibrates the shipped interval (calibrate): q from the out-of-sample rows of the files compiled
blind, the width factor from the development files; cross_fit reports its honest coverage, each out-of-sample
family's interval with q computed without that family (predict/intervals.py says why).
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
    derive_spread,
    estimate_shares,
    family_conformal_quantile,
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
    #: whether the row's own software facts name a known framework (or stack): its prediction with them is then
    #: of the software-known stratum, else it too runs on the default stack
    software_known: bool = True
    #: the name of the case file the row is from
    case_file: str = ""

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
                                             UNKNOWN: estimate_shares(blank_est, model)},
                                     software_known=given.software_known, case_file=Path(path).name))
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


def in_stratum(case: HeldOutCase, stratum: str, by_software: bool) -> bool:
    """Whether the case's prediction in `stratum` calibrates that stratum. by_software (the shipped calibration):
    the software-known stratum takes only the rows whose facts name a known framework; every row's blanked
    prediction runs on the default stack, so the software-unknown stratum takes every row. Otherwise (the
    within-files check of `--holdout family`) both strata take every row."""
    return not by_software or stratum == UNKNOWN or case.software_known


def fit(cases: Iterable[HeldOutCase], spread: dict[str, dict[str, Any]] | None = None,
        by_software: bool = False) -> Calibration:
    """Per stratum: the family-weighted conformal quantile of |ln(published / predicted)| over the cases of the
    stratum (in_stratum), and κ and the coverage from their residuals unless `spread` gives them (the width factor
    only widens the interval, predict/intervals.py)."""
    cases = list(cases)
    members = {s: [c for c in cases if in_stratum(c, s, by_software)] for s in STRATA}
    residuals = {s: [(c.family, log_residual(c.published_s, c.predicted_s[s])) for c in members[s]] for s in STRATA}
    if spread is None:
        spread = {s: derive_spread([(c.family, r, c.shares[s]) for c, (_, r) in zip(members[s], residuals[s],
                                                                                        strict=True)])
                  for s in STRATA}
    q = {s: family_conformal_quantile(residuals[s]) for s in STRATA}
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
          f"published times, so only the interval is re-calibrated per held-out family: the family-weighted conformal "
          f"quantile "
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


def out_of_sample_rows(paths: Sequence[Path]) -> list[HeldOutCase]:
    """The rows of the case files whose families the predictor has not seen (data/holdout.toml)."""
    notes = family_notes()
    cases, _ = predict_rows(paths)
    return [c for c in cases if not notes.get(c.family, {}).get("in_sample", False)]


def calibrate(out_of_sample: Sequence[HeldOutCase], spread_paths: Sequence[Path],
              commit: str = "") -> dict[str, Any]:
    """The content of data/intervals.json: q per stratum from the out-of-sample rows (out_of_sample_rows of the
    files compiled blind), the width factor (κ per class, coverage) from every row of `spread_paths` (the
    development files; predict/intervals.py says why)."""
    development, _ = predict_rows(spread_paths)
    calibration = fit(out_of_sample, spread=fit(development).spread, by_software=True)
    members = {s: [c for c in out_of_sample if in_stratum(c, s, True)] for s in STRATA}
    return {"method": "split-conformal widened per plan (predict/intervals.py): w = sqrt(1 + sum_c (kappa_c * "
                      "share_c)^2) per plan; q = the family-weighted conformal quantile of |ln(published/predicted)| "
                      "over the out-of-sample rows of the stratum (each family weight 1/K, level*(K+1)/K); interval "
                      "= predicted * exp(-q*w) .. predicted * exp(q*w) (p10-p90); kappa_c derived from the "
                      "development rows where class c is at least large_share of the step, or the stated prior",
            "level": LEVEL, "computed": datetime.now(UTC).strftime("%Y-%m-%d"), "commit": commit,
            "case_files": sorted({c.case_file for c in out_of_sample}),
            "spread_case_files": [Path(p).name for p in spread_paths],
            "strata": {s: {"q": calibration.q[s], "rows": len(members[s]),
                           "families": sorted({c.family for c in members[s]}),
                           "spread": calibration.spread[s]} for s in STRATA}}


def cross_fit(out_of_sample: Sequence[HeldOutCase], spread: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The honest coverage of the shipped calibration: each out-of-sample family's interval with q computed without
    it (leave-one-family-out over the calibration set; the width factor's `spread` comes from other files), per
    stratum over all its rows, per case file and per family, with |error| and the median width."""
    out: dict[str, Any] = {}
    for s in STRATA:
        members = [c for c in out_of_sample if in_stratum(c, s, True)]
        for family in {c.family for c in members}:
            calibration = fit((c for c in out_of_sample if c.family != family), spread=spread, by_software=True)
            for c in members:
                if c.family == family:
                    c.interval[s] = calibration.interval(c, s)
        groups: dict[str, list[HeldOutCase]] = defaultdict(list)
        for c in members:
            groups["all"].append(c)
            groups[c.case_file].append(c)
            groups[c.family].append(c)
        out[s] = {name: _errors(cases, s) for name, cases in groups.items()}
        out[s]["family_mean_coverage"] = statistics.mean(
            out[s][f]["coverage"] for f in {c.family for c in members})
    return out
