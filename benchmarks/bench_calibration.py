"""Predicted vs measured step time after `bastion calibrate --quick`, on this machine.

1. `bastion calibrate --quick` writes a machine profile (benchmarks/results/calibration_profile.toml);
2. each plan family of the equivalence suite (dp, ZeRO-3, tp+sp, a pipeline schedule, cp, hybrid) and the
   `make run` demo's plan trains `tiny` and `small` for a few steps with `bastion train --cluster cpu:N@PROFILE`;
3. the run's summary.json holds the measured median step (steps after the first) and the profile's prediction;
   the datasheet prediction (plain `cpu:N`) is computed alongside. The table goes to
   benchmarks/results/calibration.json and is printed.

Nothing here is fitted to the measured step times: the profile comes from microbenchmarks only.

    .venv/bin/python benchmarks/bench_calibration.py [--only tiny] [--plans dp,zero3] [--profile EXISTING.toml]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FP32 = {"precision": "fp32", "global_batch": 8}
#: plan families of tests/dist/test_equivalence.py (and test_context_parallel.py), 2 or 4 processes
FAMILIES = {
    "dp": dict(dp=4, zero_stage=0, micro_batch=1, **FP32),
    "zero3": dict(dp=4, zero_stage=3, micro_batch=1, **FP32),
    "tp-sp": dict(dp=2, tp=2, sequence_parallel=True, zero_stage=3, micro_batch=2, **FP32),
    "pp-1f1b": dict(pp=2, pp_schedule="1f1b", micro_batch=2, **FP32),
    "cp": dict(cp=2, dp=2, micro_batch=2, **FP32),
    "hybrid-pp-dp": dict(pp=2, dp=2, pp_schedule="1f1b", micro_batch=2, **FP32),
}
STEPS = {"tiny": 6, "small": 3}
SEQ = {"tiny": 64, "small": 256}


def _worker_cpu_s(run_dir: Path) -> dict[int, float]:
    """CPU seconds (user + system) each of the run's worker processes has used so far, by pid."""
    used = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_text()
            if "_worker" in text and str(run_dir) in text and "local_agent" not in text:
                fields = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()
                used[int(cmdline.parent.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return used


def _bastion(*args: str, run_dir: Path | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the CLI; with `run_dir` (a training run), also sample every 0.2 s, once its first step is recorded:
    the host's runnable processes (/proc/loadavg), and the workers' CPU time at each newly recorded step."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "bastion", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    samples: dict = {"runnable": [], "steps": []}  # steps: (records, wall, {worker pid: CPU s})

    def sample() -> None:
        metrics = run_dir / "metrics.jsonl" if run_dir else None
        while proc.poll() is None:
            if metrics is not None and metrics.exists():
                samples["runnable"].append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]))
                steps = metrics.read_text().count('"step_time_s"')
                if not samples["steps"] or steps > samples["steps"][-1][0]:
                    samples["steps"].append((steps, time.perf_counter(), _worker_cpu_s(run_dir)))
            time.sleep(0.2)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), samples


def _demo_plan(model: str) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from bastion.commands.demo_cmds import choose_plan

    plan, _ = choose_plan(model, 4, 8, SEQ[model])
    return plan.to_dict()


def _world(plan: dict) -> int:
    return plan.get("dp", 1) * plan.get("tp", 1) * plan.get("pp", 1) * plan.get("cp", 1)


def _prediction(model: str, plan: dict, cluster: str, background_load: float | None = None) -> float:
    """The step time predicted for `cluster`; with `background_load`, as if the profile had measured that much
    other load on the host."""
    from dataclasses import replace

    from bastion.predict import estimate
    from bastion.specs import ParallelPlan, load_cluster, load_model

    target = load_cluster(cluster)
    if background_load is not None:
        target = replace(target, accelerator=replace(target.accelerator, background_load=background_load))
    return estimate(load_model(model), target, ParallelPlan.from_dict(plan)).step_time_s


def _run(model: str, name: str, plan: dict, profile: Path, data: Path, work: Path) -> dict:
    world = _world(plan)
    plan_file = work / f"{model}-{name}.json"
    plan_file.write_text(json.dumps(plan))
    run_dir = work / f"run-{model}-{name}"
    started = time.time()
    cluster = f"cpu:{world}@{profile}"
    done, samples = _bastion("train", "--model", model, "--plan", str(plan_file), "--data", str(data), "--steps",
                             str(STEPS[model]), "--run-dir", str(run_dir), "--nproc", str(world), "--no-progress",
                             "--cluster", cluster, run_dir=run_dir)
    # runnable processes besides the ranks and the sampler while the steps ran
    runnable = samples["runnable"]
    background = max(0.0, statistics.fmean(runnable) - world - 1) if runnable else None
    # the samples taken while every worker of the first sample still ran (they exit at the end)
    steps = [st for st in samples["steps"] if samples["steps"] and st[2] and set(samples["steps"][0][2]) <= set(st[2])]
    row = {"model": model, "plan": name, "processes": world, "plan_fields": plan, "wall_s": time.time() - started,
           "load_avg_1m": os.getloadavg()[0], "background_load_during_steps": background}
    summary_file = run_dir / "summary.json"
    if done.returncode != 0 or not summary_file.exists():
        row["error"] = (done.stderr or done.stdout)[-600:]
        return row
    summary = json.loads(summary_file.read_text())
    measured = summary["measured"]["step_time_s"] if "measured" in summary else summary.get("step_time_s")
    predicted = summary["predicted"]["step_time_s"]
    row.update(measured_s=measured, predicted_s=predicted, ratio=predicted / measured,
               datasheet_s=_prediction(model, plan, f"cpu:{world}"))
    if len(steps) >= 2 and steps[-1][0] > steps[0][0]:
        # CPU seconds per step per rank, whatever else the host ran: the profile's prediction on whole cores
        # (core share 1) against what the ranks used between the first and the last sampled step
        (n0, _, cpu0), (n1, _, cpu1) = steps[0], steps[-1]
        ranks = [pid for pid in cpu0 if pid in cpu1]
        row["measured_cpu_s_per_rank"] = sum(cpu1[p] - cpu0[p] for p in ranks) / (n1 - n0) / max(len(ranks), 1)
        row["predicted_cpu_s_per_rank"] = _prediction(model, plan, cluster, background_load=2.0 - world)
        if row["measured_cpu_s_per_rank"] > 0:
            row["ratio_cpu"] = row["predicted_cpu_s_per_rank"] / row["measured_cpu_s_per_rank"]
    if background is not None:
        # the same profile with the load the run itself competed with (a measurement of the host, not a fit)
        row["predicted_run_load_s"] = _prediction(model, plan, cluster, background)
        row["ratio_run_load"] = row["predicted_run_load_s"] / measured
    return row


def _table(rows: list[dict]) -> str:
    lines = [f"{'model':6} {'plan':14} {'procs':>5} {'measured':>9} {'profile':>9} {'ratio':>6} {'datasheet':>9} "
             f"{'bg load':>7} {'at run load':>11} {'ratio':>6} {'cpu meas':>8} {'cpu pred':>8} {'ratio':>6}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:6} {r['plan']:14} {r['processes']:5d}  failed: {r['error'][-120:]!r}")
            continue
        run_load = (f"{r['background_load_during_steps']:7.1f} {r['predicted_run_load_s']:11.3f} "
                    f"{r['ratio_run_load']:6.2f}") if "ratio_run_load" in r else ""
        if "ratio_cpu" in r:
            run_load += (f" {r['measured_cpu_s_per_rank']:8.3f} {r['predicted_cpu_s_per_rank']:8.3f} "
                         f"{r['ratio_cpu']:6.2f}")
        lines.append(f"{r['model']:6} {r['plan']:14} {r['processes']:5d} {r['measured_s']:9.3f} "
                     f"{r['predicted_s']:9.3f} {r['ratio']:6.2f} {r['datasheet_s']:9.3f} {run_load}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="tiny,small", help="models, comma-separated")
    parser.add_argument("--plans", default="", help="plan names, comma-separated (default: all + demo)")
    parser.add_argument("--profile", type=Path, help="use this profile instead of calibrating")
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration.json", help="results file")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    profile = args.profile or RESULTS / "calibration_profile.toml"
    calibrate_s = None
    if args.profile is None:
        started = time.time()
        done, _ = _bastion("calibrate", "--quick", "--no-progress", "--out", str(profile))
        calibrate_s = time.time() - started
        print(done.stdout.strip() or done.stderr[-2000:])
        if done.returncode != 0:
            return done.returncode
    profile = profile.resolve()
    sys.path.insert(0, str(ROOT / "src"))
    from bastion.commands.demo_cmds import _stdlib_corpus

    rows = []
    with tempfile.TemporaryDirectory(prefix="bastion-bench-calibration-") as tmp:
        work = Path(tmp)
        data = work / "data"
        _stdlib_corpus(data, 1_000_000)
        for model in [m for m in args.only.split(",") if m]:
            plans = {**FAMILIES, "demo": _demo_plan(model)}
            wanted = [p for p in args.plans.split(",") if p] or list(plans)
            for name in wanted:
                row = _run(model, name, plans[name], profile, data, work)
                rows.append(row)
                print(_table([row]).splitlines()[-1], flush=True)
    within = [r for r in rows if "ratio" in r and abs(r["ratio"] - 1) <= 0.10]
    within_run_load = [r for r in rows if "ratio_run_load" in r and abs(r["ratio_run_load"] - 1) <= 0.10]
    result = {"machine": {"host": socket.gethostname(), "platform": platform.platform(),
                          "cpus": os.cpu_count()},
              "profile": str(profile.relative_to(ROOT)) if profile.is_relative_to(ROOT) else str(profile),
              "calibrate_s": calibrate_s, "rows": rows,
              "within_10pct": f"{len(within)} of {len(rows)}",
              "within_10pct_at_run_load": f"{len(within_run_load)} of {len(rows)}",
              "note": "measured = median step time after the first step (summary.json); profile = the "
                      "prediction with --cluster cpu:N@PROFILE; datasheet = plain cpu:N; at run load = the "
                      "profile with its background_load replaced by the runnable processes counted (/proc/loadavg) "
                      "while the run's steps ran, less its own ranks."}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(rows))
    print(f"within 10%: {result['within_10pct']} (at the run's own background load: "
          f"{result['within_10pct_at_run_load']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
