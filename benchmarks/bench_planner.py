"""Planner speed: wall time of the whole `bastion plan` process and plans evaluated per second.

Cases: llama3-405b on 16,384 H100s (global batch 2048, seq 8192 — the issue's ≤ 2 s target), gpt3-175b on
1,024 A100-80GB (global batch 1536, seq 2048) and deepseek-v3 on 2,048 H100s (global batch 4096, seq 4096 — issue
14: feasible plans with ep > 1 in a few seconds; `winner_ep` records the winner's). Each case runs
`bastion plan --json` as a fresh process
(best of REPEATS, since the machine is shared) and in-process (search only). Writes
benchmarks/results/planner.json.

    .venv/bin/python benchmarks/bench_planner.py [--repeats 3]
    .venv/bin/python benchmarks/bench_planner.py --published   # planner vs the published expert plans

`--published` compares, for every published run in the predictor's case file, the experts' plan under the
predictor with the planner's best (whole space, and same techniques only; see bastion/planner/published.py)
and writes benchmarks/results/planner_vs_published.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "planner.json"
PUBLISHED_RESULTS = ROOT / "benchmarks" / "results" / "planner_vs_published.json"

CASES = [
    {"name": "llama3-405b/h100-sxm:16384", "model": "llama3-405b", "cluster": "h100-sxm:16384",
     "global_batch": 2048, "seq_len": 8192, "target_wall_s": 2.0},
    {"name": "gpt3-175b/a100-80g:1024", "model": "gpt3-175b", "cluster": "a100-80g:1024",
     "global_batch": 1536, "seq_len": 2048, "target_wall_s": None},
    {"name": "deepseek-v3/h100-sxm:2048", "model": "deepseek-v3", "cluster": "h100-sxm:2048",
     "global_batch": 4096, "seq_len": 4096, "target_wall_s": None},
]


def bastion_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("bastion")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bastion"]


def run_process(case: dict) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the process and its workers, the --json output)."""
    cmd = [*bastion_cmd(), "plan", "--model", case["model"], "--cluster", case["cluster"],
           "--global-batch", str(case["global_batch"]), "--seq-len", str(case["seq_len"]), "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(out.stdout)


def run_in_process(case: dict) -> dict:
    from dataclasses import replace

    from bastion.planner.search import PlanRequest, search
    from bastion.specs import load_cluster, load_model

    model = load_model(case["model"], seq_len=case["seq_len"])
    request = PlanRequest(model=model, cluster=load_cluster(case["cluster"]), global_batch=case["global_batch"],
                          seq_len=case["seq_len"])
    started, cpu_started = time.perf_counter(), time.process_time()
    result = search(replace(request, workers=1))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"search_s": seconds, "search_cpu_s_serial": cpu, "evaluated": result.evaluated, "predicted": result.predicted,
            "feasible": result.feasible, "plans_per_s": result.evaluated / seconds,
            "predictions_per_s": result.predicted / seconds, "plans_per_cpu_s": result.evaluated / cpu,
            "predictions_per_cpu_s": result.predicted / cpu}


def published(workers: int, only: set[str], out: Path) -> None:
    from bastion.planner.published import PublishedRuns
    from bastion.predict.validate import PUBLIC_CASES, RowSkipped, read_cases

    runs = PublishedRuns(workers=workers)
    compared, skipped = [], []
    started = time.perf_counter()
    # cheapest searches first (fewest devices), and the file is rewritten after every row, so an interrupted
    # run still leaves every row it finished
    rows = sorted((r for r in read_cases(PUBLIC_CASES) if not only or r["case_id"] in only),
                  key=lambda r: (int(r["num_gpus"] or 0), r["case_id"]))
    for row in rows:
        try:
            c = runs.compare(row)
        except RowSkipped as exc:
            skipped.append({"case_id": row["case_id"], "reason": str(exc)})
            print(f"{row['case_id']}: skipped ({exc})", flush=True)
            continue
        compared.append(c.to_dict())
        write_published(compared, skipped, started, out)
        fmt = lambda g: "n/a" if g is None else f"{100 * g:+.0f}%"  # noqa: E731
        print(f"{c.case_id} {c.model[:24]:24} {c.num_gpus:5d} {c.accelerator:9} published plan predicted "
              f"{c.predicted_s:8.3f} s (published {c.published_s:8.3f} s, fits {c.published_fits}); planner gain "
              f"free {fmt(c.free_gain)}, same techniques {fmt(c.same_techniques_gain)}", flush=True)
    summary = write_published(compared, skipped, started, out)
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")


def write_published(compared: list[dict], skipped: list[dict], started: float, out: Path) -> dict:
    from bastion.planner.published import CLAIM_THRESHOLD

    def claims(key: str) -> list[str]:
        return sorted(r["case_id"] for r in compared if (r[key] or 0) > CLAIM_THRESHOLD)

    summary = {"rows_done": len(compared) + len(skipped), "compared": len(compared), "skipped": len(skipped),
               "published_plan_infeasible": sorted(r["case_id"] for r in compared if not r["published_fits"]),
               "free_claims_over_25pct": claims("free_gain"),
               "same_techniques_claims_over_25pct": claims("same_techniques_gain"),
               "seconds": time.perf_counter() - started}
    out.write_text(json.dumps({"summary": summary, "cases": compared, "skipped": skipped},
                                            indent=2) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--published", action="store_true", help="compare with the published expert plans")
    parser.add_argument("--workers", type=int, default=0, help="prediction processes (0 = auto)")
    parser.add_argument("--cases", default="", help="with --published: only these case ids (comma-separated)")
    parser.add_argument("--out", type=Path, default=PUBLISHED_RESULTS, help="with --published: output file")
    args = parser.parse_args()
    if args.published:
        published(args.workers, {c.strip() for c in args.cases.split(",") if c.strip()}, args.out)
        return
    rows = []
    for case in CASES:
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu, payload = run_process(case)
            walls.append(wall)
            cpus.append(cpu)
        inproc = run_in_process(case)
        best = payload["plans"][0]
        row = {**case, "wall_s_best": min(walls), "wall_s_all": walls, "process_cpu_s_best": min(cpus), **inproc,
               "winner": best["plan"], "winner_ep": best["plan"]["ep"], "winner_step_time_s": best["step_time_s"],
               "winner_p90_s": best["predicted_p90_s"], "winner_mfu": best["mfu"],
               "runner_up": payload["plans"][1]["plan"] if len(payload["plans"]) > 1 else None,
               "rejected": payload["rejected"]}
        rows.append(row)
        target = f" (target {case['target_wall_s']} s)" if case["target_wall_s"] else ""
        print(f"{case['name']}: wall {min(walls):.2f} s best of {args.repeats}{target}, CPU {min(cpus):.2f} s "
              f"(process + workers); serial search {inproc['search_s']:.2f} s wall, "
              f"{inproc['search_cpu_s_serial']:.2f} s CPU; {inproc['evaluated']:,} plans "
              f"({inproc['plans_per_cpu_s']:,.0f}/CPU-s), {inproc['predicted']:,} predicted "
              f"({inproc['predictions_per_cpu_s']:,.0f}/CPU-s), "
              f"{inproc['feasible']:,} feasible; winner ep {best['plan']['ep']} step {best['step_time_s']:.3f} s "
              f"(p90 {best['predicted_p90_s']:.3f} s) MFU {best['mfu']:.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    RESULTS.write_text(json.dumps({"benchmark": "planner", "machine": platform.platform(),
                                   "cpus": os.cpu_count(), "load_avg_1m": load,
                                   "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": rows},
                                  indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
