"""The system tier's Slurm cluster: started with the project's own scripts/slurm/start_cluster.sh (4 nodes on this
host), stopped with stop_cluster.sh by the PIDs it saved, and checked to be gone afterwards.

Where Slurm cannot be had (no root, no apt and no slurm-wlm, no writable /etc/hosts) the start script exits 77
with the reason, and every test that needs the cluster is skipped with that reason."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_harness import SCRIPTS, UNAVAILABLE, SlurmCluster, alive, free_port_block, saved_pids


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    # a short path: munged's socket lives under it and Unix socket paths are limited to 108 bytes
    base = Path(tempfile.mkdtemp(prefix="bastion-slurm-", dir="/tmp"))
    env = {**os.environ, "BASTION_SLURM_DIR": str(base), "BASTION_SLURM_NODES": "4",
           # two CPUs per node: each 2-task job fills its nodes, so jobs never share (or lose) each other's nodes
           "BASTION_SLURM_CPUS": "2", "BASTION_SLURM_PORT": str(free_port_block(5))}
    t0 = time.monotonic()
    started = subprocess.run(["bash", str(SCRIPTS / "start_cluster.sh")], env=env, capture_output=True, text=True,
                             timeout=300)
    if started.returncode == UNAVAILABLE:
        reason = started.stderr.strip().splitlines()[-1] if started.stderr.strip() else "unknown reason"
        pytest.skip(f"system tier skipped: {reason}")
    assert started.returncode == 0, f"start_cluster.sh failed:\n{started.stderr}"
    print(f"\nslurm cluster up in {time.monotonic() - t0:.1f} s under {base}")
    pids = saved_pids(base)
    assert {"munged", "slurmctld", "slurmd-n1", "slurmd-n4"} <= set(pids), pids
    cluster = SlurmCluster(base=base, env={**os.environ, "SLURM_CONF": str(base / "slurm.conf"),
                                           "BASTION_STATE_DIR": str(base / "bastion-state")})
    try:
        yield cluster
    finally:
        stopped = subprocess.run(["bash", str(SCRIPTS / "stop_cluster.sh"), "--wipe"], env=env, capture_output=True,
                                 text=True, timeout=120)
        left = {name: pid for name, pid in pids.items() if alive(pid)}
        assert stopped.returncode == 0 and not left, f"cluster not stopped: {left}\n{stopped.stderr}"
        assert "# bastion-slurm-ci" not in Path("/etc/hosts").read_text()
