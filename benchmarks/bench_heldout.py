"""The predictor's out-of-sample figures: tests/validation/data/heldout_cases.csv, published runs from publication
families compiled after the predictor was frozen (issue 13, "honest figures"), so nothing in the predictor was chosen
after seeing them.

For each family and overall: median and p90 |error| of the point prediction (software facts as published, and with
them blanked), and how often the published step time falls in the p10-p90 interval, two ways:
  - shipped: the interval every prediction carries (predict/data/intervals.json) — what a user is shown. Until
    branch intervals2 calibrated on the three development files, none of these rows; since, its q is calibrated on
    the out-of-sample rows of heldout, blind and blind2 themselves, so for those files this coverage is in-sample
    and the honest one is bench_holdout.py's cross-fitted figure (benchmarks/results/intervals_crossfit.json);
  - held out within the file: `bastion validate FILE --holdout family`, each family's interval calibrated on the
    other families of this file only.
The same shipped-interval figures are also given per software framework (the rows' `framework` fact), and every
predicted row's error is listed. Prints the table and writes benchmarks/results/heldout_<date>.json (the date of the run). Another case file of held-out
families can be given as the argument (`bench_heldout.py tests/validation/data/blind_cases.csv`): its figures go to
benchmarks/results/<name>_<date>.json, <name> being the file's name without `_cases.csv`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bastion.predict.holdout import FAMILY_COLUMN, leave_one_family_out
from bastion.predict.intervals import KNOWN, UNKNOWN
from bastion.predict.validate import CaseResult, read_cases, validate_cases
from bastion.stats import percentile

ROOT = Path(__file__).parent.parent
HELDOUT = ROOT / "tests" / "validation" / "data" / "heldout_cases.csv"
RESULTS = ROOT / "benchmarks" / "results"
#: what the predictor's code and data are: a later change to either makes these figures stale (holdout.toml only
#: accounts for which families were seen; predict/holdout.py never lets it reach a prediction)
PREDICTOR_PATHS = ("src/bastion/predict", "src/bastion/planner", ":(exclude)src/bastion/predict/data/holdout.toml")


def shipped_interval_figures(cases: list[CaseResult]) -> dict[str, Any]:
    """|error| and the coverage and width of the interval every prediction carries (intervals.json)."""
    errs = [abs(c.rel_error) for c in cases]
    assert all(c.p10_s is not None and c.p90_s is not None for c in cases)
    return {"n": len(cases), "median_abs_rel_error": statistics.median(errs),
            "p90_abs_rel_error": percentile(errs, 90), "median_rel_error": statistics.median(c.rel_error for c in cases),
            "coverage": sum(c.p10_s <= c.published_s <= c.p90_s for c in cases) / len(cases),
            "median_interval_width": statistics.median((c.p90_s - c.p10_s) / c.predicted_s
                                                       for c in cases)}


def measure(case_file: Path = HELDOUT) -> dict[str, Any]:
    rows = {r["case_id"]: r for r in read_cases(case_file)}
    family_of = {case_id: r[FAMILY_COLUMN] for case_id, r in rows.items()}
    report = validate_cases(case_file)
    by_family: dict[str, list[CaseResult]] = defaultdict(list)
    by_framework: dict[str, list[CaseResult]] = defaultdict(list)
    for case in report.cases:
        by_family[family_of[case.case_id]].append(case)
        by_framework[rows[case.case_id].get("framework", "") or "(none)"].append(case)
    held_out = leave_one_family_out([case_file])
    lofo = held_out.families()
    git = ["git", "-C", str(ROOT)]
    return {
        "case_file": str(case_file.resolve().relative_to(ROOT)),
        "computed": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "predictor_commit": subprocess.run([*git, "log", "-1", "--format=%h", "--", *PREDICTOR_PATHS],
                                           capture_output=True, text=True).stdout.strip(),
        "rows": len(family_of), "predicted": len(report.cases), "skipped": report.skipped,
        "shipped_interval": {"all": shipped_interval_figures(report.cases),
                             **{f: shipped_interval_figures(cs) for f, cs in sorted(by_family.items())}},
        # the row's `framework` fact: how the figure differs for stacks bastion has entries for and for the rest
        "shipped_interval_by_framework": {f: shipped_interval_figures(cs) for f, cs in sorted(by_framework.items())},
        "cases": [{"case_id": c.case_id, "published_s": c.published_s, "predicted_s": c.predicted_s,
                   "rel_error": c.rel_error, "p10_s": c.p10_s, "p90_s": c.p90_s, "software": c.software}
                  for c in report.cases],
        "holdout_within_file": {"method": "bastion validate FILE --holdout family (predict/holdout.py)",
                                "all": held_out.summary()["all_families"],
                                **{f: {s: v[s] for s in (KNOWN, UNKNOWN)} for f, v in lofo.items()}},
    }


def main() -> None:
    case_file = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HELDOUT
    out = measure(case_file)
    stem = "heldout" if case_file == HELDOUT else case_file.name.removesuffix(".csv").removesuffix("_cases")
    path = RESULTS / f"{stem}_{out['computed']}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    shipped, lofo = out["shipped_interval"], out["holdout_within_file"]
    print(f"{out['case_file']}: {out['predicted']} of {out['rows']} rows predicted; predictor as of "
          f"{out['predictor_commit']} (evaluated at {out['commit']})")
    print(f"{'family':20s} {'rows':>4s} {'|err| med':>9s} {'p90':>6s} {'cover':>6s} {'width':>6s} | "
          f"{'no sw med':>9s} {'held-out cover':>14s}")
    for name in [*sorted(k for k in shipped if k != "all"), "all"]:
        k = shipped[name]
        u, h = lofo[name][UNKNOWN], lofo[name][KNOWN]
        print(f"{name:20s} {k['n']:4d} {k['median_abs_rel_error']:9.1%} {k['p90_abs_rel_error']:6.1%} "
              f"{k['coverage']:6.0%} {k['median_interval_width']:6.1%} | {u['median_abs_rel_error']:9.1%} "
              f"{h['coverage']:14.0%}")
    for name, k in out["shipped_interval_by_framework"].items():
        print(f"framework {name:10s} {k['n']:4d} {k['median_abs_rel_error']:9.1%} {k['p90_abs_rel_error']:6.1%} "
              f"{k['coverage']:6.0%} {k['median_interval_width']:6.1%}")
    for skipped in out["skipped"]:
        print(f"refused {skipped['case_id']}: {skipped['reason']}")
    print("cover/width: the shipped interval (intervals.json); held-out cover: --holdout family within this file")
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
