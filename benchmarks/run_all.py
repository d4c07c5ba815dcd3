"""Run every benchmark script (what `make bench` does); each prints its figures and writes JSON to results/.

GPU scripts (gpu_1p5b.py, bench_predict_device.py) run only where CUDA is available; elsewhere they are listed
as skipped with the reason. The slow planner-vs-published comparison runs only with --all.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
CPU_BENCHMARKS = [
    ["bench_predict.py"],
    ["bench_holdout.py"],
    ["bench_planner.py"],
    ["bench_overhead.py"],
    ["bench_checkpoint.py"],
    ["bench_recovery.py"],
    ["bench_shrink.py"],
    ["bench_policy_goodput.py"],
    ["bench_sim.py"],
    ["bench_equivalence.py"],
]
SLOW_BENCHMARKS = [["bench_planner.py", "--published"]]
GPU_BENCHMARKS = [["gpu_1p5b.py"], ["bench_predict_device.py", "--out", str(HERE / "results" / "predict_device.json")]]


def cuda_available() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--all", action="store_true", help="also the slow planner-vs-published comparison")
    args = parser.parse_args()
    runs = CPU_BENCHMARKS + (SLOW_BENCHMARKS if args.all else [])
    if cuda_available():
        runs += GPU_BENCHMARKS
    else:
        print("skipped (no CUDA device here): " + ", ".join(cmd[0] for cmd in GPU_BENCHMARKS))
    failed = []
    for cmd in runs:
        print(f"\n=== {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]])
        print(f"=== {cmd[0]}: exit {proc.returncode} after {time.perf_counter() - start:.0f} s", flush=True)
        if proc.returncode:
            failed.append(cmd[0])
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
