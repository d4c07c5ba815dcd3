"""Planner speed: wall time of the whole `bastion plan` process and plans evaluated per second.

Cases: llama3-405b on 16,384 H100s (global batch 2048, seq 8192 — the issue's ≤ 2 s target) and gpt3-175b on
1,024 A100-80GB (global batch 1536, seq 2048). Each case runs `bastion plan --json` as a fresh process
(best of REPEATS, since the machine is shared) and in-process (search only). Writes
benchmarks/results/planner.json.

    .venv/bin/python benchmarks/bench_planner.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "planner.json"

CASES = [
    {"name": "llama3-405b/h100-sxm:16384", "model": "llama3-405b", "cluster": "h100-sxm:16384",
     "global_batch": 2048, "seq_len": 8192, "target_wall_s": 2.0},
    {"name": "gpt3-175b/a100-80g:1024", "model": "gpt3-175b", "cluster": "a100-80g:1024",
     "global_batch": 1536, "seq_len": 2048, "target_wall_s": None},
]


def bastion_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("bastion")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bastion"]


def run_process(case: dict) -> tuple[float, dict]:
    cmd = [*bastion_cmd(), "plan", "--model", case["model"], "--cluster", case["cluster"],
           "--global-batch", str(case["global_batch"]), "--seq-len", str(case["seq_len"]), "--json"]
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return time.perf_counter() - started, json.loads(out.stdout)


def run_in_process(case: dict) -> dict:
    from bastion.planner.search import PlanRequest, search
    from bastion.specs import load_cluster, load_model

    model = load_model(case["model"], seq_len=case["seq_len"])
    request = PlanRequest(model=model, cluster=load_cluster(case["cluster"]), global_batch=case["global_batch"],
                          seq_len=case["seq_len"])
    started = time.perf_counter()
    result = search(request)
    seconds = time.perf_counter() - started
    return {"search_s": seconds, "evaluated": result.evaluated, "predicted": result.predicted,
            "feasible": result.feasible, "plans_per_s": result.evaluated / seconds,
            "predictions_per_s": result.predicted / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for case in CASES:
        walls = []
        for _ in range(args.repeats):
            wall, payload = run_process(case)
            walls.append(wall)
        inproc = run_in_process(case)
        best = payload["plans"][0]
        row = {**case, "wall_s_best": min(walls), "wall_s_all": walls, **inproc,
               "winner": best["plan"], "winner_step_time_s": best["step_time_s"], "winner_mfu": best["mfu"],
               "runner_up": payload["plans"][1]["plan"] if len(payload["plans"]) > 1 else None,
               "rejected": payload["rejected"]}
        rows.append(row)
        target = f" (target {case['target_wall_s']} s)" if case["target_wall_s"] else ""
        print(f"{case['name']}: wall {min(walls):.2f} s best of {args.repeats}{target}; search "
              f"{inproc['search_s']:.2f} s; {inproc['evaluated']:,} plans ({inproc['plans_per_s']:,.0f}/s), "
              f"{inproc['predicted']:,} predicted ({inproc['predictions_per_s']:,.0f}/s), "
              f"{inproc['feasible']:,} feasible; winner step {best['step_time_s']:.3f} s MFU {best['mfu']:.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    RESULTS.write_text(json.dumps({"benchmark": "planner", "machine": platform.platform(),
                                   "cpus": os.cpu_count(), "load_avg_1m": load,
                                   "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": rows},
                                  indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
