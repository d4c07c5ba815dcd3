"""The predictor's honest figures: leave-one-family-out over the project's three case files (issue 13 §3), and the
calibration of the interval every prediction carries.

Prints the per-family table (which families are in-sample and why, |error| with the software known and with it
blanked, held-out interval coverage and width) and writes benchmarks/results/holdout.json. Then the shipped
interval: q per stratum from the out-of-sample rows of the files compiled blind (CALIBRATION_FILES), the width
factor from the development files, and its cross-fitted coverage (each out-of-sample family's interval with q
computed without it) per stratum, case file and family -> benchmarks/results/intervals_crossfit.json. With
--write-intervals it also rewrites src/bastion/predict/data/intervals.json (run it after a change to the predictor).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from bastion.predict.holdout import calibrate, cross_fit, leave_one_family_out, out_of_sample_rows
from bastion.predict.intervals import INTERVALS, KNOWN, UNKNOWN
from bastion.predict.validate import PUBLIC_CASES

ROOT = Path(__file__).parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "holdout.json"
CROSS_FIT = ROOT / "benchmarks" / "results" / "intervals_crossfit.json"
DATA = ROOT / "tests" / "validation" / "data"
#: the development files: every family in-sample (holdout.toml); the interval's width factor is derived from them
CASE_FILES = (PUBLIC_CASES, DATA / "nemo_cases.csv", DATA / "torchtitan_cases.csv")
#: the files compiled blind: their out-of-sample rows calibrate the interval's q
CALIBRATION_FILES = tuple(DATA / f"{name}_cases.csv" for name in ("heldout", "blind", "blind2"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-intervals", action="store_true", help=f"rewrite {INTERVALS}")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    report = leave_one_family_out(CASE_FILES)
    out = report.to_dict()
    out["commit"] = commit
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{'family':30s} {'n':>4s} in-sample  |err| med  p90   cover  width | unknown: med   p90  cover")
    for name, f in report.families().items():
        k, u = f[KNOWN], f[UNKNOWN]
        print(f"{name:30s} {k['n']:4d} {'yes' if f['in_sample'] else 'no':9s} {k['median_abs_rel_error']:6.1%} "
              f"{k['p90_abs_rel_error']:6.1%} {k['coverage']:6.0%} {k['median_interval_width']:6.1%} | "
              f"{u['median_abs_rel_error']:12.1%} {u['p90_abs_rel_error']:6.1%} {u['coverage']:5.0%}")
    for scope, figures in report.summary().items():
        if isinstance(figures, dict):
            for stratum, e in figures.items():
                if e["n"]:
                    print(f"{scope} ({stratum}): {e['n']} rows, median |error| {e['median_abs_rel_error']:.1%}, "
                          f"p90 {e['p90_abs_rel_error']:.1%}, coverage {e['coverage']:.1%}, median width "
                          f"{e['median_interval_width']:.1%}")
                else:
                    print(f"{scope} ({stratum}): no rows")
    print(f"recorded in {RESULTS}")
    out_of_sample = out_of_sample_rows(CALIBRATION_FILES)
    stored = calibrate(out_of_sample, CASE_FILES, commit)
    for stratum, s in stored["strata"].items():
        spread = s["spread"]
        print(f"{stratum}: q {s['q']:.3f} on {s['rows']} rows of {len(s['families'])} out-of-sample families; width "
              f"factor s0 {spread['s0']:.3f} on {spread['baseline_rows']} baseline rows; coverage "
              f"{spread['coverage']}")
        for name, c in spread["classes"].items():
            print(f"  {name:24s} kappa {c['kappa']:6.2f}  {c.get('large_rows', '-'):>4} large rows  {c['how']}")
    crossed = cross_fit(out_of_sample, {s: v["spread"] for s, v in stored["strata"].items()})
    print("cross-fitted (each out-of-sample family's q computed without it):")
    for stratum, groups in crossed.items():
        for name, e in groups.items():
            if name != "family_mean_coverage":
                print(f"  {stratum:16s} {name:22s} {e['n']:4d} rows  coverage {e['coverage']:5.0%}  median width "
                      f"{e['median_interval_width']:5.0%}  |err| median {e['median_abs_rel_error']:5.1%}")
        print(f"  {stratum:16s} mean of the families' coverage {groups['family_mean_coverage']:.0%}")
    CROSS_FIT.write_text(json.dumps({"commit": commit, "level": stored["level"], "strata": crossed}, indent=1) + "\n")
    print(f"recorded in {CROSS_FIT}")
    if args.write_intervals:
        INTERVALS.write_text(json.dumps(stored, indent=1) + "\n")
        print(f"interval calibration written to {INTERVALS}")


if __name__ == "__main__":
    main()
