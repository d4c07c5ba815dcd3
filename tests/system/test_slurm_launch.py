"""System tier: `bastion launch --on slurm --submit` on a real 4-node Slurm cluster (this host).

Three 2-node × 2-worker CPU jobs of the tiny model are submitted at once:
- requeued: one of its nodes is marked DOWN after its first committed checkpoint; Slurm requeues it, it resumes
  from that checkpoint and must end with the reference's params_sha256 (bitwise the same training); this test
  comes first because it must act while the jobs run;
- reference: runs undisturbed; its metrics, summary, `bastion status` and `bastion logs` are checked;
- time limit: a 3-minute limit with `--signal-lead 40`: Slurm warns the batch script (USR1), the workers get
  SIGTERM, checkpoint and stop, the script exits with RequeueExit and the requeued job resumes from that step.
Its run directory holds a space and a quote, so sbatch's own reading of `#SBATCH --output=…` is exercised too.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_harness import SlurmCluster, wait_for

from bastion.jsonl import read_json_lines
from bastion.specs import ParallelPlan

pytestmark = [pytest.mark.system, pytest.mark.timeout(420)]

STEPS = 24
TRAIN_ARGS = ["--no-progress", "--seed", "1", "--checkpoint-every", "4"]
# FSDP (zero 3) on gloo is bitwise reproducible across interrupt + resume (../shared/PYTORCH_NOTES.md)
PLAN = ParallelPlan(dp=4, zero_stage=3, micro_batch=1, global_batch=8, precision="fp32")


def bastion(cluster: SlurmCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion", *args], env=cluster.env, capture_output=True,
                          text=True, timeout=timeout)


def submit(cluster: SlurmCluster, run_dir: Path, plan: Path, data: Path, steps: int, *more: str) -> str:
    done = bastion(cluster, "launch", "--on", "slurm", "--submit", "--model", "tiny", "--plan", str(plan),
                   "--data", str(data), "--run-dir", str(run_dir), "--steps", str(steps), "--nodes", "2",
                   "--device", "cpu", *more)
    assert done.returncode == 0, done.stderr
    match = re.search(r"submitted Slurm job (\d+)", done.stdout)
    assert match, done.stdout
    return match[1]


def records(run_dir: Path) -> list[dict]:
    return read_json_lines(run_dir / "metrics.jsonl")


def events(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in records(run_dir) if r.get("event") == kind]


def committed_steps(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*") if (p / "manifest.json").is_file())


def first_checkpoint_while_running(cluster: SlurmCluster, job_id: str, run_dir: Path, timeout: float) -> int:
    """Wait for the first committed checkpoint of the job while it still runs (no summary yet); its step."""
    def ready() -> int | None:
        steps = committed_steps(run_dir)
        running = cluster.job(job_id).get("JobState") == "RUNNING"
        return steps[0] if steps and running and not (run_dir / "summary.json").exists() else None

    return wait_for("a committed checkpoint of the running job", ready, timeout=timeout, every=0.2)


def job_nodes(cluster: SlurmCluster, job_id: str) -> list[str]:
    return cluster.run("scontrol", "show", "hostnames", cluster.job(job_id)["NodeList"]).split()


def output(run_dir: Path, job_id: str) -> str:
    path = run_dir / f"slurm-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def finished(cluster: SlurmCluster, job_id: str) -> str | None:
    state = cluster.job(job_id).get("JobState")
    return state if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") else None


@pytest.fixture(scope="module")
def jobs(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path]]:
    root = tmp_path_factory.mktemp("slurm-runs")
    rng = random.Random(0)
    words = ["the", "plan", "runs", "on", "four", "workers", "and", "resumes", "from", "its", "checkpoint", "slurm"]
    (root / "text.txt").write_text(" ".join(rng.choice(words) for _ in range(12000)))
    done = bastion(slurm_cluster, "data", "prepare", str(root / "text.txt"), "--out", str(root / "data"))
    assert done.returncode == 0, done.stderr
    plan = PLAN.save(root / "plan.json")
    data = root / "data"
    started = time.monotonic()
    # submission order = start order: two jobs fill the four 2-CPU nodes, the reference waits for a pair
    submitted = {
        # checkpoints only when told to stop: the one it writes comes from the time-limit path
        "time_limit": (root / "time limit", 100_000, ["--no-progress", "--seed", "1"]),
        "requeued": (root / "it's requeued", STEPS, TRAIN_ARGS),
        "reference": (root / "reference", STEPS, TRAIN_ARGS),
    }
    result = {}
    for name, (run_dir, steps, train_args) in submitted.items():
        # Slurm sends the warning up to 60 s before it is due: with 3 min and a 40 s lead it comes 80..140 s
        # into the job, after the workers' start-up (import torch, rendezvous) on a busy 2-core host
        more = ["--time", "00:03:00", "--signal-lead", "40"] if name == "time_limit" else []
        result[name] = (submit(slurm_cluster, run_dir, plan, data, steps, *more, "--", *train_args), run_dir)
    yield result
    print(f"\nsystem tier jobs took {time.monotonic() - started:.0f} s")


def test_node_down_requeues_and_resumes_to_the_same_parameters(slurm_cluster: SlurmCluster, jobs) -> None:
    job_id, run_dir = jobs["requeued"]
    ref_id, ref_dir = jobs["reference"]

    saved = first_checkpoint_while_running(slurm_cluster, job_id, run_dir, timeout=240)
    nodes = job_nodes(slurm_cluster, job_id)
    slurm_cluster.run("scontrol", "update", f"nodename={nodes[-1]}", "state=down", "reason=bastion-system-test")
    try:
        wait_for("Slurm to requeue the job", lambda: int(slurm_cluster.job(job_id).get("Restarts", 0)) >= 1,
                 timeout=60)
    finally:
        slurm_cluster.run("scontrol", "update", f"nodename={nodes[-1]}", "state=resume", check=False)
    state = wait_for("the requeued job to finish", lambda: finished(slurm_cluster, job_id), timeout=240)
    log = output(run_dir, job_id)
    assert state == "COMPLETED", log
    assert f"[bastion] job {job_id} start 1 on" in log

    (resume,) = events(run_dir, "resume")
    assert resume["resumed_from_step"] >= saved >= 4
    after = records(run_dir)[records(run_dir).index(resume) + 1:]
    resumed_steps = [r["step"] for r in after if "step" in r and "event" not in r]
    assert resumed_steps == list(range(resume["resumed_from_step"] + 1, STEPS + 1))

    wait_for("the reference job to finish", lambda: (ref_dir / "summary.json").exists(), timeout=240)
    reference = json.loads((ref_dir / "summary.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS
    assert summary["params_sha256"] == reference["params_sha256"]


def test_submitted_job_trains_and_reports(slurm_cluster: SlurmCluster, jobs) -> None:
    job_id, run_dir = jobs["reference"]
    state = wait_for("the reference job to finish", lambda: finished(slurm_cluster, job_id), timeout=240)
    assert state == "COMPLETED", output(run_dir, job_id)
    assert slurm_cluster.job(job_id)["Restarts"] == "0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["world_size"] == 4
    assert re.fullmatch(r"[0-9a-f]{64}", summary["params_sha256"])
    assert summary["final_loss"] < summary["losses"][0]
    steps = [r["step"] for r in records(run_dir) if "step" in r and "event" not in r]
    assert steps == list(range(1, STEPS + 1))
    assert not events(run_dir, "resume") and not events(run_dir, "restart")
    assert committed_steps(run_dir)[-1] == STEPS

    status = bastion(slurm_cluster, "status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    reported = json.loads(status.stdout)
    assert reported["job"]["state"] == "COMPLETED"
    assert reported["run"]["last_step"] == STEPS
    assert reported["run"]["summary"]["params_sha256"] == summary["params_sha256"]
    logs = bastion(slurm_cluster, "logs", job_id)
    assert logs.returncode == 0 and f"[bastion] job {job_id} start 0 on n[" in logs.stdout
    assert "[bastion] training finished" in logs.stdout


def test_time_limit_signal_checkpoints_and_requeues(slurm_cluster: SlurmCluster, jobs) -> None:
    job_id, run_dir = jobs["time_limit"]
    wait_for("Slurm's time-limit warning to reach the batch script",
             lambda: "[bastion] time limit near" in output(run_dir, job_id), timeout=240)
    (stopped,) = wait_for("the workers to record the preemption", lambda: events(run_dir, "preempted"), timeout=60)
    step = stopped["step"]
    assert step >= 1
    wait_for("the job to be requeued after its checkpoint",
             lambda: f"[bastion] job {job_id} start 1 on" in output(run_dir, job_id), timeout=90)
    assert step in committed_steps(run_dir)
    assert "[bastion] checkpointed before the time limit; requeueing (exit 42)" in output(run_dir, job_id)
    (resume,) = wait_for("the requeued job to resume", lambda: events(run_dir, "resume"), timeout=120)
    assert resume["resumed_from_step"] == step
    slurm_cluster.run("scancel", job_id)
