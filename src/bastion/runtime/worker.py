"""The process entry of a worker: create the process group, train, and exit without the shutdown abort.

`run_worker(config)` is what every process started by torchrun/Slurm/Kubernetes runs: it creates the process
group, calls `train(config)` (runtime/train.py) and exits through the shutdown sequence PYTORCH_NOTES requires
(barrier, destroy_process_group, flush, os._exit) so that no rank aborts at interpreter exit.

Threads: every worker runs with OMP_NUM_THREADS (the launcher sets 1 on CPU; default 1 when unset), because
results are bitwise reproducible only at a fixed thread count.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from bastion.errors import USER_ERROR_EXIT, BastionError
from bastion.rundir.layout import rank_log_path
from bastion.runtime.faults import fault_fired_recently
from bastion.runtime.replicas import RunEndedWithoutGroup
from bastion.runtime.train import train
from bastion.runtime.train_config import TrainConfig


class _FlattenAdviceFilter(logging.Filter):
    """Drops DTensor's "While redistributing from … N sequential <collective> operations will be performed …
    To optimize, flatten mesh dimensions" warning (torch.distributed.tensor._redistribute, logger.warning, once per
    mesh, dimensions and reason and so once per step phase and rank: `make run` printed it four times per phase).

    Harmless here: it is advice about speed, a redistribution over two mesh dimensions (e.g. dp × cp) run as one
    collective per dimension instead of one over a flattened mesh. The results are the collectives' results; the
    "reduction order" it mentions is the same on every rank of a group, and the runtime's equivalence tests
    (tests/dist) compare every plan against the single-device run. Other warnings of that logger still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("While redistributing from")


def quiet_library_warnings() -> None:
    logging.getLogger("torch.distributed.tensor._redistribute").addFilter(_FlattenAdviceFilter())


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


def log_failure(run_dir: str, rank: int, exc: BaseException) -> Path | None:
    """Append the traceback of `exc` to the rank's log file (rundir/layout.py rank_log_path); its path, or None
    when it cannot be written (the console then gets the traceback)."""
    path = rank_log_path(Path(run_dir), rank)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as log:
            log.write(f"---- {time.strftime('%Y-%m-%dT%H:%M:%S')} rank {rank} pid {os.getpid()} "
                      f"(restart {os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')})\n")
            log.write("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return path


def failure_line(rank: int, exc: BaseException, log: Path) -> str:
    """What the console gets for a failed worker: one line, the traceback's place named."""
    first = (str(exc).strip().splitlines() or [""])[0]
    first = first if len(first) <= 160 else first[:157] + "..."
    return f"[rank {rank}] worker failed: {type(exc).__name__}: {first} (traceback: {log})"


def run_worker(config: TrainConfig) -> None:
    """Entry point of a torchrun/Slurm/Kubernetes worker; never returns."""
    quiet_library_warnings()
    init_distributed()
    try:
        train(config)
    except RunEndedWithoutGroup as ended:  # --fault-tolerance torchft: the other groups finished the run
        print(f"bastion: {ended}; it exits", file=sys.stderr, flush=True)
        os._exit(0)
    except BastionError as exc:
        if dist.get_rank() == 0:
            print(f"error: {exc.render()}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(USER_ERROR_EXIT)
    except Exception as exc:
        # e.g. a collective that failed because another rank died (an injected kill): the cause is that rank's
        # one line; this rank's traceback goes to its log file unless BASTION_DEBUG=1 asks for it here
        # a replica group's ranks are numbered after the lower groups' (--fault-tolerance torchft)
        rank = dist.get_rank() + config.replica_group * dist.get_world_size()
        log = None if os.environ.get("BASTION_DEBUG") == "1" else log_failure(config.run_dir, rank, exc)
        if log is None:
            raise
        if not fault_fired_recently(Path(config.run_dir)):  # else the injected fault's line says it all
            print(failure_line(rank, exc, log), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    shutdown_and_exit(0)
