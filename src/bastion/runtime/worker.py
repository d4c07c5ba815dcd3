"""The process entry of a worker: create the process group, train, and exit without the shutdown abort.

`run_worker(config)` is what every process started by torchrun/Slurm/Kubernetes runs: it creates the process
group, calls `train(config)` (runtime/train.py) and exits through the shutdown sequence PYTORCH_NOTES requires
(barrier, destroy_process_group, flush, os._exit) so that no rank aborts at interpreter exit.

Threads: every worker runs with OMP_NUM_THREADS (the launcher sets 1 on CPU; default 1 when unset), because
results are bitwise reproducible only at a fixed thread count.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.distributed as dist

from bastion.errors import BastionError
from bastion.runtime.train import train
from bastion.runtime.train_config import TrainConfig


def init_distributed() -> None:
    if dist.is_initialized():
        return
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    backend = "cuda:nccl,cpu:gloo" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)


def shutdown_and_exit(code: int) -> None:
    """The exit sequence that avoids the SIGABRT-at-shutdown trap (PYTORCH_NOTES)."""
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_worker(config: TrainConfig) -> None:
    """Entry point of a torchrun/Slurm/Kubernetes worker; never returns."""
    init_distributed()
    try:
        train(config)
    except BastionError as exc:
        if dist.get_rank() == 0:
            print(f"error: {exc.render()}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)
    shutdown_and_exit(0)
