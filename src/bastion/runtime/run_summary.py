"""The end of a run: gather the measured figures and the full parameters' hash, write summary.json (rank 0).

Also the per-device peak FLOP/s that MFU divides by. The file names and the summary's shape are the run-directory
contract (bastion/rundir/); this module fills it from the trainer's state.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from bastion.errors import BastionError
from bastion.rundir.layout import FINAL_PARAMS_FILE
from bastion.rundir.predicted import predicted_figures
from bastion.rundir.records import StepRecord
from bastion.rundir.summary import RunSummary, write_summary
from bastion.runtime.mesh import RuntimeMesh
from bastion.runtime.metrics import current_memory_bytes, full_parameters, params_sha256
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

if TYPE_CHECKING:
    from bastion.runtime.train_config import TrainConfig
    from bastion.runtime.trainer import Trainer


def peak_flops(cluster_name: str | None, precision: str, device: torch.device) -> float | None:
    if cluster_name is None:
        return None
    from bastion.predict.estimate import per_rank
    from bastion.specs.hardware import load_cluster

    try:
        # the same per-rank peak the prediction divides by (a host CPU's ranks share its cores)
        accelerator = per_rank(load_cluster(cluster_name)).accelerator
    except BastionError:
        return None
    used = precision if device.type == "cuda" else "fp32"
    return accelerator.peak_tflops(used) * 1e12


def write_run_summary(config: TrainConfig, trainer: Trainer, spec: ModelSpec, plan: ParallelPlan,
                      rmesh: RuntimeMesh, records: list[StepRecord], model_state: dict[str, int] | None,
                      cluster_name: str | None, wall_s: float,
                      fault_tolerance: dict[str, Any] | None = None,
                      write: bool = True) -> RunSummary | dict[str, Any]:
    """Collective (every rank calls it); rank 0 writes summary.json (unless not `write`: a replica group that
    does not lead) and returns it, the others return {}."""
    rank, world = dist.get_rank(), dist.get_world_size()
    # per-rank measured model state, gathered so the summary can be checked against the predictor per stage
    mine = {"rank": rank, "pp_rank": rmesh.pp_rank, "dp_rank": rmesh.dp_rank, "cp_rank": rmesh.cp_rank,
            "tp_rank": rmesh.tp_rank,
            "stages": trainer.model.stage_ids, **(model_state or {})}
    per_rank: list[Any] = [None] * world
    dist.all_gather_object(per_rank, mine)
    activation_bytes: list[Any] = [None] * world
    dist.all_gather_object(activation_bytes, trainer.activation_bytes)
    offloaded_bytes: list[Any] = [None] * world
    dist.all_gather_object(offloaded_bytes, trainer.offloaded_bytes)
    digest = None
    if config.hash_params or config.save_final_params:
        full = gather_full_params(trainer, rmesh)
        if full is not None:
            digest = params_sha256(spec, full)
            if config.save_final_params:
                torch.save(full, Path(config.run_dir) / FINAL_PARAMS_FILE)
    if rank != 0:
        return {}
    steady = [r["step_time_s"] for r in records[1:]] or [r["step_time_s"] for r in records]
    step_time = statistics.median(steady) if steady else None
    first = records[0] if records else {}
    measured = {
        "step_time_s": step_time,
        "first_step_s": first.get("step_time_s"),
        "tokens_per_s": plan.global_batch * spec.seq_len / step_time if step_time else None,
        "mfu": statistics.median([r["mfu"] for r in records[1:]]) if len(records) > 1 and records[1]["mfu"]
        else first.get("mfu"),
        "peak_mem_bytes": current_memory_bytes(rmesh.device),
        "peak_mem_kind": "cuda max_memory_allocated" if rmesh.device.type == "cuda" else "process RSS",
        "model_state_bytes_by_rank": per_rank,
        "activation_bytes_by_rank": activation_bytes,
        # activation offload: bytes each rank copied to host memory in a step (None: the plan offloads none)
        "offloaded_bytes_by_rank": offloaded_bytes,
        "wall_s": wall_s,
    }
    summary: RunSummary = {  # type: ignore[typeddict-item]  (the accounting fields come from fault_tolerance)
        "steps": trainer.step,
        # False when a stop (SIGTERM before a time limit or preemption, --stop-after-step) ended the run early: this
        # summary is then partial and a requeued or restarted job resumes and rewrites it
        "finished": trainer.step >= config.steps,
        "final_loss": records[-1]["loss"] if records else None,
        "losses": [r["loss"] for r in records],
        "params_sha256": digest,
        "world_size": world,
        "plan": plan.to_dict(),
        "model": spec.name,
        "seed": config.seed,
        "predicted": predicted_figures(spec, plan, cluster_name, spec.seq_len, compiled=config.compile,
                                       fp8_recipe=config.fp8_recipe),
        "measured": measured,
        "notes": trainer.model.notes,
        "config": asdict(config),
        **(fault_tolerance or {}),
    }
    if write:
        write_summary(Path(config.run_dir), summary)
    return summary


def gather_full_params(trainer: Trainer, rmesh: RuntimeMesh) -> dict[str, torch.Tensor] | None:
    """Every full parameter on rank 0 (None elsewhere). Collective: all ranks must call it."""
    full = full_parameters(trainer.model.named_parameters())
    if dist.get_world_size() == 1:
        return full
    # one copy per pipeline stage is enough: the (dp 0, cp 0, tp 0) rank of each stage sends its tensors
    payload = full if (rmesh.dp_rank == 0 and rmesh.cp_rank == 0 and rmesh.tp_rank == 0) else None
    gathered: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(payload, gathered, dst=0)
    if dist.get_rank() != 0:
        return None
    merged: dict[str, torch.Tensor] = {}
    for part in gathered:
        if part:
            merged.update(part)
    return merged
