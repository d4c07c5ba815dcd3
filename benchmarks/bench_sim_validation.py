"""The simulator against a real trace's recorded waits (issue 17, "Validation, as the predictor has it").

Replays the held-out slices of Alibaba cluster-trace-gpu-v2023's pod list (tests/validation/data/
openb_pod_list_slice.csv; provenance in SOURCES.md there; slices `bastion.sim.validation.OPENB_SLICES`) on the
trace's cluster (tests/validation/data/openb-cluster.toml) under fifo and backfill, as
`bastion simulate --trace SLICE.csv --trace-format generic` does, nothing fitted, and prints and writes the
simulated and recorded wait distribution (mean, median, p90, seconds) and in-window used utilisation with their
errors (simulated - recorded) to benchmarks/results/sim_validation.json. tests/validation/test_sim_trace_waits.py
checks the errors stay within what this measured.

    .venv/bin/python benchmarks/bench_sim_validation.py
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bastion.sim.inputs import load_inventory
from bastion.sim.traces import load_trace
from bastion.sim.validation import OPENB_SLICES, openb_as_generic, replay_against_recorded

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "validation" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "sim_validation.json"
#: the policies closest to the cluster's Kubernetes scheduler (one queue, pods in creation order)
POLICIES = ("fifo", "backfill")


def main() -> None:
    inventory = load_inventory(DATA / "openb-cluster.toml")
    slices = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (first, last) in OPENB_SLICES.items():
            target = Path(tmp) / f"openb_{name}.csv"
            skipped = openb_as_generic(DATA / "openb_pod_list_slice.csv", target, first, last)
            trace = load_trace(target, "generic", inventory)
            runs = [c.to_dict() for c in replay_against_recorded(trace, POLICIES)]
            slices.append({"slice": name, "pods": [first, last], "left_out": skipped, "runs": runs})
    out = {"computed": datetime.now(UTC).date().isoformat(), "trace": "alibaba/clusterdata cluster-trace-gpu-v2023",
           "cluster": {"name": inventory.name, "gpus": inventory.gpus}, "fitted": "nothing", "slices": slices}
    print(f"{'slice':5} {'policy':9} {'jobs':>4}  {'wait mean s':>17}  {'p50 s':>11}  {'p90 s':>13}  "
          f"{'util used (sim / rec)':>21}")
    for entry in slices:
        for run in entry["runs"]:
            sim, rec = run["simulated"], run["recorded"]
            print(f"{entry['slice']:5} {run['policy']:9} {sim['jobs']:>4}  "
                  f"{sim['mean_wait_s']:>7.1f} / {rec['mean_wait_s']:>7.1f}  "
                  f"{sim['p50_wait_s']:>4.1f} / {rec['p50_wait_s']:>4.1f}  "
                  f"{sim['p90_wait_s']:>5.1f} / {rec['p90_wait_s']:>5.1f}  "
                  f"{sim['window_used_utilisation']:>9.4%} / {rec['window_used_utilisation']:.4%}")
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
