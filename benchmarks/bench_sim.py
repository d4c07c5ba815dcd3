"""Cluster simulator: a synthetic 1,000-job month on a 3-pool cluster under fifo, backfill and fair; a 100,000-job
recorded-trace replay per policy.

Cluster: 2,048 H100 + 1,024 A100-80GB + 512 H200 (8 per node), tenants pretrain (1,792 GPUs, may borrow),
research (1,280, may borrow), product (512, may not). Jobs: `bastion.sim.synthetic` (seed 0, Poisson arrivals
over 720 h). Records wall seconds of the planner phase (one search per job shape and pool, shared by the three
policies; wall and CPU, since the machine may be shared) and of each policy's simulation, with utilisation, goodput, waits, failures and energy. Writes
benchmarks/results/sim.json.

Trace replay (`--case trace`): `--trace-jobs` (100,000) synthetic recorded jobs (`synthetic_trace`: most on one
GPU or less, a few gangs, 80% with user time limits, arrivals at 85% of the GPUs) on a 2-pool cluster of 768
GPUs with three queues in one cohort (serving has the highest priority; per-queue ordering, first-fit placement),
under fifo, backfill, fair, sjf and the preemptive or heterogeneity-aware priority, kueue, multifactor, srtf, las
and gavel (`--policies` picks): wall and CPU seconds of each policy's simulation, with in-window utilisation, waits, JCT, slowdown and Jain's fairness.

    .venv/bin/python benchmarks/bench_sim.py [--jobs 1000] [--seed 0] [--placement fastest]
                                             [--case all|planner|trace] [--trace-jobs 100000]
                                             [--policies fifo,backfill,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sim.json"

INVENTORY = {
    "name": "bench-3-pools",
    "pool": [{"name": "h100", "accelerator": "h100-sxm", "nodes": 256},
             {"name": "a100", "accelerator": "a100-80g", "nodes": 128},
             {"name": "h200", "accelerator": "h200", "nodes": 64}],
    "tenant": [{"name": "pretrain", "quota_gpus": 1792, "borrow": True},
               {"name": "research", "quota_gpus": 1280, "borrow": True},
               {"name": "product", "quota_gpus": 512, "borrow": False}],
}


TRACE_INVENTORY = {
    "name": "bench-trace-queues",
    "pool": [{"name": "h100", "accelerator": "h100-sxm", "nodes": 64},
             {"name": "a100", "accelerator": "a100-80g", "nodes": 32}],
    # priority and cohort matter only to the preemptive policies (priority, kueue, multifactor's QOS)
    "tenant": [{"name": "training", "quota_gpus": 448, "pools": ["h100"], "cohort": "all"},
               {"name": "research", "quota_gpus": 224, "cohort": "all"},
               {"name": "serving", "quota_gpus": 96, "pools": ["a100"], "borrow": False, "priority": 10,
                "cohort": "all"}],
}
TRACE_POLICIES = ("fifo", "backfill", "fair", "sjf", "priority", "kueue", "multifactor", "srtf", "las", "gavel")


def trace_replay(jobs: int, seed: int, policies: tuple[str, ...] = TRACE_POLICIES) -> dict:
    """Each policy's wall and CPU seconds on `jobs` synthetic recorded jobs, with the figures it reached."""
    from bastion.sim import PlannerPerf, SimConfig, resolve, simulate
    from bastion.sim.inputs import inventory_from_mapping
    from bastion.sim.synthetic import synthetic_trace

    inventory = inventory_from_mapping(TRACE_INVENTORY, "bench trace inventory")
    workload = synthetic_trace(inventory, jobs, seed=seed)
    resolved = resolve(workload.jobs, inventory, PlannerPerf())  # recorded jobs without a model: no search
    rows = []
    for policy in policies:
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = simulate(resolved, inventory, SimConfig(policy=policy, placement="first-fit", per_queue=True,
                                                         seed=seed))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        c = result.cluster
        rows.append({"policy": policy, "simulate_s": seconds, "simulate_cpu_s": cpu, "jobs": c.jobs,
                     "window_utilisation": c.window_utilisation, "mean_wait_h": c.mean_wait_h,
                     "p90_wait_h": c.p90_wait_h, "p99_wait_h": c.p99_wait_h, "mean_jct_h": c.mean_jct_h,
                     "mean_bounded_slowdown": c.mean_bounded_slowdown, "jain_fairness": c.jain_fairness,
                     "events": result.events})
        print(f"trace {policy:11s} {seconds:6.1f} s wall ({cpu:6.1f} s CPU)  in-window util "
              f"{c.window_utilisation:6.1%}  mean wait {c.mean_wait_h:6.2f} h  p90 {c.p90_wait_h:6.2f} h  "
              f"slowdown {c.mean_bounded_slowdown:6.2f}  Jain {c.jain_fairness:.3f}")
    return {"inventory": TRACE_INVENTORY, "jobs": jobs, "seed": seed, "placement": "first-fit",
            "queues": "per-queue", "policies": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--placement", default="fastest", choices=("fastest", "first-fit"))
    parser.add_argument("--case", default="all", choices=("all", "planner", "trace"))
    parser.add_argument("--trace-jobs", type=int, default=100_000)
    parser.add_argument("--policies", default=",".join(TRACE_POLICIES),
                        help="the trace case's policies, comma-separated")
    args = parser.parse_args()
    policies = tuple(args.policies.split(","))
    if args.case == "trace":
        record({"benchmark": "sim", "trace_replay": with_earlier_rows(trace_replay(args.trace_jobs, args.seed,
                                                                                  policies))})
        return

    from bastion.sim import PlannerPerf, SimConfig, resolve, simulate
    from bastion.sim.inputs import inventory_from_mapping
    from bastion.sim.synthetic import synthetic_workload

    started, cpu_started = time.perf_counter(), time.process_time()
    inventory = inventory_from_mapping(INVENTORY, "bench inventory")
    workload = synthetic_workload(inventory, args.jobs, seed=args.seed)
    perf = PlannerPerf()
    resolved = resolve(workload.jobs, inventory, perf)
    resolve_s, resolve_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"{args.jobs} jobs, {perf.searches} planner searches: {resolve_s:.1f} s wall, {resolve_cpu_s:.1f} s CPU")
    policies = []
    for policy in ("fifo", "backfill", "fair"):
        t0 = time.perf_counter()
        result = simulate(resolved, inventory, SimConfig(policy=policy, placement=args.placement, seed=args.seed))
        seconds = time.perf_counter() - t0
        c = result.cluster
        row = {"policy": policy, "simulate_s": seconds, "jobs": c.jobs, "unschedulable": c.unschedulable,
               "makespan_h": c.makespan_h, "utilisation": c.utilisation, "goodput": c.goodput,
               "mean_wait_h": c.mean_wait_h, "p90_wait_h": c.p90_wait_h, "failures": c.failures,
               "lost_gpu_hours": c.lost_gpu_hours, "energy_mwh": c.energy_kwh / 1000.0,
               "pool_utilisation": {p.name: p.utilisation for p in result.pools},
               "tenant_mean_wait_h": {t.name: t.mean_wait_h for t in result.tenants}, "events": result.events}
        policies.append(row)
        print(f"{policy:9s} {seconds:5.2f} s  makespan {c.makespan_h:7.1f} h  utilisation {c.utilisation:6.1%}  "
              f"goodput {c.goodput:6.2%}  mean wait {c.mean_wait_h:6.1f} h  p90 {c.p90_wait_h:6.1f} h  "
              f"failures {c.failures}  unschedulable {c.unschedulable}")
    total = time.perf_counter() - started
    replay = trace_replay(args.trace_jobs, args.seed, policies) if args.case == "all" else None
    record({"benchmark": "sim", "inventory": INVENTORY, "jobs": args.jobs, "seed": args.seed,
            "placement": args.placement, "planner_searches": perf.searches, "resolve_s": resolve_s,
            "resolve_cpu_s": resolve_cpu_s, "total_wall_s": total, "policies": policies, "trace_replay": replay})


def with_earlier_rows(replay: dict) -> dict:
    """The replay with the file's rows of the policies not rerun (same jobs and seed), so that `--policies`
    can add policies to the figures without rerunning the others."""
    previous = (json.loads(RESULTS.read_text()) if RESULTS.exists() else {}).get("trace_replay") or {}
    if (previous.get("jobs"), previous.get("seed")) != (replay["jobs"], replay["seed"]):
        return replay
    rerun = {row["policy"] for row in replay["policies"]}
    kept = [row for row in previous.get("policies", []) if row["policy"] not in rerun]
    order = {policy: i for i, policy in enumerate(TRACE_POLICIES)}
    rows = sorted([*kept, *replay["policies"]], key=lambda row: order.get(row["policy"], len(order)))
    return {**replay, "policies": rows}


def record(results: dict) -> None:
    """Write `results` with the machine's facts to benchmarks/results/sim.json (a case run alone keeps the other
    case's figures from the file)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged = {**previous, **{k: v for k, v in results.items() if v is not None}}
    merged.update({"machine": platform.platform(), "cpus": os.cpu_count(), "load_avg_1m": load,
                   "python": platform.python_version()})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"→ {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
