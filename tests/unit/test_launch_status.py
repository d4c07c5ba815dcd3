"""`bastion status` tells a final summary.json from one written at a stop (preemption, time limit) that a Slurm
requeue will resume. Run directories are built by hand; Slurm's clients are small stub scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.launch.slurm import run_dir_progress, run_outcome
from bastion.rundir.summary import summary_is_final

PYTHON = sys.executable


def make_run(run: Path, last_step: int, summary: dict | None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    lines = [{"step": s, "loss": 5.0 - s / 10} for s in range(1, last_step + 1)]
    lines.append({"event": "preempted", "step": min(last_step, 8)})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def summary(steps: int, asked: int, finished: bool | None) -> dict:
    fields = {"steps": steps, "final_loss": 4.2, "params_sha256": "ab" * 32, "config": {"steps": asked}}
    if finished is not None:
        fields["finished"] = finished
    return fields


def test_summary_finished_field_decides_and_old_summaries_compare_steps() -> None:
    assert summary_is_final(summary(20, 20, True)) and not summary_is_final(summary(8, 20, False))
    assert not summary_is_final(summary(8, 20, None))   # written before the field existed: 8 of 20 steps
    assert summary_is_final(summary(20, 20, None))
    assert summary_is_final({"steps": 2, "final_loss": 4.5})   # nothing to tell by


@pytest.mark.parametrize("state, pending, needle", [
    ("PENDING", True, "stopped at step 8 of 20, loss 4.2 (checkpointed; requeue pending)"),
    ("REQUEUED", True, "requeue pending"),
    ("RUNNING", True, "stopped at step 8 of 20, loss 4.2 (checkpointed; the job is requeueing or resuming)"),
    ("COMPLETING", True, "requeueing or resuming"),
    ("TIMEOUT", False, "job TIMEOUT: nothing will resume it"),
    ("CANCELLED", False, "job CANCELLED: nothing will resume it"),
    ("COMPLETED", False, "job COMPLETED: nothing will resume it"),
    ("SPECIAL_EXIT", None, "stopped at step 8 of 20, loss 4.2 (job state SPECIAL_EXIT)"),
])
def test_a_partial_summary_is_a_stop_not_a_finish(tmp_path: Path, state: str, pending: bool | None,
                                                   needle: str) -> None:
    progress = run_dir_progress(make_run(tmp_path / "run", 8, summary(8, 20, False)))
    outcome = run_outcome(progress, state)
    assert outcome["state"] == "stopped" and outcome["step"] == 8
    assert outcome["requeue_pending"] is pending
    assert needle in outcome["text"] and "finished" not in outcome["text"]


def test_a_job_gone_from_slurm_leaves_a_stop_that_nothing_resumes(tmp_path: Path) -> None:
    progress = run_dir_progress(make_run(tmp_path / "run", 8, summary(8, 20, False)))
    outcome = run_outcome(progress, "gone from Slurm (finished and purged)", job_known=False)
    assert outcome["state"] == "stopped" and outcome["requeue_pending"] is False
    assert "the job is gone from Slurm" in outcome["text"] and "--run-dir" in outcome["text"]


def test_a_final_summary_is_finished_whatever_the_job_state(tmp_path: Path) -> None:
    progress = run_dir_progress(make_run(tmp_path / "run", 20, summary(20, 20, True)))
    for state in ("COMPLETED", "RUNNING", "COMPLETING", ""):
        outcome = run_outcome(progress, state)
        assert outcome["state"] == "finished" and outcome["text"].startswith("finished: 20 steps, final loss 4.2")
    assert run_outcome(progress, "", job_known=False)["state"] == "finished"


def test_metrics_past_the_summary_mean_the_requeued_job_runs_again(tmp_path: Path) -> None:
    progress = run_dir_progress(make_run(tmp_path / "run", 11, summary(8, 20, False)))
    outcome = run_outcome(progress, "RUNNING")
    assert outcome["state"] == "running again" and outcome["requeue_pending"] is False
    assert outcome["text"] == "running again: stopped at step 8 of 20 earlier, now at step 11"
    # the same metrics once the job has ended: the summary on disk is still the partial one
    assert run_outcome(progress, "FAILED")["state"] == "stopped"


def test_no_summary_no_outcome(tmp_path: Path) -> None:
    progress = run_dir_progress(make_run(tmp_path / "run", 3, None))
    assert run_outcome(progress, "RUNNING") is None
    (tmp_path / "run" / "summary.json").write_text('{"steps": 3, "fin')   # being written
    assert run_outcome(run_dir_progress(tmp_path / "run"), "RUNNING") is None


def slurm_stubs(bin_dir: Path, state: str, reason: str) -> None:
    """squeue and scontrol answering like Slurm does for a job that was requeued once."""
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho '{state}|{reason}|0:00|1:00:00|2|'\n")
    (bin_dir / "scontrol").write_text(
        f"#!/bin/sh\necho 'JobId=77 JobName=r JobState={state} Reason={reason} Restarts=1 ExitCode=0:0'\n")
    (bin_dir / "sacct").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("squeue", "scontrol", "sacct"):
        (bin_dir / tool).chmod(0o755)


def status(tmp_path: Path, run: Path, *more: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "COLUMNS": "200",
           "BASTION_STATE_DIR": str(tmp_path / "state")}
    return subprocess.run([PYTHON, "-m", "bastion", "status", "77", "--run-dir", str(run), *more],
                          capture_output=True, text=True, env=env, timeout=60)


def test_status_command_says_requeue_pending_then_finished(tmp_path: Path) -> None:
    slurm_stubs(tmp_path / "bin", "PENDING", "BeginTime")
    run = make_run(tmp_path / "run", 8, summary(8, 20, False))
    done = status(tmp_path, run)
    assert done.returncode == 0, done.stderr
    assert "job 77: PENDING (BeginTime)" in done.stdout and "requeued 1x" in done.stdout
    assert "stopped at step 8 of 20, loss 4.2 (checkpointed; requeue pending)" in done.stdout
    assert "finished" not in done.stdout
    reported = json.loads(status(tmp_path, run, "--json").stdout)
    assert reported["run"]["outcome"]["state"] == "stopped" and reported["run"]["outcome"]["requeue_pending"]

    make_run(run, 20, summary(20, 20, True))   # the requeued job ran to the end and rewrote the summary
    done = status(tmp_path, run)
    assert done.returncode == 0, done.stderr
    assert "finished: 20 steps, final loss 4.2" in done.stdout and "stopped" not in done.stdout


def test_a_real_stopped_run_writes_a_partial_summary(tmp_path: Path) -> None:
    """One single-process CPU run stopped early (as SIGTERM stops it: stop_after_step) writes finished: false."""
    pytest.importorskip("torch")
    text, data = tmp_path / "text.txt", tmp_path / "data"
    text.write_text("the run stops at a checkpoint and a requeue resumes it.\n" * 200)
    prepared = subprocess.run([PYTHON, "-m", "bastion", "data", "prepare", str(text), "--out", str(data)],
                              capture_output=True, text=True, timeout=120)
    assert prepared.returncode == 0, prepared.stderr
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"micro_batch": 2, "global_batch": 2, "precision": "fp32"}))
    run = tmp_path / "run"
    done = subprocess.run([PYTHON, "-m", "bastion", "train", "--model", "tiny", "--plan", str(plan), "--data",
                           str(data), "--steps", "3", "--run-dir", str(run), "--nproc", "1", "--no-progress",
                           "--stop-after-step", "2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    written = json.loads((run / "summary.json").read_text())
    assert written["steps"] == 2 and written["finished"] is False
    outcome = run_outcome(run_dir_progress(run), "PENDING")
    assert outcome["state"] == "stopped" and outcome["text"].startswith("stopped at step 2 of 3")
