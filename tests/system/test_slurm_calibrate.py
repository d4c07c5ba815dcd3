"""System tier: `bastion calibrate --on slurm --nodes 2 --quick --submit` on the real 4-node Slurm cluster (this
host): the job runs one torchrun per node, measures the collectives and FSDP2's per-unit cost across both nodes'
ranks, and writes a profile that records both nodes and that `bastion estimate --cluster cpu:4@PROFILE` uses."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from slurm_harness import SlurmCluster, wait_for

from bastion.specs.profile import read_profile

pytestmark = [pytest.mark.system, pytest.mark.timeout(420)]

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def bastion(cluster: SlurmCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion", *args], env=cluster.env, capture_output=True,
                          text=True, timeout=timeout)


def test_a_calibrate_job_profiles_both_nodes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    run_dir, out = tmp_path / "job", tmp_path / "shared" / "profile.toml"
    # one rank per node keeps the job short on this 2-core host; its one pair spans both nodes
    done = bastion(slurm_cluster, "calibrate", "--on", "slurm", "--nodes", "2", "--nproc", "1", "--quick",
                   "--models", "tiny", "--run-dir", str(run_dir), "--out", str(out), "--time", "00:05:00",
                   "--submit")
    assert done.returncode == 0, done.stderr
    match = re.search(r"submitted Slurm job (\d+)", done.stdout)
    assert match, done.stdout
    job_id = match[1]
    state = wait_for("the calibrate job to end",
                     lambda: (s if (s := slurm_cluster.job(job_id).get("JobState")) in ENDED else None),
                     timeout=300, every=1.0)
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    assert state == "COMPLETED", log[-4000:]
    nodes = slurm_cluster.run("scontrol", "show", "hostnames", slurm_cluster.job(job_id)["NodeList"]).split()
    assert len(nodes) == 2
    machine = tomllib.loads(out.read_text())["machine"]
    assert machine["hosts"] == sorted(nodes) and machine["nodes"] == 2 and machine["host"] in nodes
    profile = read_profile(out)
    assert profile.nproc == 1 and any(line.group_size == 2 for line in profile.collectives)
    assert all(row["hosts"] == 2 for row in tomllib.loads(out.read_text())["collective"])  # across the nodes
    # FSDP2's per-unit cost measured on the job's world too: its one group of 2 spans both nodes
    assert {(u.zero_stage, u.group_size) for u in profile.fsdp_units} == {(0, 2), (2, 2), (3, 2)}
    estimate = bastion(slurm_cluster, "estimate", "--model", "tiny", "--cluster", f"cpu:4@{out}")
    assert estimate.returncode == 0, estimate.stderr
    assert f"profile {out}" in estimate.stdout
