"""Local launch: torchrun on this machine, one node, the same worker command the schedulers run."""

from __future__ import annotations

import os
import subprocess

from bastion.errors import LaunchError
from bastion.launch.request import LaunchRequest, default_python


def torchrun_command(req: LaunchRequest, plan_path: str, python: str = "") -> list[str]:
    """`python -m torch.distributed.run --standalone … -m bastion train …` as an argument list (no shell)."""
    if req.layout.nodes != 1:
        raise LaunchError(f"A local launch runs on this machine only, but {req.layout.nodes} nodes were asked for.",
                          fix="drop --nodes (or use --nodes 1), or launch --on slurm / --on k8s for several nodes.")
    return [python or default_python(), "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc-per-node={req.layout.procs_per_node}", f"--max-restarts={req.max_restarts}",
            "-m", "bastion", "train", *req.train_args(plan_path)]


def worker_environment() -> dict[str, str]:
    env = dict(os.environ)
    # a fixed thread count keeps runs bitwise reproducible (and N workers from oversubscribing the cores)
    env.setdefault("OMP_NUM_THREADS", "1")
    # without it a restarted gloo group reads stale peer addresses from torchrun's store (../shared/PYTORCH_NOTES.md)
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run(command: list[str]) -> int:
    """Run torchrun in the foreground; its exit status."""
    return subprocess.run(command, env=worker_environment()).returncode
