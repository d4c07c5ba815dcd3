"""Goodput of a run with three lost nodes under each recovery policy, measured vs the reliability model's prediction.

The `tiny` model on dp2 ZeRO-3 (2 gloo processes, CPU; each rank stands for a node) for 300 steps, checkpoints
every 20 steps, loses rank 1's node three times, each half-way between two checkpoints (so the work lost is the
model's L = (τ + δ)/2), back BACK_AFTER steps later:

- requeue (`--max-restarts 3`): torchrun restarts both workers at once (locally the replacement node is at hand:
  the requeue wait W is 0) and they resume from the newest checkpoint;
- shrink (`--on-failure shrink`): the launcher re-plans for dp1 and resumes, then grows back to dp2 at the first
  checkpoint boundary after the node is back.

Measured goodput comes from each run's own accounting (summary.json). The prediction is
`reliability.policies.policy_goodputs` fed with that run's measured inputs — step time s (median full-world step),
checkpoint stall δ (stall per save), interval τ = 20 · s, restart cost R (recovery seconds per restart, or per
re-plan: shrink pays 2R a failure) and, for shrink, H (seconds the run trained on the smaller world) — and two
derived ones: the job MTBF M = the run's failure-free duration (300 · s + saves · δ) / 3, and W = 0. The model's
goodput is kept work over allocated time relative to a failure-free run on all N nodes, so beside the summary's
goodput (productive step time / wall; a slower step on the smaller world counts as productive) the script gives
the measured goodput on the model's terms: 300 · s / (wall − start-up), start-up being the time before the first
step (the model has none).

    .venv/bin/python benchmarks/bench_policy_goodput.py [--steps 300] [--out benchmarks/results/policy_goodput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_recovery import bastion, records  # noqa: E402
from bench_shrink import machine, scratch_with_data, world  # noqa: E402

PLAN = {"dp": 2, "zero_stage": 3, "micro_batch": 2, "global_batch": 4, "precision": "fp32"}
EVERY, FAILURES, BACK_AFTER = 20, 3, 15
POLICY_FLAGS = {"requeue": ["--on-failure", "requeue", "--max-restarts", str(FAILURES)],
                "shrink": ["--on-failure", "shrink"]}


def fault_steps(steps: int) -> list[int]:
    """FAILURES steps spread over the run, each half-way between two checkpoints."""
    return [(steps * (i + 1) // (FAILURES + 1)) // EVERY * EVERY + EVERY // 2 for i in range(FAILURES)]


def run_policy(root: Path, data: Path, policy: str, steps: int) -> tuple[Path, dict]:
    plan = root / "plan.json"
    plan.write_text(json.dumps(PLAN))
    run_dir = root / policy
    injections = [arg for step in fault_steps(steps)
                  for arg in ("--inject", f"lose-node:rank=1,step={step},back_at={step + BACK_AFTER}")]
    bastion("train", "--model", "tiny", "--plan", str(plan), "--data", str(data), "--steps", str(steps),
            "--run-dir", str(run_dir), "--nproc", "2", "--no-progress", "--checkpoint-every", str(EVERY),
            *POLICY_FLAGS[policy], *injections)
    from bastion.rundir.summary import read_summary

    return run_dir, dict(read_summary(run_dir) or {})


def measured_inputs(run_dir: Path, summary: dict, full_world: int) -> dict:
    """The model's inputs measured from one run's metrics.jsonl and summary."""
    recs = records(run_dir)
    steps = [r for r in recs if "event" not in r]
    step_s = statistics.median(r["step_time_s"] for r in steps if world(r) == full_world)
    saves = sum(1 for r in recs if r.get("event") == "checkpoint")
    changes = [r for r in recs if r.get("event") == "plan_change"]
    relaunches = len(changes) or summary["restarts"]
    degraded = []  # from the first step on the smaller world to the grow-back (or the end of the run)
    for index, change in enumerate(changes):
        if change["reason"] == "lose-node":
            back = changes[index + 1]["time"] if index + 1 < len(changes) else steps[-1]["time"]
            degraded.append(back - next(r["time"] - r["step_time_s"] for r in steps if r["time"] > change["time"]))
    start = next(r["time"] for r in recs if r.get("event") == "run_start")
    return {"step_s": step_s, "checkpoint_stall_s": summary["checkpoint_stall_s"] / max(saves, 1),
            "checkpoints": saves, "restart_s": summary["recovery_s"] / max(relaunches, 1), "relaunches": relaunches,
            "degraded_s": statistics.mean(degraded) if degraded else 0.0,
            "startup_s": steps[0]["time"] - steps[0]["step_time_s"] - start}


def predicted(policy: str, inputs: dict, steps: int) -> dict:
    """The model's goodput for `policy` with two readings of "three failures in the run's expected duration":
    M = failure-free duration / 3, and M = (failure-free duration + 3 C) / 3 — the wall time three failures
    of cost C make, for which the first-order G = E · (1 − C/M) is exact when the count of failures is fixed."""
    from bastion.reliability import PolicyInputs, policy_goodputs

    tau = EVERY * inputs["step_s"]
    failure_free_s = steps * inputs["step_s"] + steps // EVERY * inputs["checkpoint_stall_s"]

    def model(mtbf_s: float) -> dict:
        return {p.policy: p for p in policy_goodputs(PolicyInputs(
            mtbf_s=mtbf_s, nodes=PLAN["dp"], step_s=inputs["step_s"], checkpoint_stall_s=inputs["checkpoint_stall_s"],
            checkpoint_interval_s=tau, restart_s=inputs["restart_s"], requeue_wait_s=0.0,
            repair_s=inputs["degraded_s"], spares=0, replicas=PLAN["dp"]))}

    per_compute = model(failure_free_s / FAILURES)
    cost = per_compute[policy].cost_per_failure_s or 0.0
    per_wall = model(failure_free_s / FAILURES + cost)
    return {"interval_s": tau, "failure_free_s": failure_free_s, "cost_per_failure_s": cost,
            "formula": per_compute[policy].note,
            "mtbf_failure_free_s": failure_free_s / FAILURES, "goodput_mtbf_failure_free": per_compute[policy].goodput,
            "mtbf_expected_wall_s": failure_free_s / FAILURES + cost, "goodput_mtbf_expected_wall": per_wall[policy].goodput,
            "replica_drop_goodput_mtbf_expected_wall": per_wall["replica-drop"].goodput}


def compare(run_dir: Path, summary: dict, policy: str, steps: int) -> dict:
    inputs = measured_inputs(run_dir, summary, PLAN["dp"])
    breakdown = summary["time_breakdown_s"]
    return {"steps": summary["steps"], "finished": summary.get("finished"),
            "faults": summary.get("faults_injected"), "restarts": summary["restarts"],
            "plan_changes": summary.get("plan_changes", []), "lost_steps": summary["lost_steps"],
            "measured_goodput_summary": summary["goodput"],
            "measured_goodput_model_terms": steps * inputs["step_s"] / (breakdown["wall_s"] - inputs["startup_s"]),
            "time_breakdown_s": breakdown, "measured_inputs": inputs,
            "predicted": predicted(policy, inputs, steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps of each run (300: ~4 min a policy here)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "policy_goodput.json")
    args = parser.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with scratch_with_data("bastion-bench-policy-") as (root, data):
        policies = {policy: compare(*run_policy(root, data, policy, args.steps), policy, args.steps)
                    for policy in POLICY_FLAGS}
    results = {"model": "tiny", "plan": PLAN, "steps": args.steps, "checkpoint_every": EVERY,
               "lost_nodes": [f"rank 1 at step {s}, back at {s + BACK_AFTER}" for s in fault_steps(args.steps)],
               "inputs": {"measured": ["step_s", "checkpoint_stall_s", "restart_s", "degraded_s (H)", "startup_s"],
                          "derived": ["mtbf_s = failure-free duration / 3, or (failure-free duration + 3 C) / 3", "interval_s = 20 · step_s",
                                      "requeue_wait_s = 0 (torchrun restarts on this host at once)"]},
               "policies": policies, "machine": {**machine(), "loadavg_at_start": load_at_start}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"tiny dp2, {args.steps} steps, rank 1's node lost at steps {fault_steps(args.steps)} "
          f"(back {BACK_AFTER} steps later), checkpoint every {EVERY}")
    for policy, r in policies.items():
        i, p = r["measured_inputs"], r["predicted"]
        print(f"{policy:8s} measured goodput {r['measured_goodput_summary']:.1%} (summary), "
              f"{r['measured_goodput_model_terms']:.1%} (on the model's terms) | predicted "
              f"{p['goodput_mtbf_failure_free']:.1%} (M = failure-free / 3 = {p['mtbf_failure_free_s']:.1f} s), "
              f"{p['goodput_mtbf_expected_wall']:.1%} (M = expected wall / 3 = {p['mtbf_expected_wall_s']:.1f} s)")
        print(f"{'':8s} inputs: s {i['step_s']:.3f} s, δ {i['checkpoint_stall_s']:.3f} s, R {i['restart_s']:.1f} s "
              f"({i['relaunches']} relaunches), H {i['degraded_s']:.1f} s; {p['formula']}")
    drop = policies["shrink"]["predicted"]["replica_drop_goodput_mtbf_expected_wall"]
    print(f"replica-drop (predicted only, no torchft here; shrink's inputs, M = expected wall / 3): {drop:.1%}")
    print(f"load average {load_at_start} at start, {results['machine']['loadavg']} at the end; saved {args.out}")


if __name__ == "__main__":
    main()
