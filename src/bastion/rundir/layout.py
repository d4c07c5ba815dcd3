"""The names of the files in a run directory, and the two a run writes before its first step.

RUN_DIR/
  plan.json, model.json       the ParallelPlan and the model, written by rank 0 before the first step
  metrics.jsonl               step records and events, one JSON object a line (rundir/metrics.py, records.py)
  summary.json                written by rank 0 when the run ends or stops early (rundir/summary.py)
  checkpoints/step-NNNNNNNN/  committed checkpoints with their manifest (rundir/checkpoints.py)
  final_params.pt             the full final parameters, only with save_final_params (equivalence tests)
  run_config.json             the resolved run (train options, plan, model, world size): all a worker reads
                              (launch/worker.py)
  run.lock                    held (flock) by the one run using the directory (rundir/lock.py)
  tensorboard/                TensorBoard event files of rank 0 (--tensorboard; runtime/run_logs.py)
  profile/                    torch.profiler Chrome traces, trace-rankNNNNN.json (--profile START:END)
  logs/rank-NNNNN.log         a worker's traceback when it failed (runtime/worker.py); the console gets one line
  launch.json                 how the run was started and how to reach it: engine, torchrun's pid and process
                              group, or the Slurm job ids (rundir/launch_record.py)
  launch/job.sbatch           the batch script `bastion launch --on slurm` wrote (its submissions: launch.json)
  replaced-DATE-TIME/         an earlier run set aside by --overwrite (rundir/occupant.py)
  nodes/rank-NNNNN            under Slurm, the node each rank of the latest start runs on (launch/elastic.py)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from bastion.errors import BastionError

if TYPE_CHECKING:
    from bastion.specs.model import ModelSpec
    from bastion.specs.plan import ParallelPlan

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PLAN_FILE = "plan.json"
MODEL_FILE = "model.json"
CHECKPOINTS_DIR = "checkpoints"
FINAL_PARAMS_FILE = "final_params.pt"
RUN_CONFIG_FILE = "run_config.json"
LOCK_FILE = "run.lock"
#: --tensorboard event files, and --profile's torch.profiler Chrome traces (one file per rank)
TENSORBOARD_DIR = "tensorboard"
PROFILE_DIR = "profile"
LOGS_DIR = "logs"
LAUNCH_RECORD_FILE = "launch.json"
LAUNCH_DIR = "launch"
NODES_DIR = "nodes"
REPLICA_GROUPS_DIR = "replica_groups"
#: files only `bastion train` writes into a run directory; one of them makes a directory a run directory
RUN_MARKERS = (METRICS_FILE, SUMMARY_FILE, PLAN_FILE, MODEL_FILE)


class RunDirError(BastionError):
    """A directory that is not (yet) a readable `bastion train` run directory."""

    reason = "bad run directory"


class RunConfigFile(TypedDict, total=False):
    """run_config.json as launch/worker.py writes it (a calibration job's holds `calibrate` instead of a model)."""

    format: int
    world_size: int
    #: the train options (TrainConfig fields)
    train: dict[str, Any]
    #: ModelSpec.to_dict and ParallelPlan.to_dict
    model: dict[str, Any]
    plan: dict[str, Any]
    calibrate: dict[str, Any]


def replica_group_path(run_dir: Path, group: int) -> Path:
    """What replica group `group` (--fault-tolerance torchft) recorded at its end: steps, parameters' hash."""
    return Path(run_dir) / REPLICA_GROUPS_DIR / f"group-{group}.json"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def rank_log_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / LOGS_DIR / f"rank-{rank:05d}.log"


def rank_node_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / NODES_DIR / f"rank-{rank:05d}"


def write_run_files(run_dir: Path, spec: ModelSpec, plan: ParallelPlan) -> None:
    """plan.json and model.json: what the report predicts from when the run has no summary yet."""
    run_dir.mkdir(parents=True, exist_ok=True)
    plan.save(run_dir / PLAN_FILE)
    (run_dir / MODEL_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
