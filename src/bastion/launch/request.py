"""What a launch asks for, checked before anything is written: the plan against the model, the worker layout
(nodes × processes per node) against the plan, the time limit, the partition and the names.

Every engine (local torchrun, Slurm, Kubernetes) starts the same worker command, `torchrun … -m bastion _worker
CONFIG` (`launch/worker.py`), with the same run directory each time, so a restarted or requeued job resumes from
that directory's newest valid checkpoint.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import LaunchError
from bastion.launch.worker import TRAIN_WORKER

ENGINES = ("local", "slurm", "k8s")
DEVICES = ("gpu", "cpu")

#: Slurm partition names (one, or a comma-separated list of candidates)
_PARTITION = re.compile(r"^[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*$")
#: [D-]HH:MM:SS
_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<h>\d{1,3}):(?P<m>\d{2}):(?P<s>\d{2})$")
#: characters that must never reach a line a non-shell parser reads (an `#SBATCH` directive, a YAML scalar key)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class WorkerLayout:
    """How the plan's workers are spread over machines."""

    #: machines (Slurm nodes, Kubernetes pods); one torchrun agent runs on each
    nodes: int
    #: worker processes per machine (one per GPU; on CPU, one per core set aside for it)
    procs_per_node: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


@dataclass(frozen=True)
class LaunchRequest:
    """One training job to start: the same for every engine."""

    #: `local`, `slurm` or `k8s`
    engine: str
    #: the resolved run the workers read (`launch/worker.py`: train options, plan, model spec)
    run_config: dict[str, Any]
    #: token dataset directory as the workers will see it
    data_dir: str
    #: run directory as the workers will see it: metrics, summary and checkpoints; the job resumes from it
    run_dir: str
    #: nodes × processes per node
    layout: WorkerLayout
    #: `gpu` (one process per GPU, GPUs requested from the scheduler) or `cpu` (gloo on CPU cores)
    device: str
    #: job name shown by the scheduler
    name: str
    #: torchrun restarts of the worker group inside one allocation before the job fails or is requeued
    max_restarts: int = 0
    #: the hidden bastion command every worker runs with the run config's path (launch/worker.py TRAIN_WORKER:
    #: training; `_calibrate_worker` for a `bastion calibrate` job)
    worker_entry: str = TRAIN_WORKER


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise LaunchError(f"Unknown launch engine '{engine}'.",
                          fix=f"use --on with one of: {', '.join(ENGINES)}.")
    return engine


def parse_time_limit(text: str) -> int:
    """`HH:MM:SS` or `D-HH:MM:SS` → seconds; at least one minute (Slurm's smallest limit)."""
    match = _TIME.match(text.strip())
    if not match or int(match["m"]) > 59 or int(match["s"]) > 59:
        raise LaunchError(f"Time limit '{text}' is not HH:MM:SS.",
                          fix="write it as HH:MM:SS (e.g. 04:00:00) or D-HH:MM:SS (e.g. 2-00:00:00).")
    seconds = (int(match["d"] or 0) * 24 + int(match["h"])) * 3600 + int(match["m"]) * 60 + int(match["s"])
    if seconds < 60:
        raise LaunchError(f"Time limit '{text}' is under one minute, Slurm's smallest limit.",
                          fix="give at least 00:01:00; leave room for start-up and a final checkpoint.")
    return seconds


def format_time_limit(seconds: int) -> str:
    """Seconds → Slurm's `D-HH:MM:SS` (days only when needed)."""
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def check_partition(partition: str) -> str:
    if not _PARTITION.match(partition):
        raise LaunchError(f"'{partition}' is not a Slurm partition name.",
                          fix="use letters, digits, '_', '.', '-', or a comma-separated list of such names "
                              "(e.g. --partition gpu or --partition gpu,gpu-long).",
                          hint="sinfo -s   # lists the partitions")
    return partition


def check_tp_inside_nodes(tp: int, layout: WorkerLayout) -> None:
    """Every tensor-parallel group inside one machine (its NVLink domain): ranks are numbered node by node and tp
    is the innermost mesh dimension (runtime/mesh.py), so that holds exactly when tp divides the workers per
    node. A group across machines would all-reduce every layer over the network."""
    if layout.nodes > 1 and layout.procs_per_node % tp:
        raise LaunchError(f"tp = {tp} does not divide the {layout.procs_per_node} workers per node: tensor-parallel "
                          f"groups would span machines and all-reduce every layer over the network.",
                          fix=f"give --gpus-per-node a multiple of {tp}, or plan with a tp dividing "
                              f"{layout.procs_per_node}.")


def worker_layout(num_workers: int, nodes: int | None, procs_per_node: int | None, device: str) -> WorkerLayout:
    """Split the plan's workers over nodes; refuse layouts that do not divide evenly."""
    if device not in DEVICES:
        raise LaunchError(f"Unknown device '{device}'.", fix=f"use one of: {', '.join(DEVICES)}.")
    for what, value in (("--nodes", nodes), ("--gpus-per-node", procs_per_node)):
        if value is not None and value < 1:
            raise LaunchError(f"{what} must be at least 1, got {value}.", fix=f"give {what} a positive integer.")
    if nodes is None and procs_per_node is None:
        # GPU machines usually hold 8; a CPU job keeps to one node unless told otherwise
        procs_per_node = min(num_workers, 8) if device == "gpu" else num_workers
    if procs_per_node is None:
        assert nodes is not None
        if num_workers % nodes:
            raise LaunchError(
                f"The plan needs {num_workers} workers (dp × tp × pp × cp), which {nodes} nodes cannot share "
                f"evenly.", fix=f"choose --nodes dividing {num_workers} (e.g. {_divisors(num_workers)}).")
        procs_per_node = num_workers // nodes
    if nodes is None:
        if num_workers % procs_per_node:
            raise LaunchError(
                f"{procs_per_node} GPUs per node do not divide the plan's {num_workers} workers "
                f"(dp × tp × pp × cp).",
                fix=f"choose --gpus-per-node dividing {num_workers} (e.g. {_divisors(num_workers)}), "
                    f"or change the plan's degrees.")
        nodes = num_workers // procs_per_node
    if nodes * procs_per_node != num_workers:
        raise LaunchError(
            f"--nodes {nodes} × --gpus-per-node {procs_per_node} = {nodes * procs_per_node}, but the plan needs "
            f"{num_workers} workers (dp × tp × pp × cp).",
            fix="give only one of --nodes and --gpus-per-node, or make their product equal the plan's workers.")
    return WorkerLayout(nodes=nodes, procs_per_node=procs_per_node)


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def slurm_job_name(text: str) -> str:
    """A job name Slurm shows as is: letters, digits, '.', '_', '-' (anything else becomes '-')."""
    name = re.sub(r"[^A-Za-z0-9._\-]+", "-", text).strip("-.")[:64]
    return name or "bastion"


def k8s_name(text: str, max_len: int = 40) -> str:
    """An RFC 1123 label (lowercase letters, digits, '-'), short enough for the pod host names JobSet derives
    from it (`<name>-<replicated job>-<job index>-<pod index>` must stay within 63 characters)."""
    name = re.sub(r"[^a-z0-9\-]+", "-", text.lower()).strip("-")[:max_len].strip("-")
    if not name or not name[0].isalpha():
        name = f"bastion-{name}".strip("-")[:max_len].strip("-")
    return name


def check_plain_text(value: str, what: str) -> str:
    """Refuse control characters (a newline would end an `#SBATCH` line and start a shell command)."""
    if _CONTROL.search(value):
        raise LaunchError(f"{what} contains a control character (newline, tab, ...): {value!r}.",
                          fix=f"use a {what} without control characters.")
    return value


def default_python() -> str:
    """The interpreter running bastion now, by absolute path, so a job needs no activated environment."""
    return str(Path(sys.executable).absolute())
