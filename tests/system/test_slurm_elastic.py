"""System tier: an elastic job (`-- --on-failure shrink`) on the real 4-node Slurm cluster keeps running when one of
its nodes is set DOWN mid-run.

A 2-node × 2-worker CPU job (dp4, ZeRO-3) of the tiny model is submitted; after its first committed checkpoint one
of its nodes is marked DOWN (`scontrol update nodename=X state=down`). The allocation survives (`--no-kill`), the
batch script's next job step runs on the node left with `--exclude` of X, the workers re-plan for 2 ranks and
resume from the newest checkpoint, and the job finishes all steps without being requeued; summary.json's
plan_changes shows 4 → 2, and X is never used again by the job.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from slurm_harness import SlurmCluster, wait_for
from test_slurm_launch import (
    bastion,
    events,
    finished,
    first_checkpoint_while_running,
    job_nodes,
    output,
    records,
)

from bastion.specs import ParallelPlan

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

STEPS = 16
PLAN = ParallelPlan(dp=4, zero_stage=3, micro_batch=1, global_batch=8, precision="fp32")


def test_a_node_set_down_mid_run_continues_on_the_node_left(slurm_cluster: SlurmCluster,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("slurm-elastic")
    (root / "text.txt").write_text(" ".join(["the elastic job keeps running on the node it has left"] * 1200))
    done = bastion(slurm_cluster, "data", "prepare", str(root / "text.txt"), "--out", str(root / "data"))
    assert done.returncode == 0, done.stderr
    plan = PLAN.save(root / "plan.json")
    run_dir = root / "elastic run"
    done = bastion(slurm_cluster, "launch", "--on", "slurm", "--submit", "--model", "tiny", "--plan", str(plan),
                   "--data", str(root / "data"), "--run-dir", str(run_dir), "--steps", str(STEPS), "--nodes", "2",
                   "--device", "cpu", "--", "--on-failure", "shrink", "--checkpoint-every", "2", "--no-progress",
                   "--seed", "1")
    assert done.returncode == 0, done.stderr
    job_id = re.search(r"submitted Slurm job (\d+)", done.stdout)[1]

    saved = first_checkpoint_while_running(slurm_cluster, job_id, run_dir, timeout=300)
    nodes = job_nodes(slurm_cluster, job_id)
    lost, left = nodes[-1], nodes[0]
    t_down = time.monotonic()
    slurm_cluster.run("scontrol", "update", f"nodename={lost}", "state=down", "reason=bastion-elastic-test")
    try:
        state = wait_for("the job to finish", lambda: finished(slurm_cluster, job_id), timeout=400)
    finally:
        slurm_cluster.run("scontrol", "update", f"nodename={lost}", "state=resume", check=False)
    log = output(run_dir, job_id)
    print(f"\njob finished {time.monotonic() - t_down:.0f} s after {lost} went down")
    assert state == "COMPLETED", log
    assert slurm_cluster.job(job_id)["Restarts"] == "0", log   # continued in its allocation, never requeued
    assert f"[bastion] job {job_id} start 1" not in log
    assert f"job step 2 on {left} (excluded: {lost})" in log, log
    # the lost node is never used again: every job step after the first excludes it
    later = re.findall(r"job step (\d+) on (\S+) \(excluded: (\S+)\)", log)[1:]
    assert later and all(lost not in on.split(",") and lost in excluded.split(",") for _, on, excluded in later)

    (excluded,) = events(run_dir, "node_excluded")
    assert (excluded["node"], excluded["reason"], excluded["job_id"]) == (lost, "down", job_id)
    changes = events(run_dir, "plan_change")
    assert [(c["from_world"], c["to_world"]) for c in changes] == [(4, 2)]
    assert changes[0]["step"] >= saved and changes[0]["plan"]["dp"] == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == STEPS
    assert summary["plan_changes"] == [{k: changes[0][k] for k in ("step", "from_world", "to_world", "plan")}]
    kept = {r["step"]: r for r in records(run_dir) if "step" in r and "event" not in r}
    assert sorted(kept) == list(range(1, STEPS + 1))
    assert sorted(i for r in kept.values() for i in range(*r["sample_ids"])) == list(range(STEPS * 8))


def test_sbatch_accepts_the_script_with_its_options(slurm_cluster: SlurmCluster,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    """`sbatch --test-only` (the controller checks the request, nothing runs) on the script with Slurm options the
    test cluster can satisfy, a quoted pass-through among them."""
    root = tmp_path_factory.mktemp("slurm-options")
    (root / "text.txt").write_text("options reach the script quoted " * 400)
    assert bastion(slurm_cluster, "data", "prepare", str(root / "text.txt"), "--out", str(root / "data")).returncode == 0
    plan = PLAN.save(root / "plan.json")
    done = bastion(slurm_cluster, "launch", "--on", "slurm", "--dry-run", "--model", "tiny", "--plan", str(plan),
                   "--data", str(root / "data"), "--run-dir", str(root / "run"), "--steps", "4", "--nodes", "2",
                   "--device", "cpu", "--exclusive", "--exclude", "n4", "--partition", "debug",
                   "--sbatch-arg=--comment=two words; $(id)", "--sbatch-arg", "--mail-type=NONE", "--switches", "auto")
    assert done.returncode == 0, done.stderr
    script = root / "job.sbatch"
    script.write_text(done.stdout)
    tested = subprocess.run(["sbatch", "--test-only", str(script)], env=slurm_cluster.env, capture_output=True,
                            text=True, timeout=60)
    assert tested.returncode == 0 and "to start at" in tested.stderr, tested.stderr
    refused = subprocess.run(["sbatch", "--test-only", "--nodes=9", str(script)], env=slurm_cluster.env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0   # the check above can fail: 9 nodes do not exist


def test_a_job_that_must_start_again_is_kept_off_the_node_it_excluded(slurm_cluster: SlurmCluster,
                                                                       tmp_path_factory: pytest.TempPathFactory
                                                                       ) -> None:
    """A 2-node job (not elastic) whose rank 1 is three times slower is named a straggler; rank 0 then crashes, so
    the job must start again on 2 nodes. Its straggler's node is still in service, so a requeue could get it back:
    instead the job submits itself again as a new job with `--exclude` of that node (after it ends), which resumes
    from the newest checkpoint on two other nodes of the 4-node cluster and finishes."""
    root = tmp_path_factory.mktemp("slurm-resubmit")
    (root / "text.txt").write_text(" ".join(["the straggler's node is not allocated to the job again"] * 1200))
    assert bastion(slurm_cluster, "data", "prepare", str(root / "text.txt"), "--out", str(root / "data")).returncode == 0
    plan = ParallelPlan(dp=2, micro_batch=1, global_batch=4, precision="fp32").save(root / "plan.json")
    run_dir = root / "resubmitted run"
    steps = 14
    done = bastion(slurm_cluster, "launch", "--on", "slurm", "--submit", "--model", "tiny", "--plan", str(plan),
                   "--data", str(root / "data"), "--run-dir", str(run_dir), "--steps", str(steps), "--nodes", "2",
                   "--device", "cpu", "--", "--checkpoint-every", "2", "--no-progress", "--seed", "1",
                   "--inject", "slow:rank=1,factor=3", "--inject", "kill:rank=0,step=10")
    assert done.returncode == 0, done.stderr
    first = re.search(r"submitted Slurm job (\d+)", done.stdout)[1]
    wait_for("the first job to end", lambda: finished(slurm_cluster, first), timeout=300)
    log = output(run_dir, first)
    straggler = next(r for r in events(run_dir, "straggler") if r["step"] < 10)
    slow_node = (run_dir / "nodes" / f"rank-{straggler['rank']:05d}").read_text().strip()
    assert f"continuing in the new job, without {slow_node}" in log, log
    assert slurm_cluster.job(first)["Restarts"] == "0", log   # not requeued: a new job instead
    (resubmitted,) = events(run_dir, "resubmitted")
    assert (resubmitted["job_id"], resubmitted["excluded"]) == (first, [slow_node])
    second = resubmitted["new_job_id"]
    assert json.loads((run_dir / "launch.json").read_text())["job_ids"] == [first, second]

    state = wait_for("the new job to finish", lambda: finished(slurm_cluster, second), timeout=300)
    assert state == "COMPLETED", output(run_dir, second)
    assert slow_node not in job_nodes(slurm_cluster, second)
    assert slurm_cluster.job(second)["ExcNodeList"] == slow_node
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == steps
    kept = {r["step"]: r for r in records(run_dir) if "step" in r and "event" not in r}
    assert sorted(i for r in kept.values() for i in range(*r["sample_ids"])) == list(range(steps * 4))
