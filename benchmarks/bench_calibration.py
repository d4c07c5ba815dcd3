"""Predicted vs measured step time after `bastion calibrate --quick`, on this machine.

1. `bastion calibrate --quick` writes a machine profile (benchmarks/results/calibration_profile.toml);
2. each plan family of the equivalence suite (dp, ZeRO-3, tp+sp, pipeline schedules 1F1B and interleaved 1F1B,
   cp, hybrid pp × dp) and the `make run` demo's plan (pp × dp zero-bubble on `tiny`) trains `tiny` and `small`
   for a few steps with `bastion train --cluster cpu:N@PROFILE`;
3. the run's summary.json holds the measured median step (steps after the first) and the profile's prediction
   with its p10-p90 interval; the datasheet prediction (plain `cpu:N`) is computed alongside;
4. each plan runs `--repeats` times: the table gives the median of the runs' step times and their spread (half
   the range, relative to the median), and the host's 1-minute load average before and after every run; a run
   during whose steps other processes' threads (not the run's: its front process and every descendant, gloo
   threads included; not this script's) were runnable on average OTHER_LOAD_LIMIT or more is marked `loaded`
   (another job shared the cores: its step time says more about that job than about the prediction). The load average is recorded but not judged: it lags a minute and counts
   the benchmark's own ranks, of this run and the one before. The table goes to benchmarks/results/calibration.json.

Nothing here is fitted to the measured step times: the profile comes from microbenchmarks only.

    .venv/bin/python benchmarks/bench_calibration.py [--quick] [--only tiny] [--plans dp,zero3] [--repeats 3]
                                                     [--profile EXISTING.toml]

`--quick` (tiny only, 3 repeats) takes about 11 minutes on an idle 2-core host; `small` with one repeat against
the profile that wrote (`--only small --repeats 1 --profile benchmarks/results/calibration_profile.toml --out
benchmarks/results/calibration_small.json`) about 5 more.
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
    # a second schedule, with two chunks per rank (the demo's plan runs a third, zero-bubble, with dp)
    "pp-interleaved": dict(pp=2, pp_schedule="interleaved-1f1b", vpp=2, micro_batch=2, **FP32),
    "cp": dict(cp=2, dp=2, micro_batch=2, **FP32),
    "hybrid-pp-dp": dict(pp=2, dp=2, pp_schedule="1f1b", micro_batch=2, **FP32),
}
STEPS = {"tiny": 6, "small": 4}
SEQ = {"tiny": 64, "small": 256}
CORES = os.cpu_count() or 1
#: other processes runnable on average while a run's steps ran, at or above which the run is marked loaded (half
#: a core's worth of other work)
OTHER_LOAD_LIMIT = 0.5


def other_runnable(run_pid: int, proc_root: Path = Path("/proc")) -> int:
    """One pass over /proc: the threads runnable now (state R) of every process that is neither the run's (the
    front process `run_pid` and its descendants: torchrun's agent, the workers and their gloo threads) nor this
    script. Counted per thread, in one pass, rather than /proc/loadavg less the run's threads read a moment
    later: a worker's runnable gloo threads changed between the two reads and were taken for other load."""
    parent: dict[int, int] = {}
    states: dict[int, list[str]] = {}
    for stat in proc_root.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parent[pid] = int(fields[1])
            states[pid] = [t.read_text().rsplit(")", 1)[1].split()[0] for t in (stat.parent / "task").glob("*/stat")]
        except (OSError, IndexError, ValueError):
            continue
    ours = {os.getpid(), run_pid}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    return sum(state == "R" for pid, threads in states.items() if pid not in ours for state in threads)


def _bastion(*args: str, run_dir: Path | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the CLI; with `run_dir` (a training run), also sample every 0.2 s, once its first step is recorded:
    the host's runnable threads other than the run's and this script's (`other_runnable`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "bastion", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    samples: dict = {"runnable": []}

    def sample() -> None:
        metrics = run_dir / "metrics.jsonl" if run_dir else None
        while proc.poll() is None:
            if metrics is not None and metrics.exists():
                samples["runnable"].append(other_runnable(proc.pid))
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
    """The step time predicted for `cluster` as `bastion train` predicts its runs (the `bastion` software stack);
    with `background_load`, as if the profile had measured that much other load on the host."""
    from dataclasses import replace

    from bastion.predict import estimate
    from bastion.predict.software import software_stack
    from bastion.rundir.predicted import RUNTIME_STACKS
    from bastion.specs import ParallelPlan, load_cluster, load_model

    target = load_cluster(cluster)
    if background_load is not None:
        target = replace(target, accelerator=replace(target.accelerator, background_load=background_load))
    return estimate(load_model(model), target, ParallelPlan.from_dict(plan),
                    options=software_stack(RUNTIME_STACKS[False]).options).step_time_s


#: the GEMM the host-speed probe times before every run: one the profile also measured ([raw] gemm_m_k_n_s)
DRIFT_GEMM = (512, 512, 512)
DRIFT_PROBE = ("import sys, json, torch; torch.set_num_threads(1); sys.path.insert(0, {src!r}); "
               "from bastion.runtime import calibrate as c; "
               "print(json.dumps(c.measure_gemms([{shape!r}], 0.5)[0][-1]))")


def _host_drift(profile: Path) -> dict:
    """How fast this host runs the profile's own one-thread GEMM right now, against the profile's time for it
    (runtime/calibrate.py measure_gemms, in a child process): above 1 the host is slower than when it was
    profiled, so a run's error splits into the host's drift and the model's."""
    import tomllib

    done = subprocess.run([sys.executable, "-c", DRIFT_PROBE.format(src=str(ROOT / "src"), shape=DRIFT_GEMM)],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return {"host_gemm_error": done.stderr[-300:]}
    now = float(done.stdout.strip().splitlines()[-1])
    raw = tomllib.loads(profile.read_text()).get("raw", {}).get("gemm_m_k_n_s", [])
    then = next((row[-1] for row in raw if tuple(row[:3]) == DRIFT_GEMM), None)
    return {"host_gemm_s": now, "profile_gemm_s": then, "host_drift": now / then if then else None}


def _run(model: str, name: str, plan: dict, profile: Path, data: Path, work: Path, repeat: int = 0) -> dict:
    world = _world(plan)
    drift = _host_drift(profile)
    plan_file = work / f"{model}-{name}.json"
    plan_file.write_text(json.dumps(plan))
    run_dir = work / f"run-{model}-{name}-{repeat}"
    load_before = os.getloadavg()[0]
    started = time.time()
    cluster = f"cpu:{world}@{profile}"
    done, samples = _bastion("train", "--model", model, "--plan", str(plan_file), "--data", str(data), "--steps",
                             str(STEPS[model]), "--run-dir", str(run_dir), "--nproc", str(world), "--no-progress",
                             "--cluster", cluster, run_dir=run_dir)
    # runnable processes besides the run's own ranks and the sampler while the steps ran
    runnable = samples["runnable"]
    background = statistics.fmean(runnable) if runnable else None
    load_after = os.getloadavg()[0]
    row = {"model": model, "plan": name, "processes": world, "plan_fields": plan, "wall_s": time.time() - started,
           "load_avg_1m_before": load_before, "load_avg_1m_after": load_after,
           "loaded": background is None or background >= OTHER_LOAD_LIMIT, "background_load_during_steps": background,
           **drift}
    summary_file = run_dir / "summary.json"
    if done.returncode != 0 or not summary_file.exists():
        row["error"] = (done.stderr or done.stdout)[-600:]
        return row
    summary = json.loads(summary_file.read_text())
    measured = summary["measured"]["step_time_s"] if "measured" in summary else summary.get("step_time_s")
    predicted = summary["predicted"]["step_time_s"]
    row.update(measured_s=measured, predicted_s=predicted, ratio=predicted / measured,
               interval_s=[summary["predicted"].get("step_time_p10_s"), summary["predicted"].get("step_time_p90_s")],
               rates=summary["predicted"].get("rates"), datasheet_s=_prediction(model, plan, f"cpu:{world}"),
               sections_s=_sections(run_dir), cpu_sections_s=_sections(run_dir, "rank_cpu_sections_s"))
    if row["cpu_sections_s"].get("step"):
        # CPU seconds per step per rank (the trainer's own per-section CPU time, whatever else the host ran): the
        # profile's prediction on whole cores (core share 1) against what the ranks used, on average
        row["measured_cpu_s_per_rank"] = statistics.fmean(row["cpu_sections_s"]["step"])
        row["predicted_cpu_s_per_rank"] = _prediction(model, plan, cluster, background_load=CORES - world)
        if row["measured_cpu_s_per_rank"] > 0:
            row["ratio_cpu"] = row["predicted_cpu_s_per_rank"] / row["measured_cpu_s_per_rank"]
    if background is not None:
        # the same profile with the load the run itself competed with (a measurement of the host, not a fit)
        row["predicted_run_load_s"] = _prediction(model, plan, cluster, background)
        row["ratio_run_load"] = row["predicted_run_load_s"] / measured
    return row


def _sections(run_dir: Path, key: str = "rank_sections_s") -> dict[str, list[float]]:
    """Each rank's median section times over the steps after the first (runtime/stragglers.py SECTIONS:
    forward_backward, optimizer, sync_wait, step), wall (`rank_sections_s`) or CPU (`rank_cpu_sections_s`):
    within one run their ratios say which part of the step a prediction misses, whatever the host's load did to
    the whole; the CPU seconds say how much of a section a rank computed rather than waited."""
    from bastion.rundir.metrics import read_records

    steps = [r[key] for r in read_records(run_dir) if key in r][1:]
    if not steps:
        return {}
    return {name: [statistics.median(s[name][rank] for s in steps) for rank in range(len(steps[0][name]))]
            for name in steps[0]}


def _plan_row(runs: list[dict]) -> dict:
    """One plan's repeats: the median measured step, its spread, the prediction against the median."""
    first = runs[0]
    row = {k: first[k] for k in ("model", "plan", "processes", "plan_fields")}
    done = [r for r in runs if "measured_s" in r]
    row["runs"] = runs
    row["loaded_runs"] = sum(r["loaded"] for r in runs)
    row["loaded"] = row["loaded_runs"] > 0
    if not done:
        row["error"] = runs[-1].get("error", "no run finished")
        return row
    measured = [r["measured_s"] for r in done]
    median = statistics.median(measured)
    predicted = done[0]["predicted_s"]
    row.update(measured_median_s=median, measured_spread=(max(measured) - min(measured)) / 2 / median,
               repeats=len(done), predicted_s=predicted, ratio=predicted / median, datasheet_s=done[0]["datasheet_s"],
               interval_s=done[0]["interval_s"], rates=done[0]["rates"])
    low, high = row["interval_s"]
    row["within_interval"] = low is not None and high is not None and low <= median <= high
    for key in ("ratio_cpu", "ratio_run_load"):
        values = [r[key] for r in done if key in r]
        if values:
            row[f"{key}_median"] = statistics.median(values)
    return row


def _table(rows: list[dict]) -> str:
    lines = [f"{'model':6} {'plan':14} {'procs':>5} {'measured':>9} {'spread':>7} {'profile':>9} {'ratio':>6} "
             f"{'p10-p90':>15} {'datasheet':>9} {'cpu ratio':>9} {'at run load':>11} {'load before/after':>17}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:6} {r['plan']:14} {r['processes']:5d}  failed: {r['error'][-120:]!r}")
            continue
        low, high = r["interval_s"]
        interval = f"{low:.3f}-{high:.3f}" if low is not None and high is not None else "-"
        loads = " ".join(f"{run['load_avg_1m_before']:.1f}/{run['load_avg_1m_after']:.1f}" for run in r["runs"])
        cpu = f"{r['ratio_cpu_median']:9.2f}" if "ratio_cpu_median" in r else f"{'-':>9}"
        cpu += f" {r['ratio_run_load_median']:11.2f}" if "ratio_run_load_median" in r else f" {'-':>11}"
        lines.append(f"{r['model']:6} {r['plan']:14} {r['processes']:5d} {r['measured_median_s']:9.3f} "
                     f"{r['measured_spread']:7.1%} {r['predicted_s']:9.3f} {r['ratio']:6.2f} {interval:>15} "
                     f"{r['datasheet_s']:9.3f} {cpu} {loads:>17}" + ("  LOADED" if r["loaded"] else ""))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny only: about 11 minutes on an idle 2-core host")
    parser.add_argument("--only", default=None, help="models, comma-separated (default tiny,small; --quick tiny)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each plan (the median is reported)")
    parser.add_argument("--plans", default="", help="plan names, comma-separated (default: all + demo)")
    parser.add_argument("--profile", type=Path, help="use this profile instead of calibrating")
    parser.add_argument("--out", type=Path, help="results file (default calibration.json; with --repredict "
                                                 "calibration_repredicted.json, never the table it reads)")
    parser.add_argument("--repredict", type=Path, metavar="RESULTS.json",
                        help="run nothing: predict a recorded table's plans again with today's predictor and the "
                             "profile (a model change judged against the same measurements); prints, writes --out")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    profile = args.profile or RESULTS / "calibration_profile.toml"
    if args.repredict:
        return _repredict(args.repredict, profile.resolve(), args.out or RESULTS / "calibration_repredicted.json")
    args.out = args.out or RESULTS / "calibration.json"
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
        models = args.only or ("tiny" if args.quick else "tiny,small")
        for model in [m for m in models.split(",") if m]:
            plans = {**FAMILIES, "demo": _demo_plan(model)}
            wanted = [p for p in args.plans.split(",") if p] or list(plans)
            for name in wanted:
                runs = [_run(model, name, plans[name], profile, data, work, i) for i in range(args.repeats)]
                rows.append(_plan_row(runs))
                print(_table([rows[-1]]).splitlines()[-1], flush=True)
    within = [r for r in rows if "ratio" in r and abs(r["ratio"] - 1) <= 0.10]
    quiet = [r for r in rows if "ratio" in r and not r["loaded"]]
    result = {"machine": {"host": socket.gethostname(), "platform": platform.platform(), "cpus": CORES},
              "profile": str(profile.relative_to(ROOT)) if profile.is_relative_to(ROOT) else str(profile),
              "profile_load_average_1m": _profile_load(profile),
              "calibrate_s": calibrate_s, "repeats": args.repeats, "rows": rows,
              "within_10pct": f"{len(within)} of {len(rows)}",
              "within_10pct_unloaded": f"{sum(abs(r['ratio'] - 1) <= 0.10 for r in quiet)} of {len(quiet)} plans "
                                       "with no loaded run",
              "within_interval": f"{sum(r.get('within_interval', False) for r in rows)} of {len(rows)}",
              "note": "measured = the median over the repeats of each run's median step time after the first step "
                      "(summary.json); spread = half their range / that median; profile = the prediction with "
                      "--cluster cpu:N@PROFILE, p10-p90 its interval; datasheet = plain cpu:N; cpu ratio = the "
                      "profile's prediction on whole cores / the ranks' CPU seconds per step (the trainer's own, "
                      "mean over ranks); at run load = the profile's prediction with its background_load replaced by the runnable threads counted "
                      "while the run's steps ran, not the run's own (its process tree) nor the sampler's, / measured; "
                      f"loaded = those other runnable processes averaged {OTHER_LOAD_LIMIT} or more (the 1-minute "
                      "load average, which lags and counts the benchmark's own ranks, is recorded, not judged); "
                      "host_drift = the profile's own one-thread GEMM timed right before the run / the profile's "
                      "time for it (above 1: the host is slower now than when profiled)."}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(rows))
    print(f"within 10%: {result['within_10pct']} ({result['within_10pct_unloaded']}); measured inside the "
          f"predicted p10-p90: {result['within_interval']}")
    return 0


def _repredict(recorded: Path, profile: Path, out: Path) -> int:
    """Every row of a recorded table predicted again (same profile, same measured medians): what a change of the
    predictor did, free of the noise a new run on a shared host would add."""
    sys.path.insert(0, str(ROOT / "src"))
    table = json.loads(recorded.read_text())
    rows = []
    for row in table["rows"]:
        if "measured_median_s" not in row:
            continue
        cluster = f"cpu:{row['processes']}@{profile}"
        predicted = _prediction(row["model"], row["plan_fields"], cluster)
        rows.append({"model": row["model"], "plan": row["plan"], "processes": row["processes"],
                     "loaded": row["loaded"], "measured_median_s": row["measured_median_s"],
                     "recorded_predicted_s": row["predicted_s"], "recorded_ratio": row["ratio"],
                     "predicted_s": predicted, "ratio": predicted / row["measured_median_s"]})
        print(f"{row['model']:6} {row['plan']:14} measured {row['measured_median_s']:.4f}  recorded prediction "
              f"{row['predicted_s']:.4f} ({row['ratio']:.2f}x)  now {predicted:.4f} ({predicted / row['measured_median_s']:.2f}x)"
              + ("  LOADED" if row["loaded"] else ""))
    within = sum(abs(r["ratio"] - 1) <= 0.10 for r in rows)
    recorded_within = sum(abs(r["recorded_ratio"] - 1) <= 0.10 for r in rows)
    recorded = recorded.resolve()
    result = {"recorded": str(recorded.relative_to(ROOT)) if recorded.is_relative_to(ROOT) else str(recorded),
              "profile": str(profile.relative_to(ROOT)) if profile.is_relative_to(ROOT) else str(profile),
              "rows": rows, "within_10pct": f"{within} of {len(rows)}",
              "recorded_within_10pct": f"{recorded_within} of {len(rows)}",
              "note": "the recorded table's measured medians and loaded flags (its own definition of loaded), "
                      "predicted again with this checkout's predictor and the profile; nothing was run"}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"within 10%: {result['within_10pct']} now, {result['recorded_within_10pct']} as recorded")
    return 0


def _profile_load(profile: Path) -> float | None:
    """The load average the profile recorded while calibrating (a loaded host measures a background load)."""
    import tomllib

    return tomllib.loads(profile.read_text()).get("machine", {}).get("load_average_1m")


if __name__ == "__main__":
    sys.exit(main())
