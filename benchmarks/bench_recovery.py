"""Recovery time and goodput under injected faults, through `bastion train` itself (torchrun, gloo, CPU).

1. kill → next completed step: a DP2 (FSDP) run of the `small` model loses rank 1 at step 7; torchrun's agent
   restarts both workers, which resume from the newest checkpoint. Measured from the fault's record to the first
   step completed afterwards, split into detection + restart + reload (until the restart record) and the step.
2. goodput: the `tiny` model for 200 steps with three faults (a kill, a hang caught by the watchdog, a NaN rolled
   back), checkpoint interval chosen by `--checkpoint-every auto` for a short MTBF, and where the time went.

    .venv/bin/python benchmarks/bench_recovery.py [--steps 200] [--out benchmarks/results/recovery.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAN = {"dp": 2, "zero_stage": 3, "micro_batch": 2, "global_batch": 4, "precision": "fp32"}


def bastion(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"bastion {' '.join(args[:1])} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


def records(run_dir: Path) -> list[dict]:
    from bastion.rundir.metrics import read_metrics

    return read_metrics(run_dir).records


def train(root: Path, name: str, data: Path, model: str, steps: int, *extra: str) -> tuple[Path, float]:
    plan = root / "plan.json"
    plan.write_text(json.dumps(PLAN))
    run_dir = root / name
    start = time.time()
    bastion("train", "--model", model, "--plan", str(plan), "--data", str(data), "--steps", str(steps),
            "--run-dir", str(run_dir), "--nproc", "2", "--no-progress", *extra)
    return run_dir, time.time() - start


def kill_to_next_step(root: Path, data: Path, model: str) -> dict:
    run_dir, wall = train(root, "kill", data, model, 12, "--checkpoint-every", "4", "--sync-checkpoint",
                          "--max-restarts", "2", "--inject", "kill:rank=1,step=7")
    recs = records(run_dir)
    fault = next(r for r in recs if r.get("event") == "fault")
    restart = next(r for r in recs if r.get("event") == "restart")
    after = next(r for r in recs if "event" not in r and r["time"] > restart["time"])
    return {"model": model, "fault_step": fault["step"], "resumed_from_step": restart["resumed_from_step"],
            "kill_to_next_completed_step_s": after["time"] - fault["time"],
            "kill_to_restarted_and_resumed_s": restart["time"] - fault["time"],
            "first_step_after_resume_s": after["step_time_s"], "target_s": 30.0, "run_wall_s": wall}


def goodput_run(root: Path, data: Path, model: str, steps: int) -> dict:
    kill, hang, nan = steps * 3 // 10, steps * 11 // 20, steps * 4 // 5
    run_dir, wall = train(root, "goodput", data, model, steps, "--checkpoint-every", "auto",
                          "--mtbf-hours", "0.05", "--max-restarts", "4", "--hang-timeout-s", "5",
                          "--inject", f"kill:rank=1,step={kill}", "--inject", f"hang:rank=0,step={hang}",
                          "--inject", f"nan:step={nan}")
    from bastion.rundir.summary import read_summary

    summary = read_summary(run_dir)
    recs = records(run_dir)
    interval = next((r for r in recs if r.get("event") == "checkpoint_interval"), {})
    return {"model": model, "steps": summary["steps"], "faults": [kill, hang, nan],
            "restarts": summary["restarts"], "rollbacks": summary["rollbacks"],
            "lost_steps": summary["lost_steps"], "recovery_s": summary["recovery_s"],
            "checkpoint_stall_s": summary["checkpoint_stall_s"], "goodput": summary["goodput"],
            "time_breakdown_s": summary["time_breakdown_s"], "auto_interval": interval.get("why"),
            "checkpoints_saved": sum(1 for r in recs if r.get("event") == "checkpoint"), "run_wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", help="model of the kill → next step measurement")
    parser.add_argument("--goodput-model", default="tiny",
                        help="model of the 200-step run (`small` takes ~5 s a step here: too long for a benchmark)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recovery.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bastion-bench-recovery-"))
    try:
        data = root / "data"
        bastion("data", "prepare", str(Path(json.__file__).parent), "--out", str(data))
        results = {"plan": PLAN, "kill": kill_to_next_step(root, data, args.model),
                   "goodput": goodput_run(root, data, args.goodput_model, args.steps),
                   "machine": {"cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    k, g = results["kill"], results["goodput"]
    print(f"kill at step {k['fault_step']} → next completed step after {k['kill_to_next_completed_step_s']:.1f} s "
          f"(restart + resume from step {k['resumed_from_step']}: {k['kill_to_restarted_and_resumed_s']:.1f} s; "
          f"target <= 30 s)")
    print(f"{g['steps']} steps with faults at {g['faults']}: goodput {g['goodput']:.1%}, {g['restarts']} restarts, "
          f"{g['rollbacks']} rollback, {g['lost_steps']} lost steps, recovery {g['recovery_s']:.1f} s, "
          f"checkpoint stall {g['checkpoint_stall_s']:.1f} s")
    print("where the time went: " + ", ".join(f"{k} {v:.1f}" for k, v in g["time_breakdown_s"].items()
                                             if k.endswith("_s")))
    if g["auto_interval"]:
        print(f"auto interval: {g['auto_interval']}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
