"""The training loop of one worker: steps, metrics, fault tolerance and the run summary around a `Trainer`.

`train(config)` works inside an existing process group, so a test can run several plans in one launch; a
launched worker enters through `run_worker` (runtime/worker.py). The step itself (AdamW, warmup + cosine,
global-norm clipping, gradient accumulation) is runtime/trainer.py and runtime/optim.py.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bastion.errors import BastionError
from bastion.runtime.mesh import RuntimeMesh, build_mesh
from bastion.runtime.metrics import (
    MetricsWriter,
    current_memory_bytes,
    full_parameters,
    model_flops_per_token,
    model_state_bytes_measured,
    params_sha256,
)
from bastion.runtime.preemption import PreemptionNotice
from bastion.runtime.resilience import BadStep, Resilience
from bastion.runtime.train_config import TrainConfig
from bastion.runtime.trainer import Trainer
from bastion.specs.model import ModelSpec, load_model
from bastion.specs.plan import ParallelPlan


# ---- prediction ------------------------------------------------------------------------------------------
def _cluster_name(config: TrainConfig, device: torch.device, world: int) -> str | None:
    if config.cluster:
        return config.cluster
    if device.type == "cpu":
        return f"cpu:{world}"
    name = torch.cuda.get_device_name(device).lower()
    for key in ("h200", "h100", "a100", "b200"):
        if key in name:
            return f"{key}-sxm:{world}" if key in ("h100", "a100") else f"{key}:{world}"
    return None


def predicted_figures(spec: ModelSpec, plan: ParallelPlan, cluster_name: str | None, seq_len: int,
                      stage_ids: list[int], compiled: bool = False) -> dict[str, Any]:
    """The predictor's figures for this run (on bastion's runtime, compiled or not), or a note saying why there
    are none."""
    if cluster_name is None:
        return {"note": "no cluster spec for this device; pass --cluster for a prediction"}
    try:
        from bastion.predict import PredictOptions, estimate
        from bastion.specs.hardware import load_cluster
    except ImportError as exc:
        return {"note": f"bastion.predict is not available ({exc}); no prediction"}
    try:
        cluster = load_cluster(cluster_name)
        est = estimate(spec, cluster, plan, seq_len, options=PredictOptions(compiled=compiled))
    except BastionError as exc:
        return {"note": f"no prediction: {exc.problem}"}
    memory = {name: float(getattr(est.memory, name)) for name in
              ("params", "grads", "optimizer", "activations", "logits", "comm_buffers", "allocator_overhead",
               "total")}
    out: dict[str, Any] = {"cluster": cluster_name, "step_time_s": est.step_time_s, "tokens_per_s": est.tokens_per_s,
                           "mfu": est.mfu, "fits": est.fits, "memory_bytes": memory}
    try:
        from bastion.predict.memory import model_state_bytes

        out["model_state_bytes_by_stage"] = {
            str(stage): {k: int(v) for k, v in model_state_bytes(spec, plan, stage).items()}
            for stage in range(plan.pp)}
    except (ImportError, AttributeError) as exc:
        out["model_state_note"] = f"model_state_bytes unavailable ({exc})"
    return out


def _peak_flops(cluster_name: str | None, precision: str, device: torch.device) -> float | None:
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


# ---- the run ------------------------------------------------------------------------------------------------
def _write_run_files(run_dir: Path, spec: ModelSpec, plan: ParallelPlan) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    plan.save(run_dir / "plan.json")
    (run_dir / "model.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # on stderr: stdout carries what a script reads (the final summary, `--json`)
    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False,
                        console=Console(stderr=True))
    progress.start()
    progress.add_task("train", total=total, info="")
    return progress


def train(config: TrainConfig) -> dict[str, Any]:
    """Run `config.steps` optimizer steps in the current process group; returns summary.json's content (rank 0)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    spec = load_model(config.model, config.seq_len)
    plan = ParallelPlan.load(config.plan)
    plan.validate(spec, None, spec.seq_len)
    rmesh = build_mesh(plan, device)
    run_dir = Path(config.run_dir)
    if rank == 0:
        _write_run_files(run_dir, spec, plan)
    trainer = Trainer(config, spec, plan, rmesh)
    # the trainer is the state resilience checkpoints and restores (Stateful); its step hooks come per call
    resilience = Resilience(config.resilience, run_dir, trainer, spec, plan)
    resilience.start()
    preemption = PreemptionNotice().install()  # SIGTERM: checkpoint after the current step, stop
    writer = MetricsWriter(run_dir / "metrics.jsonl", enabled=rank == 0)
    cluster_name = _cluster_name(config, device, world)
    peak = _peak_flops(cluster_name, plan.precision, device)
    tokens_per_step = plan.global_batch * spec.seq_len
    flops_per_step = model_flops_per_token(spec, spec.seq_len) * tokens_per_step
    progress = _progress(config.progress and rank == 0, config.steps)
    records: list[dict[str, Any]] = []
    model_state = None
    wall_start = time.perf_counter()
    try:
        while trainer.step < config.steps and not resilience.should_stop(trainer.step):
            resilience.before_step(trainer.step + 1, trainer.sampler)
            try:
                record = trainer.train_step(hooks=resilience)
            except BadStep as bad:
                trainer.optimizer.zero_grad(set_to_none=True)  # the update is never applied: drop its gradients
                resilience.rollback(bad)
                records = [r for r in records if r["step"] <= trainer.step]
                continue
            record["time"] = time.time()
            if model_state is None:  # after the first step every gradient and moment exists
                model_state = model_state_bytes_measured(trainer.model.parameters(), trainer.optimizer)
                if trainer.params_in_step_bytes is not None:
                    model_state["params_at_rest"] = model_state["params"]
                    model_state["params"] = trainer.params_in_step_bytes
            step_time = record["step_time_s"]
            record["tokens_per_s"] = tokens_per_step / step_time
            record["mfu"] = flops_per_step / (step_time * world * peak) if peak else None
            record["mem_gib"] = current_memory_bytes(device) / 2**30
            if rank == 0:
                record["sample_ids"] = [trainer.last_sample_ids[0], trainer.last_sample_ids[-1] + 1]
            writer.write(record)
            records.append(record)
            preemption.stop_here_if_asked(resilience, trainer.step)
            resilience.after_step(record)
            if progress is not None:
                progress.update(progress.task_ids[0], completed=trainer.step,
                                info=f"loss {record['loss']:.4f}  {record['tokens_per_s']:.0f} tok/s")
    finally:
        if progress is not None:
            progress.stop()
        writer.close()
    wall = time.perf_counter() - wall_start
    fault_tolerance = resilience.finish()
    return _finish(config, trainer, spec, plan, rmesh, records, model_state, cluster_name, wall, fault_tolerance)


def _finish(config: TrainConfig, trainer: Trainer, spec: ModelSpec, plan: ParallelPlan, rmesh: RuntimeMesh,
            records: list[dict[str, Any]], model_state: dict[str, int] | None, cluster_name: str | None,
            wall_s: float, fault_tolerance: dict[str, Any] | None = None) -> dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    # per-rank measured model state, gathered so the summary can be checked against the predictor per stage
    mine = {"rank": rank, "pp_rank": rmesh.pp_rank, "dp_rank": rmesh.dp_rank, "cp_rank": rmesh.cp_rank,
            "tp_rank": rmesh.tp_rank,
            "stages": trainer.model.stage_ids, **(model_state or {})}
    per_rank: list[Any] = [None] * world
    dist.all_gather_object(per_rank, mine)
    activation_bytes: list[Any] = [None] * world
    dist.all_gather_object(activation_bytes, trainer.activation_bytes)
    digest = None
    if config.hash_params or config.save_final_params:
        full = gather_full_params(trainer, rmesh)
        if full is not None:
            digest = params_sha256(spec, full)
            if config.save_final_params:
                torch.save(full, Path(config.run_dir) / "final_params.pt")
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
        "wall_s": wall_s,
    }
    summary = {
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
        "predicted": predicted_figures(spec, plan, cluster_name, spec.seq_len, trainer.model.stage_ids,
                                       compiled=config.compile),
        "measured": measured,
        "notes": trainer.model.notes,
        "config": asdict(config),
        **(fault_tolerance or {}),
    }
    run_dir = Path(config.run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
