"""Start workers locally: `bastion train --nproc N ...` becomes `python -m torch.distributed.run ... -m bastion
train ...` (the user never types torchrun). Pure Python: importing this module does not import torch.

Environment given to every worker:
  OMP_NUM_THREADS=1                       fixed thread count: results are bitwise reproducible only at a fixed
                                          count, and N processes on a small host must not oversubscribe it
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1    elastic restarts otherwise read stale gloo peer addresses from
                                          torchrun's shared store (PYTORCH_NOTES, pytorch#135712)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from bastion.errors import LaunchError

WORKER_ENV = {"OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@dataclass(frozen=True)
class LaunchConfig:
    """How torchrun starts the workers on this machine."""

    #: worker processes on this host
    nproc: int
    #: restarts torchrun's elastic agent may make after a worker fails
    max_restarts: int = 0
    #: extra environment for the workers (on top of WORKER_ENV and the caller's environment)
    env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(config: LaunchConfig, worker_args: Sequence[str]) -> list[str]:
    """The full command line; `worker_args` are the `bastion` arguments (e.g. ["train", "--model", ...])."""
    port = free_port()
    return [sys.executable, "-m", "torch.distributed.run",
            f"--nproc-per-node={config.nproc}", "--nnodes=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=bastion-{port}",
            f"--max-restarts={config.max_restarts}",
            "-m", "bastion", *worker_args]


def worker_environment(config: LaunchConfig) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in WORKER_ENV.items():
        env.setdefault(key, value)  # a value the user chose is kept: it is just as fixed
    env.update(config.env)
    return env


def launch(config: LaunchConfig, worker_args: Sequence[str]) -> int:
    """Run torchrun to completion; returns its exit code."""
    command = torchrun_command(config, worker_args)
    try:
        return subprocess.call(command, env=worker_environment(config))
    except OSError as exc:
        raise LaunchError(f"Could not start torchrun: {exc}.",
                          fix="check that the runtime extra (torch) is installed in this environment.",
                          hint="pip install -e '.[runtime]'") from exc


def strip_option(args: Sequence[str], option: str, takes_value: bool = True) -> list[str]:
    """`args` without `option` (as `--opt V` or `--opt=V`)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == option:
            skip = takes_value
            continue
        if arg.startswith(option + "="):
            continue
        out.append(arg)
    return out


def in_launched_worker() -> bool:
    """True under torchrun, Slurm (srun with torchrun) or a Kubernetes PyTorchJob: the usual variables are set."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
